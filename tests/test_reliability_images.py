"""Issue 5, item 3: a messy folder loads its good images and names every bad file; nothing hangs.

The corpus (tests/faults/corpus.py) mixes good photos, odd-but-valid images (CMYK, 16-bit,
palette, LA/RGBA, animated, 1×1, EXIF-rotated …) and bad files (truncated, empty, random bytes,
text, decompression bombs, symlink loops, a FIFO, /dev/zero). Unreadable permissions are
injected (root reads anything), and also tried for real when not root. Then hypothesis throws
random and mutated bytes at the decoder and at whole folders.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import data, files
from engine.data import BadImage, decode_image, load_image_folder
from tests.faults import oserror, record
from tests.faults.corpus import build_corpus, encoded, photo

SIZE = 32
HANG_SECONDS = 60  # a whole folder; one file must take far less


def load_with_deadline(folder: Path, cache_dir: Path | None, seconds: float = HANG_SECONDS):
    """load_image_folder in a thread: fail, rather than hang the suite, if it does not return."""
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = load_image_folder(folder, SIZE, cache_dir)
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"loading {folder} hung for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def timed_decodes(monkeypatch) -> list[tuple[str, float]]:
    times: list[tuple[str, float]] = []
    original = data.decode_image

    def timed(path, size):
        began = time.perf_counter()
        try:
            return original(path, size)
        finally:
            times.append((str(path), time.perf_counter() - began))

    monkeypatch.setattr(data, "decode_image", timed)
    return times


def check_corpus_result(result, corpus) -> int:
    """Assert good ones loaded, bad ones skipped with reasons; return the number of crashes (0)."""
    loaded = set(result.paths)
    reasons = dict(result.skipped)
    assert loaded == set(corpus.good), (set(corpus.good) - loaded, loaded - set(corpus.good))
    assert set(reasons) == set(corpus.bad), (set(corpus.bad) ^ set(reasons))
    for name, words in corpus.bad.items():
        assert reasons[name] and words.lower() in reasons[name].lower(), (name, words, reasons[name])
        assert "\n" not in reasons[name]
    assert result.images.shape == (len(corpus.good), 3, SIZE, SIZE)
    return 0


def test_messy_folder_loads_the_good_and_names_the_bad(tmp_path, monkeypatch):
    folder = tmp_path / "messy"
    corpus = build_corpus(folder)
    # Unreadable files: injected, since CI runs as root and root reads anything.
    locked = {folder / "bad/locked.png": errno.EACCES, folder / "bad/io-error.jpg": errno.EIO}
    for path in locked:
        path.write_bytes(encoded(photo(), "PNG"))
    corpus.bad.update({"bad/locked.png": "unreadable: permission denied", "bad/io-error.jpg": "unreadable: input/output error"})
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if Path(file) in locked:
            raise oserror(locked[Path(file)], file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(data, "open", guarded_open, raising=False)
    times = timed_decodes(monkeypatch)
    cache = tmp_path / "cache"

    began = time.perf_counter()
    first = load_with_deadline(folder, cache)
    took = time.perf_counter() - began
    crashes = check_corpus_result(first, corpus)
    slowest = max(seconds for _, seconds in times)
    assert slowest < 10, f"one file took {slowest:.1f} s to refuse or decode"

    second = load_with_deadline(folder, cache)  # from the cache: same images, same reasons
    check_corpus_result(second, corpus)
    assert np.array_equal(first.images.numpy(), second.images.numpy())
    record(
        "images", faults=len(corpus.bad), bad_inputs=len(corpus.bad), survived=len(corpus.good), crashes=crashes,
        note=f"{len(corpus.good)} good/odd-but-valid loaded, {len(corpus.bad)} bad skipped with a reason; "
        f"whole folder {took * 1000:.0f} ms, slowest file {slowest * 1000:.0f} ms",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions (the injected variant above covers it)")
def test_unreadable_permissions_for_real(tmp_path):
    folder = tmp_path / "perm"
    folder.mkdir()
    (folder / "ok.png").write_bytes(encoded(photo(), "PNG"))
    locked = folder / "locked.png"
    locked.write_bytes(encoded(photo(seed=3), "PNG"))
    locked.chmod(0)
    try:
        result = load_with_deadline(folder, None)
    finally:
        locked.chmod(0o644)
    assert result.paths == ["ok.png"] and result.skipped == [("locked.png", "unreadable: Permission denied")]
    record("images", faults=1, bad_inputs=1, survived=1, note="real chmod 000 file (non-root run)")


def test_a_folder_with_only_bad_files_is_a_clear_error(tmp_path):
    folder = tmp_path / "all-bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    os.symlink("a.png", folder / "b.png")  # broken
    (folder / "c.png").write_bytes(os.urandom(100))
    with pytest.raises(data.DataError, match="no usable images") as info:
        load_with_deadline(folder, None)
    assert str(folder) in str(info.value)
    record("images", faults=3, bad_inputs=3, survived=1, note="a folder of only bad files: one DataError")


def test_a_full_disk_while_caching_never_loses_the_images_nor_leaves_temporaries(tmp_path, monkeypatch):
    from tests.faults import patched_module, raising

    folder = tmp_path / "cats"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(encoded(photo(seed=i), "PNG"))
    cache = tmp_path / "cache"
    faults = 0
    for where in ("fsync", "replace"):
        with monkeypatch.context() as patch:  # (never monkeypatch.undo(): it would drop $KITTYTERM_HOME)
            patched_module(patch, files, "os", **{where: raising(errno.ENOSPC)})
            result = load_with_deadline(folder, cache)
        faults += 1
        assert len(result) == 3
        assert list(cache.iterdir()) == []  # no cache, and no temporary left
    record("disk", faults=faults, survived=faults, note="image cache write fails (ENOSPC in fsync / rename): images still load, no temporary left")


# ---------------------------------------------------------------------------- fuzzing

EXTENSIONS = sorted(files.IMAGE_EXTENSIONS)
SEEDS = {
    ".png": encoded(photo(24), "PNG"),
    ".jpg": encoded(photo(24), "JPEG"),
    ".gif": encoded(photo(24), "GIF"),
    ".webp": encoded(photo(24), "WEBP"),
    ".bmp": encoded(photo(24), "BMP"),
}
FUZZ = {"tried": 0, "decoded": 0, "refused": 0, "crashes": 0, "slowest": 0.0}


def check_decode(path: Path) -> None:
    FUZZ["tried"] += 1
    began = time.perf_counter()
    try:
        array = decode_image(path, SIZE)
    except BadImage as bad:
        FUZZ["refused"] += 1
        assert bad.reason and "\n" not in bad.reason
    except Exception:
        FUZZ["crashes"] += 1
        raise
    else:
        FUZZ["decoded"] += 1
        assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8
    FUZZ["slowest"] = max(FUZZ["slowest"], time.perf_counter() - began)
    assert time.perf_counter() - began < 10


@st.composite
def mutated_image(draw):
    """A valid image of some format, then truncated, bit-flipped, spliced or overwritten."""
    extension = draw(st.sampled_from(sorted(SEEDS)))
    blob = bytearray(SEEDS[extension])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(blob) - 1)))
        if kind == "truncate":
            del blob[at:]
        elif kind == "flip" and blob:
            blob[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            blob[at : at + len(chunk)] = chunk
        elif kind == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del blob[at : at + draw(st.integers(1, 64))]
    name_extension = draw(st.sampled_from([extension, *EXTENSIONS]))
    return bytes(blob), name_extension


FUZZ_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], database=None)


@FUZZ_SETTINGS
@given(blob=st.binary(max_size=2048), extension=st.sampled_from(EXTENSIONS))
def test_fuzz_decoder_with_random_bytes(tmp_path, blob, extension):
    path = tmp_path / f"fuzz{extension}"
    path.write_bytes(blob)
    check_decode(path)


@FUZZ_SETTINGS
@given(case=mutated_image())
def test_fuzz_decoder_with_mutated_images(tmp_path, case):
    blob, extension = case
    path = tmp_path / f"mutant{extension}"
    path.write_bytes(blob)
    check_decode(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], database=None)
@given(cases=st.lists(mutated_image(), min_size=1, max_size=6), good=st.integers(1, 3))
def test_fuzz_whole_folders_keep_every_good_image(tmp_path_factory, cases, good):
    folder = tmp_path_factory.mktemp("fuzz-folder")
    for i, (blob, extension) in enumerate(cases):
        (folder / f"m{i}{extension}").write_bytes(blob)
    for i in range(good):
        (folder / f"good{i}.png").write_bytes(SEEDS[".png"])
    FUZZ["tried"] += len(cases)
    result = load_with_deadline(folder, tmp_path_factory.mktemp("fuzz-cache"))
    assert {f"good{i}.png" for i in range(good)} <= set(result.paths)
    assert len(result.paths) + len(result.skipped) == len(cases) + good
    assert len(result) == result.images.shape[0]


def test_fuzz_figures():
    """Runs after the fuzz tests (file order): writes their totals to the reliability table."""
    if FUZZ["tried"] == 0:
        pytest.skip("the fuzz tests did not run in this session")
    assert FUZZ["crashes"] == 0
    record(
        "fuzz", faults=FUZZ["tried"], bad_inputs=FUZZ["tried"], survived=FUZZ["tried"], crashes=FUZZ["crashes"],
        note=f"random and mutated PNG/JPEG/GIF/WebP/BMP bytes: {FUZZ['decoded']} decoded, {FUZZ['refused']} refused "
        f"with a reason; slowest {FUZZ['slowest'] * 1000:.0f} ms",
    )
