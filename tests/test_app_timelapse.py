"""Pilot tests of the learning timelapse in the app: the strip in the training panel follows the
run's frames (drawn by the same policy as `kittyterm train`), from step 0 on the left to the
newest on the right, and a reopened app shows the frames the run kept."""

from __future__ import annotations

import asyncio

import numpy as np

from kittyterm.jobs.timelapse import frame_paths, frames_dir
from kittyterm.widgets.timelapse import TimelapseStrip, strip_layout
from tests.test_app_support import (  # noqa: F401  (fixtures)
    data_folder,
    home,
    make_app,
    one_torch_thread,
    screen_text,
    tap,
    wait_for,
    wait_until_exited,
)


def kept_steps(run: str) -> list[int]:
    return [step for step, _ in frame_paths(frames_dir(run))]


def test_the_strip_follows_training_and_a_reopened_app_shows_the_kept_frames(home, data_folder, one_torch_thread):
    """Training in the app draws frames (step 0 first, then at every checkpoint and on a pause)
    into the run's timelapse folder and into the strip, oldest on the left, newest on the right;
    the next launch shows them before training starts, and resuming adds to them.
    Seen to catch: the frames of a reopened run not shown until training resumed."""

    async def first() -> list[int]:
        app = make_app(data_folder, session={"checkpoint_every_seconds": 0.2})
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.main_screen
            strip = screen.query_one(TimelapseStrip)
            assert not strip.display  # nothing drawn yet: no strip
            await tap(pilot, "space")
            await wait_for(pilot, lambda: len(strip.steps) >= 3, timeout=120)
            await tap(pilot, "space")  # pause: the run as it is left gets a frame
            await wait_for(pilot, lambda: app.session.state == "paused" and "Paused at step" in app.main_screen.status.text)
            paused_at = app.session.trainer.step_count
            await wait_for(pilot, lambda: paused_at in strip.steps, timeout=120)
            await pilot.pause(0.1)
            assert strip.display and strip.steps[0] == 0 and strip.steps == sorted(strip.steps)
            assert strip.shown_steps[0] == 0 and strip.shown_steps[-1] == strip.steps[-1] == paused_at
            assert f"step 0 → {paused_at:,} · {len(strip.steps)} frames" in screen_text(screen, "#timelapse-caption")
            run = app.session.training.run_name
            await wait_for(pilot, lambda: kept_steps(run) == strip.steps)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return strip.steps

    steps = asyncio.run(first())

    async def second() -> None:
        app = make_app(data_folder, session={"checkpoint_every_seconds": 0.2})
        async with app.run_test(size=(100, 30)) as pilot:
            strip = app.main_screen.query_one(TimelapseStrip)
            await wait_for(pilot, lambda: strip.steps == steps)  # shown before any training
            assert strip.display
            await tap(pilot, "space")
            await wait_for(pilot, lambda: strip.steps[-1] > steps[-1], timeout=120)
            assert strip.steps[: len(steps)] == steps
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(second())


def test_the_strip_spreads_frames_over_the_run_and_fits_its_space():
    """Too many frames for the width: the first and the newest are shown, the rest spread
    between; thumbnails shrink (to 8 px) before fewer than six frames would fit, and as many
    seeds as fit stand one above the other.
    Seen to catch: the newest frames shown instead of step 0 → now."""
    from kittyterm.jobs.timelapse import spread

    assert strip_layout(frames=40, seeds=8, image_size=32, area=(36, 5)) == (8, 4, 1)
    assert strip_layout(frames=3, seeds=8, image_size=32, area=(78, 8)) == (16, 3, 1)
    assert strip_layout(frames=40, seeds=8, image_size=64, area=(78, 20)) == (12, 6, 3)
    assert spread(40, 4) == [0, 13, 26, 39]
    assert spread(3, 6) == [0, 1, 2]
    strip = TimelapseStrip()
    strip.set_frames([(step, np.zeros((8, 32, 32, 3), np.uint8)) for step in (30, 0, 10)])
    strip.add(20, np.zeros((8, 32, 32, 3), np.uint8))
    strip.drop_after(25)
    assert strip.steps == [0, 10, 20]


def test_quitting_after_a_cool_down_and_more_training_ends_every_timelapse_thread(home, data_folder, one_torch_thread, monkeypatch):
    """A cool-down ends a training thread while its timelapse may still draw a frame; space then
    starts another. Quitting must end both. Seen to catch: the first one outlived the app, and the
    process aborted at exit ("terminate called without an active exception", status 134)."""
    import threading
    import time

    import engine.timelapse

    real = engine.timelapse.generate

    def slow(*args, callback, **kwargs):  # a frame takes over 10 s: still being drawn at the end
        def each_step(*step):
            time.sleep(1.0)
            callback(*step)

        return real(*args, callback=each_step, **kwargs)

    monkeypatch.setattr(engine.timelapse, "generate", slow)

    def drawing_threads() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "kittyterm-timelapse"]

    async def scenario() -> list[threading.Thread]:
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count >= 4)
            await tap(pilot, "c")
            await wait_for(pilot, lambda: app.session.state == "cooled down", timeout=120)
            cooled_at = app.session.trainer.step_count
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer.step_count > cooled_at)
            threads = drawing_threads()
            await tap(pilot, "q")
            await wait_until_exited(app)
        return threads

    threads = asyncio.run(scenario())
    assert len(threads) == 2 and not any(thread.is_alive() for thread in threads)
