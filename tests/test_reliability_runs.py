"""One writer per run, runs keyed by their data folder, and no work lost to a signal.

Real processes play the other writer and the closed terminal: `kittyterm train` through
tests/faults/train_child.py (which prints STEP/SAVED markers), and the app in a pseudo-terminal
whose master side is closed, exactly what closing a terminal window does.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.checkpoint import read_checkpoint
from kittyterm import locations, runs
from kittyterm.cli import app as cli
from tests.faults import record
from tests.test_app_support import make_app, one_torch_thread, tap, wait_for, wait_until_exited, write_images  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals, flock and pseudo-terminals")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def status(app) -> str:
    return app.main_screen.status.text


class Trainer:
    """`kittyterm train` in a subprocess, reporting STEP n / SAVED n on stdout."""

    def __init__(self, home: Path, data: Path, *args) -> None:
        env = dict(os.environ, KITTYTERM_HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "tests.faults.train_child", "train", "--data", str(data), "--preset", "tiny",
                   "--batch-size", "4", "--device", "cpu", *map(str, args)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.steps = 0

    def wait_for_step(self, step: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.steps < step:
            assert time.monotonic() < deadline and self.process.poll() is None, self.process.stderr.read()
            line = self.process.stdout.readline()
            if line.startswith("STEP "):
                self.steps = int(line.split()[1])

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err


@pytest.fixture
def cats(tmp_path) -> Path:
    return write_images(tmp_path / "cats", count=8)


def test_a_second_trainer_on_a_run_refuses_at_once_naming_the_holder(kittyterm_home, cats):
    """Seen to catch: two `kittyterm train` on one run both ran and exited 0, the checkpoint going
    backwards (before the run lock)."""
    first = Trainer(kittyterm_home, cats, "--steps", 100_000)
    try:
        first.wait_for_step(2)
        began = time.monotonic()
        second = Trainer(kittyterm_home, cats, "--steps", 3)
        code, err = second.finish()
        assert code == 1 and time.monotonic() - began < 30
        assert f"error: run tiny-cats is being trained by process {first.process.pid}" in err and "Traceback" not in err
        assert second.steps == 0
    finally:
        first.process.send_signal(signal.SIGINT)
        code, _ = first.finish()
    assert code == 130
    step = int(read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]["step"])
    assert step >= 2  # the first writer's work is there, not overwritten by the second
    assert invoke("train", "--data", cats, "--preset", "tiny", "--steps", 1, "--device", "cpu").exit_code == 0  # lock released
    record("runs", faults=1, survived=1, note="two `kittyterm train` on one run: the second refuses at once naming the holder's pid")


def test_the_app_shows_a_busy_run_and_can_still_sample_it(kittyterm_home, cats, monkeypatch, one_torch_thread):
    monkeypatch.setenv("KITTYTERM_GRAPHICS", "halfblock")
    holder = Trainer(kittyterm_home, cats, "--steps", 100_000, "--checkpoint-every", 2)
    try:
        holder.wait_for_step(3)

        async def scenario():
            app = make_app(cats)
            async with app.run_test(size=(100, 30)) as pilot:
                await tap(pilot, "space")
                await wait_for(pilot, lambda: "being trained by process" in status(app))
                busy = status(app)
                assert app.session.state == "idle" and app.session.trainer is None
                await tap(pilot, "s")  # sampling reads the busy run's last checkpoint
                await wait_for(pilot, lambda: app.main_screen.frame is not None and app.main_screen.frame.final)
                model = app.session.sampling.batch.model
                await tap(pilot, "q")
                await wait_until_exited(app)
            return busy, model

        busy, model = asyncio.run(scenario())
    finally:
        holder.process.send_signal(signal.SIGTERM)
        code, _ = holder.finish()
    assert str(holder.process.pid) in busy and model.startswith("tiny-cats @ step")
    assert code == 143
    record("runs", faults=1, survived=1, note="the app on a run that a CLI trains: says who holds it, still samples its checkpoint")


def test_runs_are_keyed_by_their_folder_not_its_last_name(kittyterm_home, tmp_path):
    """Seen to catch: photos/a/pets and photos/b/pets sharing one run (the second resumed the first)."""
    a = write_images(tmp_path / "a" / "pets", count=4, seed=1)
    b = write_images(tmp_path / "b" / "pets", count=4, seed=2)
    base = ["--preset", "tiny", "--batch-size", 2, "--device", "cpu"]
    first = invoke("train", "--data", a, *base, "--steps", 1)
    second = invoke("train", "--data", b, *base, "--steps", 1)
    assert "new run tiny-pets:" in first.output
    assert "new run tiny-pets-" in second.output and "resuming" not in second.output
    again = invoke("train", "--data", a, *base, "--steps", 2)
    assert "resuming run tiny-pets at step 1" in again.output
    names = sorted(p.name for p in locations.runs_dir().iterdir())
    assert len(names) == 2 and runs.run_info(names[1])["data"] == str(b.resolve())
    asked = invoke("train", "--data", b, "--run", "tiny-pets", *base, "--steps", 3)  # explicitly: this run, that folder
    assert asked.exit_code == 0 and f"was trained on {a.resolve()}; it goes on with {b.resolve()} as asked" in asked.output
    assert runs.run_name("tiny", tmp_path / "café") != runs.run_name("tiny", tmp_path / "cafè")
    record("runs", faults=2, survived=2, note="two folders with one name get two runs; --run NAME with another folder says so")


def test_sighup_saves_headless_training(kittyterm_home, cats):
    """Seen to catch: closing the terminal (SIGHUP) killed `kittyterm train` without a save."""
    trainer = Trainer(kittyterm_home, cats, "--steps", 100_000)  # checkpoints every 2 minutes by default
    trainer.wait_for_step(3)
    trainer.process.send_signal(signal.SIGHUP)
    code, err = trainer.finish()
    assert code == 129 and "checkpoint saved" in err
    assert int(read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]["step"]) >= 3
    record("signal", faults=1, survived=1, note="SIGHUP to headless training: saved, exit 129")


def run_app_in_a_terminal(home: Path, data: Path, keys: bytes, then) -> tuple[int, bytes]:
    """`kittyterm --data DATA` in a pseudo-terminal; type `keys`, wait for a step, then `then(pid, fd)`."""
    env = dict(os.environ, KITTYTERM_HOME=str(home), TERM="xterm-256color", KITTYTERM_GRAPHICS="halfblock", OMP_NUM_THREADS="1")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the app, with the pty as its controlling terminal
        os.chdir(ROOT)
        os.execvpe(sys.executable, [sys.executable, "-m", "kittyterm", "--data", str(data), "--preset", "tiny"], env)
    screen = b""

    def read_for(seconds: float, until: bytes | None = None) -> None:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until in screen):
            try:
                if select.select([fd], [], [], 0.1)[0]:
                    screen += os.read(fd, 1 << 16)
            except OSError:  # closed: the terminal is gone
                return

    try:
        read_for(60, b"Press space")
        os.write(fd, keys)
        read_for(120, "● training".encode())
        read_for(3)
        then(pid, fd)
        read_for(5)
    finally:
        deadline = time.monotonic() + 60
        while (result := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        if result == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the app did not exit")
        try:
            os.close(fd)
        except OSError:
            pass
    return os.waitstatus_to_exitcode(result[1]), screen


def test_closing_the_terminal_saves_the_apps_training(kittyterm_home, cats):
    """Seen to catch: the app saved on neither SIGHUP nor SIGTERM (no checkpoint after training);
    and, once it did, hung for ever restoring a terminal that was gone."""
    code, _ = run_app_in_a_terminal(kittyterm_home, cats, b" ", lambda pid, fd: os.close(fd))
    assert code == 129
    assert int(read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]["step"]) >= 1
    record("signal", faults=1, survived=1, note="closing the app's terminal: checkpoint saved, exit 129")


def test_sigterm_saves_the_apps_training_and_restores_the_terminal(kittyterm_home, cats):
    code, screen = run_app_in_a_terminal(kittyterm_home, cats, b" ", lambda pid, fd: os.kill(pid, signal.SIGTERM))
    assert code == 143
    assert int(read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]["step"]) >= 1
    assert screen.rfind(b"\x1b[?1049l") > screen.rfind(b"\x1b[?1049h")  # left the alternate screen
    record("signal", faults=1, survived=1, note="SIGTERM to the app: checkpoint saved, terminal restored, exit 143")


def test_no_color_draws_the_loss_plot(monkeypatch, kittyterm_home, cats, one_torch_thread):
    """Seen to catch: NO_COLOR=1 crashed the app as soon as the loss plot drew."""
    monkeypatch.setenv("NO_COLOR", "1")

    async def scenario():
        app = make_app(cats)
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count >= 3)
            await pilot.pause(0.8)  # the plot redraws at most twice a second
            assert app.is_running and app.main_screen.query_one("#loss-plot").display
            await tap(pilot, "q")
            await wait_until_exited(app)
        return app

    assert asyncio.run(scenario()).no_color
    record("app", faults=1, survived=1, note="NO_COLOR=1: the loss plot draws, monochrome")


def test_loading_state_never_sticks(kittyterm_home, tmp_path, monkeypatch, one_torch_thread):
    """s and two quick spaces while the images load: afterwards the panel says ready, not loading."""
    data = write_images(tmp_path / "many", count=300)

    async def scenario():
        app = make_app(data)
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "s", "space")
            await pilot.pause(0.05)
            await tap(pilot, "space")  # changed its mind: load, but do not train
            await wait_for(pilot, lambda: app.session.trainer is not None, timeout=120)
            await pilot.pause(0.5)
            states = (app.session.state, app.main_screen.stats.state)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return states

    assert asyncio.run(scenario()) == ("ready", "ready")


@pytest.mark.parametrize("train_after_loading", [False, True], ids=["stay", "train"])
def test_trainer_ready_is_posted_after_the_state_it_announces(kittyterm_home, tmp_path, one_torch_thread, train_after_loading):
    """Seen to catch: the panel stuck on "loading" when the UI handled TrainerReady before the
    loader thread had set READY (the UI mirrors the session's state as it handles the message)."""
    from kittyterm.jobs.training import TrainingOptions
    from kittyterm.session.state import TrainingState
    from kittyterm.session.training import TrainingSession

    posted: list[tuple[str, TrainingState]] = []
    session = TrainingSession(
        lambda message: posted.append((type(message).__name__, session.state)),
        TrainingOptions(data=write_images(tmp_path / "cats", count=8), preset="tiny", batch_size=4, device="cpu"),
    )
    with session._lock:  # both presses land while the images load
        session.toggle()
        if not train_after_loading:
            session.toggle()
    deadline = time.monotonic() + 60
    while not any(name == "TrainerReady" for name, _ in posted):
        assert time.monotonic() < deadline, posted
        time.sleep(0.01)
    session.shutdown()
    announced = next(state for name, state in posted if name == "TrainerReady")
    assert announced == (TrainingState.RUNNING if train_after_loading else TrainingState.READY)
    names = [name for name, _ in posted]
    assert "TrainingStarted" not in names or names.index("TrainerReady") < names.index("TrainingStarted")


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_a_bad_run_folder_is_refused_before_any_work(kittyterm_home, cats, monkeypatch, kind):
    """Seen to catch: a run folder that is a file or unwritable was found only at the first save."""
    run = locations.runs_dir() / "tiny-cats"
    run.parent.mkdir(parents=True)
    if kind == "file":
        run.write_bytes(b"not a folder")
    else:
        import kittyterm.jobs.training as training

        def refuse(self, data):
            raise PermissionError(13, "Permission denied", str(self))

        run.mkdir()
        monkeypatch.setattr(training.Path, "write_bytes", refuse)
    loaded = []
    import engine.data

    monkeypatch.setattr(engine.data, "decode_image", lambda *a: loaded.append(a))
    result = invoke("train", "--data", cats, "--preset", "tiny", "--steps", 1, "--device", "cpu")
    assert result.exit_code == 1 and loaded == [], result.output
    assert ("it is a file" if kind == "file" else "Permission denied") in result.output and "Traceback" not in result.output


def test_stale_temporaries_of_killed_writers_are_cleaned_at_the_next_start(kittyterm_home, tmp_path):
    """`.cat-N.png.<pid>.tmp` from a killed `sample`, `.KEY.npz.<pid>.tmp` from a killed cache write
    and `.OUT.<pid>.tmp` from a killed `export` go at the next start of the same writer."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    stale_cat = out / f".cat-5.png.{dead}.abcd1234.tmp"
    stale_cat.write_bytes(b"half a cat")
    foreign = out / ".notes.txt.tmp"
    foreign.write_bytes(b"someone else's")
    cache = locations.cache_dir() / "images"
    cache.mkdir(parents=True)
    stale_cache = cache / f".0123.npz.{dead}.efgh5678.tmp"
    stale_cache.write_bytes(b"x" * 1000)
    data = write_images(tmp_path / "cats", count=4)
    assert invoke("sample", "--out", out, "-n", 1, "--steps", 2, "--seed", 1, "--device", "cpu").exit_code == 0
    assert not stale_cat.exists() and foreign.exists()
    assert invoke("train", "--data", data, "--preset", "tiny", "--steps", 1, "--batch-size", 2, "--device", "cpu").exit_code == 0
    assert not stale_cache.exists() and not list(cache.glob(".*.tmp"))
    stale_export = tmp_path / f".small.safetensors.{dead}.ijkl9012.tmp"
    stale_export.write_bytes(b"half the weights")
    exported = invoke("export", "--checkpoint", runs.checkpoint_path("tiny-cats"), "--out", tmp_path / "small.safetensors")
    assert exported.exit_code == 0 and not stale_export.exists() and (tmp_path / "small.safetensors").is_file()


def test_plain_messages(kittyterm_home, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("eval", "--reference", empty)
    assert result.exit_code == 1 and "reference folder" in result.output and "holds no images" in result.output
    assert "unexpected" not in result.output
    data = write_images(tmp_path / "cats", count=2)
    result = invoke("train", "--data", data, "--lr", "nan")
    assert result.exit_code == 2 and "must be a number above 0 and at most 1, not nan" in result.output
