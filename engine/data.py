"""Image-folder loading, an on-disk decode cache and the training batch iterator.

`load_image_folder` turns any folder of images into one (N, 3, S, S) uint8 tensor. Decoded
folders are cached as plain `.npz` files keyed by the folder's listing (relative paths, sizes
and modification times), so a second load is instant and any change to the folder re-decodes.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import atomic_write, no_images_message, remove_stale_temporaries, scan_images

MAX_PIXELS = 64_000_000
CACHE_VERSION = 1
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_BACKGROUND = (255, 255, 255)
_PROGRESS_EVERY = 64


class BadImage(Exception):
    """A file that cannot be used as a training image; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataError(ValueError):
    """The folder cannot provide a training set (missing, not a folder, or no usable images)."""


@dataclass
class ImageSet:
    """Decoded images with the paths (relative to the folder) they came from."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    paths: list[str]
    skipped: list[tuple[str, str]]  # (relative path, reason)

    def __len__(self) -> int:
        return len(self.paths)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode `path` to a (size, size, 3) uint8 array: `read_rgb`, then centre crop and Lanczos.

    Raises `BadImage` for anything that cannot be decoded.
    """
    rgb = read_rgb(path, draft=size)
    try:
        return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    finally:
        rgb.close()


def read_rgb(path: Path, draft: int | None = None, first_frame_only: bool = True) -> Image.Image:
    """`path`'s first frame as a decoded RGB image, upright as its EXIF says, bounded before
    decoding: at most `MAX_PIXELS`. Transparent pixels are composited over white; 16-bit greyscale
    is scaled to 8 bits. A JPEG may be decoded at a reduced scale with sides no smaller than
    `draft`. With `first_frame_only=False` an animation is refused instead. Raises `BadImage`,
    whose reason says in a few words why, for anything that cannot be decoded.
    """
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise BadImage("empty file")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(file)
            with im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise BadImage(f"image too large ({width}x{height})")
                if not first_frame_only and getattr(im, "n_frames", 1) > 1:
                    raise BadImage("an animation, not one image")
                if im.format == "JPEG" and draft is not None:
                    im.draft("RGB", (draft, draft))
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage("image too large") from err
    except UnidentifiedImageError as err:
        raise BadImage("not a recognised image") from err
    except OSError as err:
        if err.filename is not None:  # raised by the file system, not by the decoder
            raise BadImage(f"unreadable: {err.strerror}") from err
        raise BadImage(f"corrupt image: {err}") from err
    except Exception as err:  # decoders raise many types (SyntaxError, ValueError, ...) on bad data
        raise BadImage(f"corrupt image: {type(err).__name__}: {err}") from err


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: 16/32-bit greyscale rescaled, transparency composited over white."""
    if im.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.float32)
        grey = np.clip(values, 0, 65535) / 257.0
        im = Image.fromarray(grey.round().astype(np.uint8))
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image_folder(
    folder: Path | str,
    size: int,
    cache_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """Decode every image under `folder` to size×size, reading/writing the cache in `cache_dir`.

    `progress(done, total)` is called periodically while decoding. Bad files are skipped and
    listed in `ImageSet.skipped`. Raises `DataError` if the folder is missing or has no usable
    images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        reason = "does not exist" if not folder.exists() else "is not a folder"
        raise DataError(f"image folder {folder} {reason}")
    files, unusable = scan_images(folder)
    not_files = [(path.relative_to(folder).as_posix(), reason) for path, reason in unusable]
    total = len(files)
    if not files:
        raise DataError(no_images_message(folder))
    relative = [path.relative_to(folder).as_posix() for path in files]

    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{_cache_key(files, relative, size)}.npz"
        cached = _read_cache(cache_file, size)
        if cached is not None:
            if progress is not None:
                progress(total, total)
            cached.skipped = sorted(not_files + cached.skipped)
            return cached

    decoded = np.empty((total, size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, path in enumerate(files):
        try:
            decoded[i] = decode_image(path, size)
            kept.append(i)
        except BadImage as bad:
            skipped.append((relative[i], bad.reason))
        if progress is not None and ((i + 1) % _PROGRESS_EVERY == 0 or i + 1 == total):
            progress(i + 1, total)
    if not kept:
        raise DataError(f"no usable images in {folder}: {describe_skipped(sorted(not_files + skipped))}")

    images = np.ascontiguousarray(decoded[kept].transpose(0, 3, 1, 2))
    result = ImageSet(torch.from_numpy(images), [relative[i] for i in kept], skipped)
    if cache_file is not None:
        _write_cache(cache_file, result)
    result.skipped = sorted(not_files + skipped)  # after caching: links are re-checked on every load
    return result


def describe_skipped(skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """'a.jpg (not a recognised image), b.png (empty file) and 4 more': the first `shown` of
    (relative path, reason) pairs, for a one-line message."""
    listed = ", ".join(f"{path} ({reason})" for path, reason in skipped[:shown])
    return listed + (f" and {len(skipped) - shown} more" if len(skipped) > shown else "")


def _cache_key(files: list[Path], relative: list[str], size: int) -> str:
    digest = hashlib.sha256(f"kittyterm-images v{CACHE_VERSION} size={size}\n".encode())
    for path, name in zip(files, relative):
        try:
            info = path.stat()
            size_and_time = f"{info.st_size}\0{info.st_mtime_ns}"
        except OSError:  # vanished since the scan: decoding will report it
            size_and_time = "missing"
        digest.update(f"{name}\0{size_and_time}\n".encode())
    return digest.hexdigest()


def _read_cache(cache_file: Path, size: int) -> ImageSet | None:
    """The cached set, or None when the file is missing, damaged or inconsistent."""
    try:
        with open(cache_file, "rb") as file, np.load(file, allow_pickle=False) as npz:
            images, paths, skipped = npz["images"], npz["paths"], npz["skipped"]
    except Exception:  # any damage (truncation, bad zip, wrong content) just means a cache miss
        return None
    n = len(paths)
    consistent = (
        images.dtype == np.uint8
        and images.shape == (n, 3, size, size)
        and n > 0
        and paths.ndim == 1
        and paths.dtype.kind == "U"
        and skipped.ndim == 2
        and skipped.shape[1] == 2
        and skipped.dtype.kind == "U"
    )
    if not consistent:
        return None
    return ImageSet(
        torch.from_numpy(images),
        paths.tolist(),
        [(path, reason) for path, reason in skipped.tolist()],
    )


def _write_cache(cache_file: Path, image_set: ImageSet) -> None:
    """Write atomically; failing to cache (read-only or full disk) is not an error."""
    skipped = np.array(image_set.skipped, dtype=str).reshape(-1, 2)

    def write(file) -> None:
        np.savez(file, images=image_set.images.numpy(), paths=np.array(image_set.paths, dtype=str), skipped=skipped)

    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(cache_file.parent)  # as big as the data set: never leave one behind
        atomic_write(cache_file, write)
    except OSError:
        pass


class BatchIterator:
    """Endless shuffled training batches as float tensors in [-1, 1] on `device`.

    Each epoch draws a fresh permutation from `generator`; batches never straddle two
    permutations, so the last `N mod batch_size` images of each permutation are dropped (a
    different random subset each time). When N < batch_size, ceil(batch_size / N) permutations
    are concatenated so a batch can still be filled. With `flip`, each image is mirrored
    horizontally with probability 1/2. All randomness comes from `generator`, whose state the
    caller saves and restores alongside `state_dict()`.

    `shard=(rank, world)` (distributed training): `batch_size` is the global batch; every rank
    draws the same permutation and flips and returns only its contiguous slice of
    `batch_size // world` images, so the union over the ranks is the single-process batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device | str,
        flip: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
            raise ValueError("images must be a non-empty (N, C, H, W) uint8 tensor")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rank, world = shard
        if not 0 <= rank < world or batch_size % world:
            raise ValueError(f"batch_size {batch_size} cannot be split evenly over {world} processes")
        self.rank_slice = slice(rank * batch_size // world, (rank + 1) * batch_size // world) if world > 1 else slice(None)
        self.images = images
        self.batch_size = batch_size
        self.generator = generator
        self.device = torch.device(device)
        self.flip = flip
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0
        self._seen = 0

    @property
    def epoch(self) -> float:
        """Images served so far divided by the number of images."""
        return self._seen / len(self.images)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> torch.Tensor:
        if self._position + self.batch_size > len(self._order):
            self._order = self._new_order()
            self._position = 0
        index = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        self._seen += self.batch_size

        batch = self.images[index[self.rank_slice].to(self.images.device)].to(self.device, non_blocking=True)
        batch = batch.float() / 127.5 - 1.0
        if self.flip:
            mirror = torch.rand(
                self.batch_size, generator=self.generator, device=self.generator.device
            ) < 0.5
            mirror = mirror[self.rank_slice]
            batch = torch.where(mirror.to(self.device).view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch

    def _new_order(self) -> torch.Tensor:
        n = len(self.images)
        perms = [
            torch.randperm(n, generator=self.generator, device=self.generator.device)
            for _ in range(math.ceil(self.batch_size / n))
        ]
        return torch.cat(perms).cpu()

    def state_dict(self) -> dict[str, int | torch.Tensor]:
        return {
            "num_images": len(self.images),
            "order": self._order.clone(),
            "position": self._position,
            "images_seen": self._seen,
        }

    def load_state_dict(self, state: dict[str, int | torch.Tensor]) -> None:
        if state["num_images"] != len(self.images):
            raise ValueError(
                f"iterator state is for {state['num_images']} images, not {len(self.images)}"
            )
        order = torch.as_tensor(state["order"], dtype=torch.long).cpu()
        position = int(state["position"])
        if not 0 <= position <= len(order) or (len(order) and int(order.max()) >= len(self.images)):
            raise ValueError("iterator state is inconsistent")
        self._order = order
        self._position = position
        self._seen = int(state["images_seen"])
