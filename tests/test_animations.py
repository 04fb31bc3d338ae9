"""`kittyterm sample --gif`: each cat's denoising as an animated GIF, with the shared trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kittyterm.cats import gif_frame, read_cat_info
from kittyterm.cli import app
from kittyterm.jobs import animation
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

STEPS = 4
SCALE = 8  # the tiny model's 32 px cats, enlarged to 256 px


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def gif_frames(path) -> tuple[list[np.ndarray], list[int], dict]:
    """Every frame of a GIF at the model's size (the enlargement undone), the durations, the metadata."""
    with Image.open(path) as gif:
        assert gif.size == (32 * SCALE, 32 * SCALE) and gif.info["loop"] == 0
        info = json.loads(gif.info["comment"])
        frames, durations = [], []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB"))[::SCALE, ::SCALE].astype(int))
            durations.append(gif.info["duration"])
    return frames, durations, info


def expected_frames(trained_tiny, seeds: list[int], x0: bool) -> list[np.ndarray]:
    """The first seed's starting noise and image after every step, from `generate` itself (with
    the batch `sample` drew), in the GIF's colours (the last frame, held, in finer ones)."""
    from engine.checkpoint import load_model
    from engine.generate import generate, starting_noise

    loaded = load_model(trained_tiny.checkpoint, "cpu")
    frames = [animation.hwc_uint8(starting_noise(seeds, 32))[0]]
    generate(loaded.model, loaded.schedule, seeds, "dpm++sde", STEPS,
             callback=lambda i, x_t, x0_: frames.append(animation.hwc_uint8(x0_ if x0 else x_t)[0]))
    return [np.asarray(gif_frame(frame, held=i == len(frames) - 1).convert("RGB")).astype(int) for i, frame in enumerate(frames)]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal but for a GIF's 256 colours (a noisy cat of 32×32 pixels has about 1000)."""
    return np.abs(a - b).mean() < 10


def test_sample_gif_shows_every_step_and_holds_the_cat(trained_tiny, tmp_path):
    """Seen to catch: the finished cat not held (every frame 80 ms), and the starting noise left out."""
    out = tmp_path / "cats"
    result = invoke("sample", "--out", out, "-n", 2, "--steps", STEPS, "--seed", 7, "--gif", "--checkpoint", trained_tiny.checkpoint)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cat-7.gif", "cat-7.png", "cat-8.gif", "cat-8.png"]
    frames, durations, info = gif_frames(out / "cat-7.gif")
    assert len(frames) == STEPS + 1  # the starting noise, then one frame per step, the last held
    assert durations == [animation.FRAME_MS] * STEPS + [animation.HOLD_MS]
    cat = np.asarray(Image.open(out / "cat-7.png")).astype(int)
    assert close(frames[-1], cat)
    for index, (frame, expected) in enumerate(zip(frames, expected_frames(trained_tiny, [7, 8], x0=False))):
        assert np.array_equal(frame, expected), index
    png = read_cat_info(out / "cat-7.png")
    assert info == {**png.__dict__, "shows": "x_t"} and info["seed"] == 7 and len(info["model_sha256"]) == 64
    assert not close(gif_frames(out / "cat-8.gif")[0][-1], cat)  # each cat its own GIF


def test_sample_gif_x0_shows_the_predicted_clean_image(trained_tiny, tmp_path):
    """Seen to catch: --x0 ignored (the GIF showing x_t)."""
    runs = {}
    for what in ("x_t", "x0"):
        out = tmp_path / what
        flags = ["--x0"] if what == "x0" else []
        result = invoke("sample", "--out", out, "-n", 1, "--steps", STEPS, "--seed", 3, "--gif", *flags, "--checkpoint", trained_tiny.checkpoint)
        assert result.exit_code == 0, result.output
        runs[what] = gif_frames(out / ("cat-3-x0.gif" if what == "x0" else "cat-3.gif"))
    x_t, x0 = runs["x_t"][0], runs["x0"][0]
    assert len(x0) == STEPS + 1 and runs["x0"][2]["shows"] == "x0"
    assert all(np.array_equal(frame, expected) for frame, expected in zip(x0, expected_frames(trained_tiny, [3], x0=True)))
    assert np.abs(x_t[1] - x0[1]).mean() > 20  # after the first step: a noisy image, and a guess at the cat
    assert np.array_equal(x0[-1], x_t[-1]) and np.array_equal(x0[0], x_t[0])  # both start from the noise and end on the cat


def test_x0_without_gif_is_an_error_and_writes_nothing(tmp_path):
    """Seen to catch: --x0 alone accepted (and silently ignored)."""
    result = invoke("sample", "--out", tmp_path / "cats", "-n", 1, "--x0")
    assert result.exit_code == 1 and "add --gif" in result.output
    assert not (tmp_path / "cats").exists()


@pytest.mark.parametrize("steps,recorded", [(4, 5), (100, 101), (1000, 101), (250, 85)])
def test_long_runs_record_a_bounded_number_of_frames(steps, recorded):
    """Seen to catch: every one of ddpm's 1000 steps kept (1001 frames per cat)."""
    assert animation.recorded_frames(steps) == recorded
    recorder = animation.FrameRecorder(np.zeros((2, 1, 1, 3), np.uint8), steps)
    for step in range(steps):
        recorder.add(step, np.full((2, 1, 1, 3), step % 256, np.uint8))
    assert len(recorder.frames) == recorded and recorder.frames[-1][0, 0, 0, 0] == (steps - 1) % 256
    assert animation.cats_at_once(64, 1000, (3, 64, 64)) * recorded * 3 * 64 * 64 <= animation.FRAME_BUDGET
    assert animation.cats_at_once(4096, 1000, (3, 64, 64)) < 4096
