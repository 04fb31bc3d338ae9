"""`kittyterm train` draws a timelapse that survives a kill; `kittyterm timelapse` makes a GIF and
a sheet of it, and refuses what cannot work in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kittyterm import cats, runs
from kittyterm.cli import app
from kittyterm.jobs.timelapse import RunFrames, frame_paths, frames_dir, read_frames
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {0: (200, 30, 30), 10: (30, 200, 30), 30: (30, 30, 200)}  # one solid colour per frame


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def run_with_frames(trained_tiny, kittyterm_home):
    """Run `tiny-synthetic` (the latest run) with three frames of 8 solid 32 px cats."""
    folder = runs.run_dir("tiny-synthetic")
    folder.mkdir(parents=True)
    shutil.copyfile(trained_tiny.checkpoint, folder / runs.CHECKPOINT_NAME)
    store = RunFrames(frames_dir("tiny-synthetic"))
    for step, colour in COLOURS.items():
        images = np.empty((8, 3, 32, 32), np.uint8)
        images[:] = np.array(colour, np.uint8)[None, :, None, None]
        store.write(step, images)
    return folder


def test_timelapse_writes_a_gif_with_one_frame_per_kept_step_and_a_sheet(run_with_frames, tmp_path):
    """The GIF has a frame per kept step, in step order, 4 × 2 cats of 64 px (the tiny preset's
    32 px doubled) over the step's label; the sheet has one row per frame.
    Seen to catch: the last frame left out of the GIF; frames out of step order."""
    out = tmp_path / "learn.gif"
    result = invoke("timelapse", "--out", out, "--grid")  # the run defaults to the latest
    assert result.exit_code == 0, result.output
    assert "3 frames of run tiny-synthetic" in result.output
    with Image.open(out) as gif:
        assert gif.n_frames == 3
        assert json.loads(gif.info["comment"]) == {"run": "tiny-synthetic", "timelapse": [0, 10, 30], "count": 8}
        assert gif.size == (4 * (64 + 2) + 2, 2 * (64 + 2) + 2 + 14)
        for index, colour in enumerate(COLOURS.values()):
            gif.seek(index)
            frame = np.asarray(gif.convert("RGB"))
            assert tuple(frame[34, 34]) == colour and tuple(frame[100, 230]) == colour
            assert frame[-8:].max() > 200  # the label
    with Image.open(tmp_path / "learn.png") as sheet:
        assert sheet.size == (64 + 8 * (64 + 2) + 2, 3 * (64 + 2) + 2)
        rows = np.asarray(sheet.convert("RGB"))
    assert [tuple(rows[34 + 66 * i, 100]) for i in range(3)] == list(COLOURS.values())
    assert cats.several_cats_in(tmp_path / "learn.png") == "a timelapse sheet"  # what `eval --images` leaves out

    again = invoke("timelapse", "tiny-synthetic", "--out", out)  # never overwritten
    assert again.exit_code == 1 and "exists" in again.output


def test_timelapse_refuses_in_one_line(run_with_frames, tmp_path):
    """Bad runs, a run without frames and unusable outputs: one `error:` line, exit 1, no file.
    Seen to catch: a run with no frames writing an empty GIF (a traceback from Pillow)."""
    (runs.run_dir("no-frames")).mkdir()
    cases = [
        (["nope"], "no run 'nope' (runs: no-frames, tiny-synthetic)"),
        (["no-frames"], "has no timelapse frames yet"),
        ([str(tmp_path / "missing")], "no run"),
        (["tiny-synthetic", "--out", tmp_path / "learn.png"], "does not end in .gif"),
        (["tiny-synthetic", "--out", tmp_path / "missing" / "learn.gif"], "missing does not exist"),
        (["tiny-synthetic", "--out", tmp_path], "is a folder; --out names the file to write"),
    ]
    for args, words in cases:
        if "--out" not in args:
            args = [*args, "--out", tmp_path / "learn.gif"]
        result = invoke("timelapse", *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("error:") and words in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.gif")) and not list(tmp_path.glob("*.png"))


def test_no_run_at_all_is_one_line(kittyterm_home, tmp_path):
    result = invoke("timelapse", "--out", tmp_path / "learn.gif")
    assert result.exit_code == 1 and "no training run yet" in result.output


def child(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, KITTYTERM_HOME=str(home), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "kittyterm", *args], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_a_killed_training_keeps_its_frames_and_the_next_one_goes_on(synthetic_folder, kittyterm_home, tmp_path):
    """`kittyterm train` SIGKILLed while it draws frames: every frame written before the kill
    reads back whole; the next `train` clears a killed writer's temporary, keeps the old frames
    and adds its own; the GIF has them all.
    Seen to catch: the killed writer's temporary left in the timelapse folder for ever."""
    args = ["train", "--data", synthetic_folder, "--preset", "tiny", "--batch-size", "4", "--device", "cpu", "--timelapse-every", "2", "--checkpoint-every", "3"]
    folder = frames_dir("tiny-synthetic")
    process = child([*args, "--steps", "100000"], kittyterm_home, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 240
        while len(frame_paths(folder)) < 3:
            assert process.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no frames within 240 s"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    kept = frame_paths(folder)
    frames = read_frames(folder)
    assert len(kept) >= 3 and [frame.step for frame in frames] == [step for step, _ in kept]
    assert frames[0].step == 0 and all(frame.images.shape == (8, 32, 32, 3) for frame in frames)
    before = {path.name: path.read_bytes() for _, path in kept}
    leftover = folder / f".step-999999.png.{process.pid}.killed.tmp"  # as a kill mid-write leaves it
    leftover.write_bytes(before[kept[0][1].name][:100])
    os.utime(leftover, (time.time() - 60, time.time() - 60))

    process = child([*args, "--steps", str(kept[-1][0] + 4)], kittyterm_home, tmp_path / "second.log")  # past the last frame
    assert process.wait(240) == 0, (tmp_path / "second.log").read_text()
    assert not leftover.exists()
    after = frame_paths(folder)
    assert {path.name: path.read_bytes() for _, path in after if path.name in before} == before
    assert len(after) > len(kept)

    result = invoke("timelapse", "--out", tmp_path / "learn.gif")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "learn.gif") as gif:
        assert gif.n_frames == len(after)


@pytest.mark.parametrize("flag", [[], ["--no-timelapse"]], ids=["default", "no-timelapse"])
def test_train_draws_the_timelapse_unless_told_not_to(synthetic_folder, kittyterm_home, single_torch_thread, flag):
    """Seen to catch: `--no-timelapse` read the wrong way round (frames drawn anyway, or never)."""
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--batch-size", 4, "--device", "cpu", "--steps", 2, *flag)
    assert result.exit_code == 0, result.output
    frames = read_frames(frames_dir("tiny-synthetic"))
    if flag:
        assert frames == [] and "timelapse:" not in result.output
    else:
        assert [frame.step for frame in frames][:1] == [0] and "kittyterm timelapse tiny-synthetic" in result.output
