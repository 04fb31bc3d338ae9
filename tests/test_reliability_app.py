"""Issue 5, item 7: the app under faults. It keeps running and shows the error in its status
line when the training thread hits a full disk, bad numbers, a crash, bad images or a bad
checkpoint; quitting in the middle of a checkpoint write still leaves a readable checkpoint.

Only the app's public behaviour is used (keys, the status line, `app.session`), with the
helpers of tests/test_app_support.py; faults are injected into the engine, as elsewhere.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time

import torch

import engine.files as files_module
from engine.checkpoint import read_checkpoint
from engine.unet import UNet
from kittyterm import locations
from tests.faults import oserror, patched_module, record
from tests.faults.corpus import build_corpus
from tests.test_app_support import (  # noqa: F401  (fixtures)
    data_folder,
    home,
    make_app,
    one_torch_thread,
    tap,
    tap_and_confirm,
    tiny_run,
    wait_for,
    wait_until_exited,
)


def status(app) -> str:
    return app.main_screen.status.text


def run_dir_temporaries(path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(".*.tmp"))


def test_full_disk_while_training_then_quit_in_the_middle_of_a_write(home, data_folder, monkeypatch, one_torch_thread):
    """ENOSPC on the first saves: the error shows, training goes on. Then every write is slow
    and q is pressed while one is in progress: the app waits for it and exits; the file is whole."""
    mode = {"fail": 0, "slow": 0.0}
    writing = threading.Event()
    real_fsync = os.fsync

    def fsync(fd):
        # the checkpoint's writes only: a timelapse frame written first took the failure, now and then
        if mode["fail"] > 0 and "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            mode["fail"] -= 1
            raise oserror(errno.ENOSPC)
        writing.set()
        time.sleep(mode["slow"])
        real_fsync(fd)

    patched_module(monkeypatch, files_module, "os", fsync=fsync)

    async def scenario():
        app = make_app(data_folder, session={"checkpoint_every_seconds": 0.2})
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None)  # the run is open: now the disk fills up
            mode["fail"] = 2
            await wait_for(pilot, lambda: "No space left on device" in status(app))
            assert app.is_running and "checkpoint not saved" in status(app)
            failed_at = app.session.trainer.step_count
            await wait_for(pilot, lambda: mode["fail"] == 0 and app.session.trainer.step_count > failed_at + 2)
            await wait_for(pilot, lambda: app.session.training.checkpoint_path.is_file())  # a later save went through
            mode["slow"] = 1.0
            writing.clear()
            await wait_for(pilot, writing.is_set)  # a checkpoint write is in progress right now
            await tap(pilot, "q")
            took = await wait_until_exited(app, timeout=60)
        return app, took

    app, took = asyncio.run(scenario())
    path = app.session.training.checkpoint_path
    tensors, metadata = read_checkpoint(path)
    assert int(metadata["step"]) == app.session.trainer.step_count == len(tensors["history.loss"])
    assert run_dir_temporaries(path) == [] and app.session.busy_threads == []
    record("app", faults=3, survived=1, note=f"2 ENOSPC saves shown, training went on; quit mid-write: waited {took:.1f} s, checkpoint whole")


def test_nan_steps_and_a_rollback_keep_the_app_running(home, data_folder, monkeypatch, one_torch_thread):
    calls = {"n": 0}
    original = UNet.forward

    def forward(self, x, t):  # steps 4-8 of training give NaN (sampling, the timelapse's too, and the memory check's meta pass are left alone)
        if not self.training or x.is_meta:
            return original(self, x, t)
        calls["n"] += 1
        out = original(self, x, t)
        return out * float("nan") if 4 <= calls["n"] < 9 else out

    monkeypatch.setattr(UNet, "forward", forward)

    async def scenario():
        app = make_app(data_folder, session={"checkpoint_every_seconds": 0.05})
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: "NaN loss" in status(app))
            await wait_for(pilot, lambda: "went back from step" in status(app))  # the rollback is shown
            rollback_text = status(app)
            await wait_for(pilot, lambda: calls["n"] >= 12 and app.session.trainer.step_count >= 5)
            assert app.is_running and app.session.state == "running"
            assert app.session.trainer.config.lr < 5e-4  # rolled back with a lower rate
            await tap(pilot, "q")
            await wait_until_exited(app, timeout=60)
        return app, rollback_text

    app, rollback_text = asyncio.run(scenario())
    _, metadata = read_checkpoint(app.session.training.checkpoint_path)
    assert int(metadata["skipped_steps"]) == 5 and "2.5e-04" in rollback_text
    record("app", faults=5, survived=1, note=f"5 NaN steps: skips and the rollback shown ({rollback_text[:70]!r}…), training went on")


def test_a_crash_in_the_training_thread_is_shown_and_the_app_stays(home, data_folder, monkeypatch, one_torch_thread):
    calls = {"n": 0}
    original = UNet.forward

    def forward(self, x, t):  # the third training step fails (the timelapse's sampling and the memory check's meta pass do not)
        if not self.training or x.is_meta:
            return original(self, x, t)
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated CUDA error: an illegal memory access was encountered")
        return original(self, x, t)

    monkeypatch.setattr(UNet, "forward", forward)

    async def scenario():
        app = make_app(data_folder)
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: "illegal memory access" in status(app))
            assert app.is_running and app.main_screen.status.level == "error"
            await tap(pilot, "question_mark")  # still responds to keys
            await wait_for(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
            await tap(pilot, "escape")
            await tap(pilot, "q")
            await wait_until_exited(app, timeout=60)
        return app

    app = asyncio.run(scenario())
    tensors, metadata = read_checkpoint(app.session.training.checkpoint_path)
    assert int(metadata["step"]) == 2 and torch.isfinite(tensors["history.loss"]).all()
    record("app", faults=1, survived=1, note="exception in the training thread: shown as an error, keys still work, checkpoint at the last step")


def test_bad_images_and_a_bad_checkpoint_are_reported_and_training_starts(home, tmp_path, one_torch_thread):
    folder = tmp_path / "messy"
    corpus = build_corpus(folder, big=False)
    run = locations.runs_dir() / "tiny-messy"
    run.mkdir(parents=True)
    (run / "checkpoint.safetensors").write_bytes(os.urandom(3000))

    async def scenario():
        app = make_app(folder)
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "space")  # the damaged checkpoint is refused, never moved aside unasked
            await wait_for(pilot, lambda: "start the run afresh" in status(app), timeout=120)
            refused = status(app)
            assert app.session.state == "idle" and (run / "checkpoint.safetensors").stat().st_size == 3000
            await tap_and_confirm(pilot, "F")  # the same policy as `kittyterm train --fresh`
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count >= 1, timeout=120)
            text = f"{refused} → {status(app)}"
            await tap(pilot, "q")
            await wait_until_exited(app, timeout=60)
        return app, text

    app, text = asyncio.run(scenario())
    moved = [p for p in locations.runs_dir().iterdir() if p.name.startswith("tiny-messy.")]
    assert len(moved) == 1 and (moved[0] / "checkpoint.safetensors").stat().st_size == 3000  # kept aside, not deleted
    assert app.session.trainer.num_images == len(corpus.good)
    read_checkpoint(app.session.training.checkpoint_path)
    record("app", faults=len(corpus.bad) + 1, bad_inputs=len(corpus.bad) + 1, survived=1,
           note=f"{len(corpus.bad)} bad images skipped; a damaged checkpoint refused with the --fresh/F hint, then moved aside on F; training started ({text[:60]!r}…)")


def test_keeping_a_cat_on_a_full_disk_shows_the_error(home, tiny_run, monkeypatch, one_torch_thread):
    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "s")
            await wait_for(pilot, lambda: app.main_screen.frame is not None and app.main_screen.frame.final)
            with monkeypatch.context() as patch:  # (never monkeypatch.undo(): it would drop $KITTYTERM_HOME)
                patched_module(patch, files_module, "os", fsync=lambda fd: (_ for _ in ()).throw(oserror(errno.ENOSPC)))
                await tap(pilot, "k")
                await wait_for(pilot, lambda: "Could not keep" in status(app))
                text = status(app)
            await tap(pilot, "k")
            await wait_for(pilot, lambda: "Kept" in status(app))
            await tap(pilot, "q")
            await wait_until_exited(app, timeout=60)
        return text

    text = asyncio.run(scenario())
    assert "No space left on device" in text and "cat-1.png" in text
    assert sorted(p.name for p in locations.gallery_dir().iterdir()) == ["cat-1.png"]
    record("app", faults=1, survived=1, note="keep on a full disk: error shown, no partial file, keeping again works")
