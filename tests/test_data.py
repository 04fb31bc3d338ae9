from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.data as data
from engine.data import (
    BadImage,
    BatchIterator,
    DataError,
    decode_image,
    load_image_folder,
    read_rgb,
)
from engine.files import scan_images

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(colour: tuple[int, int, int], size: int = 24) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def noisy_jpeg_bytes(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    return path.read_bytes()


def make_mixed_folder(root: Path) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    solid(RED).save(root / "good.jpg")
    solid(GREEN).save(root / "sub" / "good.png")
    full = noisy_jpeg_bytes(root / "corrupt.jpg")
    (root / "corrupt.jpg").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    Image.new("L", (24, 24), 128).save(root / "grey.png")

    rgba = np.zeros((24, 24, 4), dtype=np.uint8)  # left half transparent black
    rgba[:, 12:] = (0, 0, 255, 255)  # right half opaque blue
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")

    gradient = np.tile(np.linspace(0, 65535, 24).round().astype(np.uint16), (24, 1))
    sixteen = Image.fromarray(gradient)
    assert sixteen.mode == "I;16"
    sixteen.save(root / "sixteen.png")

    palette = Image.new("P", (24, 24), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(root / "palette.png")

    solid(BLUE).save(root / "anim.gif", save_all=True, append_images=[solid(RED)], duration=100)
    (root / "notes.txt").write_text("not an image")
    (root / "fake.jpg").write_text("this is text pretending to be a JPEG")
    solid(GREEN).save(root / "UPPER.JPG")
    return root


def pixels(image_set: data.ImageSet, name: str) -> np.ndarray:
    """The decoded image `name` as an (S, S, 3) int array."""
    return image_set.images[image_set.paths.index(name)].permute(1, 2, 0).numpy().astype(int)


def test_mixed_folder_loads_good_images_and_skips_bad_ones(tmp_path: Path) -> None:
    folder = make_mixed_folder(tmp_path / "cats")
    result = load_image_folder(folder, 24, cache_dir=None)

    assert set(result.paths) == {
        "good.jpg", "sub/good.png", "grey.png", "rgba.png", "sixteen.png", "palette.png",
        "anim.gif", "UPPER.JPG",
    }
    assert len(result) == 8
    assert result.images.shape == (8, 3, 24, 24) and result.images.dtype == torch.uint8
    reasons = dict(result.skipped)
    assert set(reasons) == {"corrupt.jpg", "empty.png", "fake.jpg"}  # notes.txt is not counted
    assert reasons["empty.png"] == "empty file"
    assert reasons["fake.jpg"] == "not a recognised image"
    assert "corrupt" in reasons["corrupt.jpg"] and "truncated" in reasons["corrupt.jpg"]

    assert np.abs(pixels(result, "good.jpg") - RED).max() <= 3
    assert np.abs(pixels(result, "sub/good.png") - GREEN).max() == 0
    assert np.abs(pixels(result, "grey.png") - 128).max() == 0
    assert np.abs(pixels(result, "palette.png") - (10, 200, 30)).max() == 0
    assert np.abs(pixels(result, "anim.gif") - BLUE).max() == 0  # first frame, not the red one

    rgba = pixels(result, "rgba.png")  # transparency is composited over white
    assert (rgba[:, :10] == 255).all()
    assert (rgba[:, 14:] == BLUE).all()

    sixteen = pixels(result, "sixteen.png")
    assert (sixteen[..., 0] == sixteen[..., 1]).all() and (sixteen[..., 1] == sixteen[..., 2]).all()
    row = sixteen[12, :, 0]
    assert row[0] <= 2 and row[-1] >= 253
    assert (np.diff(row) >= 0).all()
    assert abs(row[12] - 255 * 12 / 23) <= 3  # a real gradient, not clipped to 255


def test_scan_is_sorted_case_insensitive_and_survives_symlink_loops(tmp_path: Path) -> None:
    folder = make_mixed_folder(tmp_path / "cats")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "link.png").symlink_to(folder / "sub" / "good.png")
    (folder / "dangling.png").symlink_to(folder / "missing.png")

    found, unusable = scan_images(folder)
    names = [p.relative_to(folder).as_posix() for p in found]
    assert found == sorted(found)
    assert "UPPER.JPG" in names and "link.png" in names
    assert "notes.txt" not in names and "dangling.png" not in names
    assert not any(name.startswith("sub/loop") for name in names)
    assert dict((p.name, why) for p, why in unusable)["dangling.png"] == "broken symlink"


def test_centre_crop_keeps_the_centre(tmp_path: Path) -> None:
    strip = np.zeros((30, 90, 3), dtype=np.uint8)
    strip[:, :30], strip[:, 30:60], strip[:, 60:] = RED, GREEN, BLUE
    Image.fromarray(strip).save(tmp_path / "wide.png")
    Image.fromarray(strip.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")

    for name in ("wide.png", "tall.png"):
        out = decode_image(tmp_path / name, 8).astype(int)
        assert out.shape == (8, 8, 3)
        assert np.abs(out[2:6, 2:6] - GREEN).max() <= 2
        assert np.abs(out.mean(axis=(0, 1)) - GREEN).max() < 8


def test_exif_orientation_turns_the_image_upright(tmp_path: Path) -> None:
    """EXIF orientation 6: the stored pixels are shown turned 90° clockwise, so the left half of
    an 8×4 red-then-blue image becomes the top half of a 4×8 one."""
    stored = np.zeros((4, 8, 3), dtype=np.uint8)
    stored[:, :4], stored[:, 4:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "turned.jpg") as raw:
        decoded = np.asarray(raw.convert("RGB")).astype(int)  # the pixels as stored, JPEG-rounded

    upright = read_rgb(tmp_path / "turned.jpg")
    out = np.asarray(upright).astype(int)
    assert upright.size == (4, 8)
    assert np.array_equal(out, np.rot90(decoded, k=-1))
    assert np.abs(out[:2] - RED).max() <= 8 and np.abs(out[-2:] - BLUE).max() <= 8


def test_oversized_images_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solid(RED, size=40).save(tmp_path / "big.png")
    monkeypatch.setattr(data, "MAX_PIXELS", 1000)
    with pytest.raises(BadImage, match="image too large"):
        decode_image(tmp_path / "big.png", 8)

    monkeypatch.setattr(data, "MAX_PIXELS", 10**9)
    for pil_limit in (1000, 500):  # PIL warns above its limit and raises above twice the limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
        with pytest.raises(BadImage, match="image too large"):
            decode_image(tmp_path / "big.png", 8)


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = data.decode_image

    def counting(path: Path, size: int) -> np.ndarray:
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(data, "decode_image", counting)
    return calls


def test_cache_hit_invalidation_and_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_mixed_folder(tmp_path / "cats")
    cache = tmp_path / "cache"
    calls = count_decodes(monkeypatch)

    first = load_image_folder(folder, 16, cache)
    assert len(calls) == 11
    (cache_file,) = cache.glob("*.npz")
    assert list(cache.iterdir()) == [cache_file]  # no temp files left behind

    progress: list[tuple[int, int]] = []
    second = load_image_folder(folder, 16, cache, progress=lambda d, t: progress.append((d, t)))
    assert len(calls) == 11  # nothing decoded
    assert progress == [(11, 11)]
    assert torch.equal(first.images, second.images)
    assert first.paths == second.paths and first.skipped == second.skipped

    load_image_folder(folder, 8, cache)  # a different size is a different cache entry
    assert len(calls) == 22

    stat = (folder / "good.jpg").stat()
    os.utime(folder / "good.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    load_image_folder(folder, 16, cache)
    assert len(calls) == 33

    solid(BLUE).save(folder / "sub" / "new.png")
    grown = load_image_folder(folder, 16, cache)
    assert len(calls) == 45 and len(grown) == len(first) + 1

    latest = max(cache.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    for damage in (b"garbage", latest.read_bytes()[:1000]):
        latest.write_bytes(damage)
        again = load_image_folder(folder, 16, cache)
        assert torch.equal(again.images, grown.images)
    assert len(calls) == 45 + 2 * 12
    load_image_folder(folder, 16, cache)  # the damaged file was rewritten
    assert len(calls) == 45 + 2 * 12


def test_no_cache_dir_and_progress(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(70):
        solid((i, i, i), size=8).save(folder / f"{i:03}.png")
    progress: list[tuple[int, int]] = []
    result = load_image_folder(folder, 8, None, progress=lambda d, t: progress.append((d, t)))
    assert len(result) == 70 and result.paths[0] == "000.png"
    assert progress[-1] == (70, 70) and all(t == 70 for _, t in progress)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_errors_name_the_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope.*does not exist"):
        load_image_folder(missing, 8, None)

    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder"):
        load_image_folder(tmp_path / "file.png", 8, None)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images in .*empty"):
        load_image_folder(empty, 8, None)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("text")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"no usable images in .*bad: a\.jpg \(.+\), b\.png \(.+\)$"):
        load_image_folder(bad, 8, tmp_path / "cache")
    assert issubclass(DataError, ValueError)


def constant_images(n: int, size: int = 4) -> torch.Tensor:
    """Image i is filled with the value 10 * i, so batches reveal which images they hold."""
    return (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, 3, size, size)


def ids(batch: torch.Tensor) -> list[int]:
    return ((batch[:, 0, 0, 0] + 1) * 127.5 / 10).round().long().tolist()


def test_batches_shape_range_and_epochs() -> None:
    images = constant_images(12)
    it = BatchIterator(images, 4, torch.Generator().manual_seed(0), "cpu", flip=False)
    for _ in range(3):
        seen = [i for _ in range(3) for i in ids(next(it))]
        assert sorted(seen) == list(range(12))
    assert it.epoch == 3.0

    full = torch.tensor([0, 255], dtype=torch.uint8).repeat(4).view(4, 1, 1, 2).expand(4, 3, 2, 2)
    batch = next(BatchIterator(full.contiguous(), 4, torch.Generator().manual_seed(0), "cpu"))
    assert batch.shape == (4, 3, 2, 2) and batch.dtype == torch.float32
    assert batch.min() == -1.0 and batch.max() == 1.0


def test_remainder_is_dropped_and_small_sets_still_fill_batches() -> None:
    it = BatchIterator(constant_images(10), 4, torch.Generator().manual_seed(1), "cpu", flip=False)
    for _ in range(5):
        seen = ids(next(it)) + ids(next(it))
        assert len(set(seen)) == 8  # no repeats within one permutation
    assert it.epoch == pytest.approx(4.0)

    it = BatchIterator(constant_images(3), 8, torch.Generator().manual_seed(2), "cpu", flip=False)
    batch = next(it)
    assert batch.shape == (8, 3, 4, 4)
    counts = np.bincount(ids(batch), minlength=3)
    assert set(ids(batch)) == {0, 1, 2} and counts.max() <= 3


def test_flip_mirrors_whole_images() -> None:
    half = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    half[..., 2:] = 255
    it = BatchIterator(half, 16, torch.Generator().manual_seed(0), "cpu", flip=True)
    batch = next(it)
    left_dark = batch[:, 0, 0, 0] == -1.0
    assert 0 < left_dark.sum() < 16
    original = half.float() / 127.5 - 1
    for image, unflipped in zip(batch, left_dark):
        assert torch.equal(image, original[0] if unflipped else original[0].flip(-1))


def test_determinism_and_state_round_trip() -> None:
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)

    def run(seed: int, steps: int) -> list[torch.Tensor]:
        it = BatchIterator(images, 3, torch.Generator().manual_seed(seed), "cpu")
        return [next(it) for _ in range(steps)]

    a, b, c = run(7, 8), run(7, 8), run(8, 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))

    generator = torch.Generator().manual_seed(3)
    it = BatchIterator(images, 3, generator, "cpu")
    for _ in range(4):  # stop mid-permutation
        next(it)
    state, rng_state = it.state_dict(), generator.get_state()
    expected = [next(it) for _ in range(6)]

    resumed_generator = torch.Generator()
    resumed_generator.set_state(rng_state)
    resumed = BatchIterator(images, 3, resumed_generator, "cpu")
    resumed.load_state_dict(state)
    assert resumed.epoch == pytest.approx(12 / 10)
    assert all(torch.equal(x, next(resumed)) for x in expected)

    with pytest.raises(ValueError, match="for 10 images, not 11"):
        BatchIterator(images[:1].repeat(11, 1, 1, 1), 3, generator, "cpu").load_state_dict(state)
