"""SVG snapshots (pytest-textual-snapshot) of the main screen, the preview mid-sampling, the
timelapse strip, the generator dialog, the gallery and the help.

Half-blocks are forced (the app never uses textual-image unless told the terminal has graphics),
and everything shown is deterministic: synthetic frames and losses are pushed into the app, no
threads run, and no clock or temporary path appears on screen. Update with
`pytest tests/test_app_snapshots.py --snapshot-update` and look at the report before committing.
"""

from __future__ import annotations

import math

import numpy as np

from kittyterm import locations, messages
from kittyterm.widgets.loss_plot import LossPlot
from tests.test_app_support import (  # noqa: F401  (fixtures)
    data_folder,
    home,
    make_app,
    synthetic_batch,
    wait_for,
    write_gallery,
)


def loss_curve(steps: int = 600) -> list[float]:
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    return list(0.06 + 0.9 * np.exp(-t / 60) + 0.02 * np.abs(rng.normal(size=steps)))


async def show_training_and_preview(pilot) -> None:
    app = pilot.app
    screen = app.main_screen
    await wait_for(pilot, lambda: bool(screen.query(LossPlot)))
    plot = screen.query_one(LossPlot)
    losses = loss_curve()
    plot.set_losses(losses)
    stats = screen.stats
    stats.state, stats.step, stats.epoch = "running", len(losses), 150.0
    stats.loss, stats.lr, stats.images_per_second, stats.batch_size = losses[-1], 5e-4, 123.0, 64
    stats.checkpoint = "12:00:00 (step 500)"
    screen.show_stats()
    x0 = synthetic_batch(0)
    x_t = synthetic_batch(0, noise=0.55)
    app.session.sampling.offer_frame(messages.PreviewFrame(7, 20, x_t, x0))
    await wait_for(pilot, lambda: screen.frame is not None)
    screen.set_status("Sampling 4 cats from tiny-cats EMA @ step 600 (dpm++, 20 steps; esc cancels)")
    await pilot.pause()
    plot.draw()
    await pilot.pause()


def test_main_screen(snap_compare, home, data_folder):
    assert snap_compare(make_app(data_folder), terminal_size=(80, 24))


def test_preview_mid_sampling(snap_compare, home, data_folder):
    assert snap_compare(make_app(data_folder), terminal_size=(80, 24), run_before=show_training_and_preview)


def test_preview_mid_sampling_large_terminal(snap_compare, home, data_folder):
    assert snap_compare(make_app(data_folder), terminal_size=(160, 48), run_before=show_training_and_preview)


def timelapse_frames(count: int = 12) -> list:
    """Synthetic frames: noise clearing into two rows of four cats, one frame per 100 steps."""
    from pathlib import Path

    from kittyterm.jobs.timelapse import Frame

    frames = []
    for i in range(count):
        noise = 1 - i / (count - 1)
        cats = np.concatenate([synthetic_batch(0, noise=noise), synthetic_batch(4, noise=noise)])
        frames.append(Frame(i * 100, cats, Path(f"step-{i * 100:06d}.png")))
    return frames


async def show_timelapse(pilot) -> None:
    from kittyterm.widgets.timelapse import TimelapseStrip

    await show_training_and_preview(pilot)
    screen = pilot.app.main_screen
    screen.post_message(messages.TimelapseLoaded(timelapse_frames()))
    await wait_for(pilot, lambda: len(screen.query_one(TimelapseStrip).steps) == 12)
    await pilot.pause()


def test_timelapse_strip(snap_compare, home, data_folder):
    assert snap_compare(make_app(data_folder), terminal_size=(80, 24), run_before=show_timelapse)


def test_timelapse_strip_large_terminal(snap_compare, home, data_folder):
    assert snap_compare(make_app(data_folder), terminal_size=(160, 48), run_before=show_timelapse)


def test_gallery(snap_compare, home):
    write_gallery(locations.gallery_dir(), 5)

    async def open_gallery(pilot) -> None:
        await pilot.press("g", "right")
        await pilot.pause()

    assert snap_compare(make_app(None), terminal_size=(80, 24), run_before=open_gallery)


def test_generator_dialog(snap_compare, home):
    assert snap_compare(make_app(None), terminal_size=(80, 24), press=["o"])


def test_help_screen(snap_compare, home):
    assert snap_compare(make_app(None), terminal_size=(80, 24), press=["question_mark"])


def test_loss_curve_is_log_scaled():
    from kittyterm.widgets.loss_plot import LogAxisFormatter, StepAxisFormatter, smooth

    formatter = LogAxisFormatter()
    ticks = formatter.get_ticks(math.log10(0.04), math.log10(1.5))
    assert formatter.get_labels_for_ticks(ticks) == ["0.05", "0.1", "0.2", "0.5", "1"]
    narrow = formatter.get_ticks(math.log10(0.3), math.log10(0.9))
    assert formatter.get_labels_for_ticks(narrow) == ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    labels = formatter.get_labels_for_ticks(formatter.get_ticks(math.log10(0.991), math.log10(1.02)))
    assert len(set(labels)) == len(labels) >= 2
    steps = StepAxisFormatter()
    steps.max_ticks = 4
    assert steps.get_labels_for_ticks(steps.get_ticks(1, 12_345)) == ["5k", "10k"]
    values = [1.0, 0.5, 0.25]
    expected = smooth(np.log10(values))
    assert np.allclose(expected[0], 0.0) and expected[-1] < expected[1] < 0
