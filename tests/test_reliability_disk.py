"""Issue 5, item 2: a failing write (full disk, no permission, read-only file system, I/O error)
while saving a checkpoint or a gallery image keeps the previous file intact, leaves no partial or
temporary file, reports a clear error naming the file, and training carries on.

Faults are injected into `engine.files`, the one module every writer goes through (its `os` or
`tempfile`), since the tests run as root, for whom permissions do not apply; a real read-only folder is tried too when
not root.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import engine.files as files_module
import kittyterm.cats as cats
from engine import events
from engine.checkpoint import read_checkpoint, save_checkpoint
from engine.threads import TrainingThread
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS
from tests.faults import (
    ShortWriteFile,
    oserror,
    patched_module,
    raising,
    record,
)
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


def make_trainer() -> Trainer:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Trainer(SMALL, images, TrainConfig(batch_size=2, warmup_steps=2), device="cpu")


def write_faults(monkeypatch, kind: str, code: int) -> None:
    """Make the next writes through `engine.files` fail at `kind` with errno `code`."""
    if kind == "mkstemp":
        patched_module(monkeypatch, files_module, "tempfile", mkstemp=raising(code))
    elif kind == "write":
        real_fdopen = os.fdopen

        def short_fdopen(fd, *args, **kwargs):
            return ShortWriteFile(real_fdopen(fd, *args, **kwargs), budget=1000, code=code)

        patched_module(monkeypatch, files_module, "os", fdopen=short_fdopen)
    else:  # fsync, replace, link
        patched_module(monkeypatch, files_module, "os", **{kind: raising(code)})


CHECKPOINT_FAULTS = [
    ("mkstemp", errno.EACCES),
    ("mkstemp", errno.EROFS),
    ("mkstemp", errno.ENOSPC),
    ("write", errno.ENOSPC),
    ("write", errno.EDQUOT),
    ("write", errno.EIO),
    ("fsync", errno.ENOSPC),
    ("fsync", errno.EIO),
    ("replace", errno.EACCES),
    ("replace", errno.EXDEV),
    ("replace", errno.ENOSPC),
]


def test_failed_checkpoint_writes_keep_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.safetensors"
    save_checkpoint(path, {"w": torch.ones(4)}, {"step": "1"})
    before = path.read_bytes()
    for kind, code in CHECKPOINT_FAULTS:
        with monkeypatch.context() as patch, pytest.raises(OSError) as info:  # (never undo(): it would drop $KITTYTERM_HOME)
            write_faults(patch, kind, code)
            save_checkpoint(path, {"w": torch.zeros(1000)}, {"step": "2"})
        assert info.value.errno == code and info.value.filename == str(path), (kind, info.value)
        assert os.strerror(code) in str(info.value)
        assert path.read_bytes() == before, kind
        assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.safetensors"], kind
    # fchmod is refused on file systems without Unix permissions: that must not stop a save
    with monkeypatch.context() as patch:
        patched_module(patch, files_module, "os", fchmod=raising(errno.EPERM))
        save_checkpoint(path, {"w": torch.zeros(2)}, {"step": "3"})
    assert read_checkpoint(path)[1]["step"] == "3"
    record("disk", faults=len(CHECKPOINT_FAULTS) + 1, survived=len(CHECKPOINT_FAULTS) + 1,
           note="checkpoint write: ENOSPC/EDQUOT/EIO/EACCES/EROFS/EXDEV at mkstemp, write, fsync, rename; EPERM on chmod")


def test_training_reports_a_failed_save_and_carries_on(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.safetensors"
    trainer = make_trainer()
    trainer.save(path)  # the last good checkpoint, at step 0
    failures = {"left": 4}
    real_fsync = os.fsync

    def fsync_until_disk_freed(fd):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise oserror(errno.ENOSPC)
        return real_fsync(fd)

    patched_module(monkeypatch, files_module, "os", fsync=fsync_until_disk_freed)
    seen: list = []
    thread = TrainingThread(trainer, path, max_steps=10, checkpoint_every_steps=2)
    thread.subscribe(seen.append)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    errors = [e.message for e in seen if isinstance(e, events.EngineError)]
    saved = [e.step for e in seen if isinstance(e, events.CheckpointSaved)]
    assert len(errors) == 4 and all("checkpoint not saved" in m and "No space left on device" in m and str(path) in m for m in errors), errors
    assert [e.step for e in seen if isinstance(e, events.TrainingStep)] == list(range(1, 11))  # training went on
    assert saved and saved[-1] == 10 and thread.save_error is None
    assert read_checkpoint(path)[1]["step"] == "10"
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.safetensors"]
    record("disk", faults=4, survived=1, note="4 saves fail with ENOSPC during training: each reported, training continues, next save succeeds")


def test_cli_train_exits_non_zero_when_its_last_save_fails(tmp_path, monkeypatch, kittyterm_home):
    from PIL import Image

    from kittyterm.cli import app

    data = tmp_path / "pics"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 50, 100, 150)).save(data / f"{i}.png")
    runner = CliRunner()
    args = ["train", "--data", str(data), "--preset", "tiny", "--batch-size", "2", "--device", "cpu"]
    assert runner.invoke(app, [*args, "--steps", "2"]).exit_code == 0
    checkpoint = kittyterm_home / "data/runs/tiny-pics/checkpoint.safetensors"
    before = checkpoint.read_bytes()
    with monkeypatch.context() as patch:
        patched_module(patch, files_module, "os", fsync=raising(errno.ENOSPC))
        result = runner.invoke(app, [*args, "--steps", "4"])  # on to step 4
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "No space left on device" in result.output and "not saved" in result.output and "Traceback" not in result.output
    assert checkpoint.read_bytes() == before
    record("disk", faults=1, survived=1, note="`kittyterm train` whose final save fails: exit 1 with the reason, old checkpoint intact")


# ---------------------------------------------------------------------------- gallery images


def cat_image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, 16, 16), dtype=np.uint8)


INFO = cats.CatInfo(seed=7, sampler="dpm++", steps=5, model_sha256="ab" * 32, model="test")


GALLERY_FAULTS = [
    ("mkstemp", errno.EACCES),
    ("mkstemp", errno.EROFS),
    ("mkstemp", errno.ENOSPC),
    ("write", errno.ENOSPC),
    ("write", errno.EDQUOT),
    ("fsync", errno.ENOSPC),
    ("fsync", errno.EIO),
    ("link", errno.ENOSPC),
    ("link", errno.EACCES),
]


def test_failed_gallery_writes_leave_no_partial_file(tmp_path, monkeypatch):
    gallery = tmp_path / "gallery"
    first = cats.save_cat(gallery, cat_image(0), INFO)
    before = first.read_bytes()
    for kind, code in GALLERY_FAULTS:
        with monkeypatch.context() as patch, pytest.raises(OSError) as info:
            write_faults(patch, kind, code)
            cats.save_cat(gallery, cat_image(1), INFO)
        assert info.value.errno == code and info.value.filename == str(gallery / "cat-7-2.png"), (kind, info.value)
        assert sorted(p.name for p in gallery.iterdir()) == ["cat-7.png"], kind
        assert first.read_bytes() == before
    record("disk", faults=len(GALLERY_FAULTS), survived=len(GALLERY_FAULTS),
           note="gallery PNG: ENOSPC/EDQUOT/EIO/EACCES/EROFS at mkstemp, write, fsync, link: no partial file, old cats intact")


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.ENOTSUP])
def test_file_systems_without_hard_links_still_save_cats(tmp_path, monkeypatch, code):
    gallery = tmp_path / "gallery"
    first = cats.save_cat(gallery, cat_image(0), INFO)
    patched_module(monkeypatch, files_module, "os", link=raising(code))
    second = cats.save_cat(gallery, cat_image(1), INFO)
    third = cats.save_cat(gallery, cat_image(2), INFO)
    assert [first.name, second.name, third.name] == ["cat-7.png", "cat-7-2.png", "cat-7-3.png"]  # never overwritten
    assert cats.read_cat_info(second) == INFO and sorted(p.name for p in gallery.iterdir()) == ["cat-7-2.png", "cat-7-3.png", "cat-7.png"]
    record("disk", faults=2, survived=2, note=f"no hard links ({errno.errorcode[code]}): cats still saved, never overwriting")


def test_cli_sample_on_a_full_disk_is_one_line_and_leaves_no_partial_png(tmp_path, monkeypatch):
    from kittyterm.cli import app

    checkpoint = tmp_path / "c.safetensors"
    make_trainer().save(checkpoint)
    out = tmp_path / "cats"
    runner = CliRunner()
    assert runner.invoke(app, ["sample", "--out", str(out), "-n", "1", "--steps", "2", "--seed", "1", "--checkpoint", str(checkpoint)]).exit_code == 0
    with monkeypatch.context() as patch:
        patched_module(patch, files_module, "os", fsync=raising(errno.ENOSPC))
        result = runner.invoke(app, ["sample", "--out", str(out), "-n", "2", "--steps", "2", "--seed", "5", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "No space left on device" in result.output and "cat-5.png" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["cat-1.png"]
    record("disk", faults=1, survived=1, note="`kittyterm sample` on a full disk: exit 1 naming the file, no partial PNG")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the injected EACCES/EROFS cases above cover it")
def test_read_only_folders_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "checkpoint.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {})
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            save_checkpoint(path, {"w": torch.zeros(2)}, {})
        with pytest.raises(PermissionError):
            cats.save_cat(folder, cat_image(), INFO)
    finally:
        folder.chmod(0o700)
    assert torch.equal(read_checkpoint(path)[0]["w"], torch.ones(2))
    record("disk", faults=2, survived=2, note="real read-only folder (non-root run)")


def test_concurrent_saves_never_tear_the_file(tmp_path):
    """Two writers racing on one checkpoint (say the app and a CLI run): every read sees a whole file."""
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"w": torch.zeros(50_000)}, {"writer": "none"})
    stop = threading.Event()
    bad_reads: list[str] = []

    def writer(value: float) -> None:
        while not stop.is_set():
            save_checkpoint(path, {"w": torch.full((50_000,), value)}, {"writer": str(value)})

    def reader() -> None:
        for _ in range(60):
            tensors, metadata = read_checkpoint(path)
            values = tensors["w"].unique().tolist()
            if len(values) != 1 or (metadata["writer"] != "none" and float(metadata["writer"]) != values[0]):
                bad_reads.append(str(values[:3]))

    threads = [threading.Thread(target=writer, args=(v,)) for v in (1.0, 2.0)]
    for t in threads:
        t.start()
    try:
        reader()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad_reads == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]
    record("disk", faults=60, survived=60, note="two writers racing on one checkpoint: 60 reads, none torn")
