"""Pilot tests of every binding of the app, driving a real (tiny) trainer and sampler."""

from __future__ import annotations

import asyncio
import json
import os
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
from safetensors import safe_open
from textual.command import CommandList, CommandPalette

from engine import events
from engine.trainer import TrainConfig
from kittyterm import cats, locations, messages, settings
from kittyterm.screens.confirm import ConfirmScreen
from kittyterm.screens.gallery import GalleryScreen
from kittyterm.screens.help import HelpScreen
from kittyterm.screens.main import MainScreen
from kittyterm.widgets.loss_plot import LossPlot
from kittyterm.widgets.preview import CatGrid
from tests.test_app_support import (  # noqa: F401  (fixtures)
    data_folder,
    home,
    key_event,
    install_run,
    kept_cats,
    make_app,
    one_torch_thread,
    screen_text,
    synthetic_batch,
    tap,
    tap_and_confirm,
    tiny_run,
    training_step,
    wait_for,
    wait_for_cats,
    wait_until_exited,
    write_gallery,
)


def checkpoint_step(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


def caption_of(app) -> str:
    return screen_text(app.main_screen, "#preview-caption")


def text_of(widget) -> str:
    """The plain text a Static shows (markup, Rich Text and Rich tables alike)."""
    from rich.console import Console

    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    console.print(widget.content)
    return console.export_text()


def status_of(app) -> str:
    return app.main_screen.status.text


def run(coroutine):
    return asyncio.run(coroutine)


# ---------------------------------------------------------------------------- training


def test_space_starts_pauses_and_resumes_training_and_quit_saves(home, data_folder, one_torch_thread):
    async def scenario():
        app = make_app(data_folder)
        async with app.run_test(size=(80, 24)) as pilot:
            session, screen = app.session, app.main_screen
            plot = screen.query_one(LossPlot)
            await tap(pilot, "space")
            assert session.state in ("loading", "running")
            await wait_for(pilot, lambda: len(plot.losses) >= 2)
            assert screen.stats.state == "running" and screen.stats.step >= 2
            assert screen.stats.images == 16

            await tap(pilot, "space")  # pause: the thread saves a checkpoint
            assert session.state == "paused"
            await wait_for(pilot, lambda: "Paused at step" in status_of(app))
            path = session.training.checkpoint_path
            assert path.is_file() and checkpoint_step(path) == session.trainer.step_count
            paused_at = session.trainer.step_count
            await pilot.pause(0.3)
            assert session.trainer.step_count == paused_at  # really paused

            await tap(pilot, "space")  # resume
            assert session.state == "running"
            await wait_for(pilot, lambda: session.trainer.step_count > paused_at)

            began = time.monotonic()
            await tap(pilot, "q")
            took = await wait_until_exited(app)
        assert took < 20  # one training step and a save; generous for a loaded machine
        assert session.busy_threads == []
        assert checkpoint_step(path) == session.trainer.step_count
        assert len(plot.losses) <= session.trainer.step_count
        assert time.monotonic() - began < 30

    run(scenario())


def test_ctrl_c_during_training_stops_cleanly_and_reopening_resumes(home, data_folder, one_torch_thread):
    async def first():
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count >= 2)
            began = time.monotonic()
            app.post_message(key_event("ctrl+c"))
            await wait_until_exited(app)
            stopped = time.monotonic() - began
        return app.session, stopped

    session, stopped = asyncio.run(first())
    assert stopped < 20, f"quitting took {stopped:.1f} s"  # one training step and a save
    assert session.busy_threads == []
    steps = session.trainer.step_count
    losses = list(session.trainer.history.losses)
    assert checkpoint_step(session.training.checkpoint_path) == steps

    async def second():
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            plot = app.main_screen.query_one(LossPlot)
            await wait_for(pilot, lambda: len(plot.losses) == steps)  # history shown before training
            assert plot.losses == losses
            assert "press space to resume" in status_of(app)
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count > steps)
            assert app.session.trainer.history.losses[:steps] == losses
            assert plot.losses[:steps] == losses
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(second())


def test_ui_stays_responsive_while_a_tiny_model_trains(home, data_folder, one_torch_thread):
    async def scenario():
        app = make_app(data_folder)
        latencies = []
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count >= 1)
            screen = app.main_screen
            steps_before = app.session.trainer.step_count
            for _ in range(15):
                before = screen.show_x0
                began = time.perf_counter()
                app.post_message(key_event("x"))  # as the terminal driver delivers a key
                while screen.show_x0 is before:
                    await asyncio.sleep(0.001)
                latencies.append(time.perf_counter() - began)
                await asyncio.sleep(0.1)
            assert app.session.training.thread.is_alive()
            assert app.session.trainer.step_count > steps_before  # it trained meanwhile
            await tap(pilot, "q")
            await wait_until_exited(app)
        return latencies

    latencies = asyncio.run(scenario())
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies


def test_space_trains_the_run_the_app_shows_even_if_another_trained_on_the_folder_since(home, data_folder, one_torch_thread):
    """Seen to catch: space opened the folder's newest run while the panel, curve and film strip
    still showed the run the app had opened with."""
    import os

    from typer.testing import CliRunner

    from kittyterm import runs
    from kittyterm.cli import app as cli

    for name, steps in (("other", 1), ("shown", 2)):
        trained = CliRunner().invoke(cli, ["train", "--data", str(data_folder), "--preset", "tiny", "--run", name, "--steps", str(steps), "--batch-size", "4", "--device", "cpu"])
        assert trained.exit_code == 0, trained.output

    async def scenario():
        app = make_app(data_folder, preset=None)
        async with app.run_test() as pilot:
            plot = app.main_screen.query_one(LossPlot)
            await wait_for(pilot, lambda: len(plot.losses) == 2)  # the newest run of the folder: "shown"
            assert app.session.training.run_name == "shown"
            later = runs.checkpoint_path("shown").stat().st_mtime + 10
            os.utime(runs.checkpoint_path("other"), (later, later))  # now "other" trained on the folder last
            await tap(pilot, "space")
            await wait_for(pilot, lambda: training_step(app) is not None and training_step(app) > 2)
            assert app.session.training.run.name == "shown" and plot.losses[:2] == app.session.trainer.history.losses[:2]
            await tap(pilot, "q")
            await wait_until_exited(app)
        assert checkpoint_step(runs.checkpoint_path("other")) == 1

    run(scenario())


def test_budget_key_cycles_and_is_remembered(home, data_folder):
    async def scenario():
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            await pilot.press("b")
            assert app.session.training.budget == ("steps", 1000)
            assert "1,000 steps" in status_of(app)
            await pilot.press("b")
            assert app.session.training.budget == ("steps", 5000)

    run(scenario())
    assert settings.load().budget == ("steps", 5000)


def test_step_budget_finishes_training(home, data_folder, one_torch_thread):
    async def scenario():
        app = make_app(data_folder, budget=("steps", 1000))
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.training.thread is not None and app.session.trainer.step_count >= 1)
            app.session.training.set_budget(("steps", app.session.trainer.step_count + 1))  # reach the budget soon
            await wait_for(pilot, lambda: app.session.state == "finished")
            await wait_for(pilot, lambda: "Budget reached" in status_of(app))
            await tap(pilot, "space")  # still at the budget: explain, do not start
            await wait_for(pilot, lambda: "Budget of" in status_of(app))
            assert app.session.state == "finished"
            assert app.main_screen.stats.eta_seconds() is not None

    run(scenario())


def test_eta_counts_down_a_budget_until_a_cool_down_ends_the_run_early():
    """Seen to catch: "ETA 15h 32m" beside a run that a cool-down had stopped."""
    from kittyterm.session.state import TrainingState
    from kittyterm.widgets.stats import StatsPanel, TrainingStats

    stats = TrainingStats(state=TrainingState.RUNNING, step=1000, budget=("steps", 5000), images_per_second=32.0, batch_size=32)
    assert "ETA 1h 06m" in StatsPanel.render_stats(stats).plain
    stats.state = TrainingState.COOLED_DOWN
    assert "ETA —" in StatsPanel.render_stats(stats).plain


def test_c_cools_down_to_the_floor_then_stops_and_space_trains_on(home, data_folder, one_torch_thread):
    """Seen to catch: the app's thread not following the budget (after the cool-down, space
    trained on at the floor rate)."""

    async def scenario():
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            await tap(pilot, "c")
            await wait_for(pilot, lambda: "press space first" in status_of(app))
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.trainer is not None and app.session.trainer.step_count >= 12)
            await tap(pilot, "c")
            await wait_for(pilot, lambda: app.session.state == "cooled down", timeout=120)
            trainer = app.session.trainer
            step, config = trainer.step_count, trainer.config
            warmed_up = config.lr * min(1.0, step / config.warmup_steps)  # the open-ended rate of the last step
            ended = (step, trainer.horizon, trainer.learning_rate(step - 1) / warmed_up)
            await wait_for(pilot, lambda: "Cooled down" in status_of(app))
            assert "■ cooled down" in screen_text(app.main_screen, "#stats")  # seen: "■ budget reached" beside a budget not reached
            await tap(pilot, "space")  # trains on, open-ended again
            await wait_for(pilot, lambda: trainer.step_count > ended[0])
            reopened = trainer.horizon
            await tap(pilot, "q")
            await wait_until_exited(app)
        return ended, reopened

    (step, horizon, last_lr), reopened = run(scenario())
    assert step == horizon >= 15  # a quarter more than the 12+ steps before c
    assert last_lr == pytest.approx(TrainConfig.min_lr_ratio)
    assert reopened == math.inf


def test_a_run_that_lost_its_data_order_is_refused_until_started_afresh(home, synthetic_folder, trained_tiny, one_torch_thread):
    from engine.checkpoint import read_checkpoint, save_checkpoint

    tensors, metadata = read_checkpoint(trained_tiny.checkpoint)
    path = install_run(trained_tiny.checkpoint, "tiny-synthetic")
    save_checkpoint(path, {k: v for k, v in tensors.items() if not k.startswith("batches.")}, metadata)

    async def scenario():
        app = make_app(synthetic_folder)
        async with app.run_test(size=(100, 30)) as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: "lacks its data order" in status_of(app))
            assert "start the run afresh" in status_of(app) and training_step(app) is None
            assert checkpoint_step(path) == trained_tiny.steps  # refused, not touched
            plot, screen = app.main_screen.query_one(LossPlot), app.main_screen
            await wait_for(pilot, lambda: len(plot.losses) == trained_tiny.steps and screen.stats.checkpoint)  # the old run, shown at launch
            await tap_and_confirm(pilot, "F")
            assert plot.losses == [] and screen.stats.checkpoint == "" and screen.stats.step == 0  # seen: the old run's figures beside the new one
            await wait_for(pilot, lambda: (training_step(app) or 0) >= 1)
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(scenario())
    moved = [p for p in locations.runs_dir().iterdir() if p.name.startswith("tiny-synthetic.")]
    assert len(moved) == 1 and checkpoint_step(moved[0] / "checkpoint.safetensors") == trained_tiny.steps
    assert 1 <= checkpoint_step(path) < trained_tiny.steps  # a new run in its place


def test_an_unreadable_checkpoint_is_reported_at_launch_and_f_starts_afresh(home, synthetic_folder, trained_tiny, one_torch_thread):
    """Seen to catch: "step 0, saved not yet, press space to train" beside a cut checkpoint, whose
    error came only after space, with the way out cut off the end of the status line."""
    path = install_run(trained_tiny.checkpoint, "tiny-synthetic")
    path.write_bytes(path.read_bytes()[:3000])

    async def scenario():
        app = make_app(synthetic_folder)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: "cannot be resumed" in status_of(app))
            assert "Run tiny-synthetic cannot be resumed: F starts it afresh" in screen_text(app.main_screen, "#status")
            assert "not a readable safetensors" in status_of(app) and app.main_screen.status.level == "warning"
            await tap_and_confirm(pilot, "F")
            await wait_for(pilot, lambda: (training_step(app) or 0) >= 1)
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(scenario())
    assert 1 <= checkpoint_step(path)


# ---------------------------------------------------------------------------- errors


def test_errors_show_in_the_status_line_and_never_crash(home, tmp_path, monkeypatch):
    from kittyterm import locations

    monkeypatch.setattr(locations, "shipped_model", lambda: tmp_path / "not-installed.safetensors")

    async def scenario():
        app = make_app(None)
        async with app.run_test() as pilot:
            await pilot.press("space")
            await wait_for(pilot, lambda: "No data folder" in status_of(app))
            assert app.main_screen.status.level == "error"
            await pilot.press("s")  # nothing trained, no shipped model in the test home
            await wait_for(pilot, lambda: "No model to sample from" in status_of(app))
            # engine failures arrive as events on engine threads
            app.session.training.on_event(events.StepSkipped(5, "loss or gradient not finite", 1))
            await wait_for(pilot, lambda: "NaN loss" in status_of(app))
            app.session.training.on_event(events.EngineError("training", "out of memory: try a smaller batch size"))
            await wait_for(pilot, lambda: "out of memory" in status_of(app))
            assert app.is_running

        empty = tmp_path / "empty"
        empty.mkdir()
        app = make_app(empty)
        async with app.run_test() as pilot:
            await pilot.press("space")
            await wait_for(pilot, lambda: "no images in" in status_of(app))
            assert app.session.state == "idle"

        app = make_app(tmp_path / "missing")
        async with app.run_test() as pilot:
            await pilot.press("space")
            await wait_for(pilot, lambda: "does not exist" in status_of(app))

    run(scenario())


# ---------------------------------------------------------------------------- sampling and keeping


def test_sample_shows_every_step_then_keep_cats(tiny_run, one_torch_thread):
    async def scenario():
        app = make_app(None)
        seen_steps = []
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.main_screen
            original = screen.show_frame

            def recording_show_frame():
                if screen.frame is not None:
                    seen_steps.append(screen.frame.step)
                original()

            screen.show_frame = recording_show_frame
            await pilot.press("k")
            assert "Nothing to keep" in status_of(app)
            await tap(pilot, "s")
            await wait_for_cats(pilot)
            total = screen.frame.total
            assert 2 <= total <= 3
            assert seen_steps == sorted(seen_steps) and seen_steps[-1] == total
            grid = screen.query_one(CatGrid)
            assert grid.images.shape == (4, 32, 32, 3)
            assert "cat 1/4 seed 1" in caption_of(app)
            await pilot.press("right")
            assert "cat 2/4 seed 2" in caption_of(app)
            await pilot.press("k")
            assert "Kept cat-2.png" in status_of(app)
            assert "cat 2/4 seed 2 ✓ kept" in caption_of(app)
            for key in ("4", "3", "1", "2"):  # the number keys choose that cat
                await pilot.press(key)
                assert f"cat {key}/4 seed {key}" in caption_of(app), key
            await pilot.press("4", "left", "up")
            assert "cat 1/4 seed 1" in caption_of(app)
            await pilot.press("K")
            assert "Kept 3 cats" in status_of(app)
            await pilot.press("K")
            assert "already in the gallery" in status_of(app)
            shown = grid.images.copy()
        return app, shown

    app, shown = asyncio.run(scenario())
    kept = sorted(p.name for p in locations.gallery_dir().glob("*.png"))
    assert kept == ["cat-1.png", "cat-2.png", "cat-3.png", "cat-4.png"]
    info = cats.read_cat_info(locations.gallery_dir() / "cat-2.png")
    assert info.seed == 2 and info.sampler == "dpm++sde" and info.steps == 3 and len(info.model_sha256) == 64
    assert info.model == f"tiny-cats @ step {tiny_run.steps}"
    assert np.array_equal(kept_cats([1, 2, 3, 4]), shown)  # what was shown is what was kept
    assert tiny_run.distance_from_fresh(shown, [1, 2, 3, 4], "dpm++sde", 3) > 20  # drawn by the trained weights
    assert app.session.busy_threads == []


def test_preview_frames_are_coalesced_never_queued(home):
    async def scenario():
        app = make_app(None)
        async with app.run_test() as pilot:
            posted = []
            session = app.session
            real_post = session.sampling.post
            session.sampling.post = lambda message: (posted.append(message), real_post(message))
            frames = [messages.PreviewFrame(i, 50, synthetic_batch(i), synthetic_batch(i)) for i in range(50)]
            for frame in frames:  # as a fast sampler thread would, faster than the UI takes them
                session.sampling.offer_frame(frame)
            assert sum(isinstance(m, messages.PreviewTick) for m in posted) == 1
            await wait_for(pilot, lambda: app.main_screen.frame is not None)
            assert app.main_screen.frame is frames[-1]  # only the newest frame is drawn
            assert session.sampling.take_frame() is None

    run(scenario())


def test_toggle_x0_switches_the_preview(home):
    async def scenario():
        app = make_app(None)
        async with app.run_test() as pilot:
            screen = app.main_screen
            x_t, x0 = synthetic_batch(0, noise=0.8), synthetic_batch(0)
            app.session.sampling.offer_frame(messages.PreviewFrame(5, 20, x_t, x0))
            await wait_for(pilot, lambda: screen.frame is not None)
            grid = screen.query_one(CatGrid)
            assert grid.images is x_t
            await pilot.press("x")
            assert screen.show_x0 and grid.images is x0
            assert "x₀" in text_of(screen.query_one("#preview-caption"))
            await pilot.press("x")
            assert grid.images is x_t

    run(scenario())


def test_sampling_while_training_draws_from_the_ema_of_that_step(home, synthetic_folder, trained_tiny, one_torch_thread):
    """The cats sampled while training are exactly those of the EMA at the step the app names,
    not of the live weights; training goes on meanwhile.
    Seen to catch: a sampling copy of the live model instead of the EMA."""
    import torch

    from engine.data import load_image_folder
    from engine.generate import generate
    from engine.trainer import Trainer

    install_run(trained_tiny.checkpoint, "tiny-synthetic")  # resumed: a model that predicts something
    seeds = [1, 2, 3, 4]

    async def scenario():
        app = make_app(synthetic_folder, session={"batch_size": None})  # the run keeps its own batch
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: (training_step(app) or 0) >= trained_tiny.steps + 2)
            await tap(pilot, "s")
            await wait_for_cats(pilot)
            sampled_at = training_step(app)
            await wait_for(pilot, lambda: training_step(app) > sampled_at)  # training went on
            await tap(pilot, "K")
            await wait_for(pilot, lambda: "Kept 4 cats" in status_of(app))
            await tap(pilot, "escape")  # nothing to cancel any more: harmless
            await tap(pilot, "s")
            await wait_for(pilot, lambda: "esc cancels" in status_of(app))
            await tap(pilot, "escape")
            await wait_for(pilot, lambda: "Sampling cancelled" in status_of(app))
            await tap(pilot, "q")
            await wait_until_exited(app)
        assert app.session.busy_threads == []

    run(scenario())
    model = cats.read_cat_info(locations.gallery_dir() / "cat-1.png").model
    assert model.startswith("tiny-synthetic EMA @ step ")
    step = int(model.rsplit(" ", 1)[1])
    assert step > trained_tiny.steps

    images = load_image_folder(synthetic_folder, 32, None).images
    replay = Trainer.resume(trained_tiny.checkpoint, images, device="cpu")
    while replay.step_count < step:
        replay.step()
    with torch.no_grad():
        ema_cats = generate(replay.ema.module.eval(), replay.schedule, seeds, "dpm++sde", 3).permute(0, 2, 3, 1).numpy()
        live_cats = generate(replay.model.eval(), replay.schedule, seeds, "dpm++sde", 3).permute(0, 2, 3, 1).numpy()
    kept = kept_cats(seeds)
    assert np.array_equal(kept, ema_cats)
    assert np.abs(kept.astype(int) - live_cats).mean() > 5  # the live weights draw other cats (a planted live copy gives 0)
    assert trained_tiny.distance_from_fresh(kept, seeds, "dpm++sde", 3) > 20


# ---------------------------------------------------------------------------- gallery


def test_gallery_navigation_delete_and_export(home, tmp_path):
    """Seen to catch: deleting a cat left its denoising GIF, which the gallery does not list."""
    from kittyterm.jobs import animation

    folder = locations.gallery_dir()
    write_gallery(folder, 3)
    for seed in (101, 102):
        info, frame = {**cats.read_cat_info(folder / f"cat-{seed}.png").__dict__, "shows": "x_t"}, np.zeros((8, 8, 3), np.uint8)
        animation.save_denoising(folder, f"cat-{seed}", [frame], frame, info)
    other = json.loads(Image.open(folder / "cat-102.gif").info["comment"])
    animation.save_denoising(folder, "cat-101-x0", [frame], frame, {**other, "shows": "x0"})  # named after 101, drawn as 102
    export = tmp_path / "exported"
    settings.update(export_folder=str(export))

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g")
            screen = app.screen
            assert isinstance(screen, GalleryScreen)
            thumbs = screen.thumbs
            assert [p.name for p in thumbs.paths] == ["cat-102.png", "cat-101.png", "cat-100.png"]  # newest first
            assert "seed 102" in text_of(screen.query_one("#cat-info"))
            await pilot.press("right")
            assert thumbs.selected == 1
            assert "seed 101" in text_of(screen.query_one("#cat-info"))
            await pilot.press("left", "left")
            assert thumbs.selected == 0
            await pilot.press("end")
            assert thumbs.selected == 2
            await pilot.press("home")
            await pilot.press("down")  # next row (or last cat)
            assert thumbs.selected == min(thumbs.columns, 2)
            await pilot.press("home", "right")

            await pilot.press("enter")
            assert screen.has_class("-large")
            await pilot.press("enter")
            assert not screen.has_class("-large")

            await pilot.press("e")
            assert (export / "cat-101.png").is_file()
            assert cats.read_cat_info(export / "cat-101.png").seed == 101

            await pilot.press("d")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            assert isinstance(app.screen, GalleryScreen)
            assert (locations.gallery_dir() / "cat-101.png").is_file()

            await pilot.press("d")
            assert "Delete cat-101.png and its denoising GIF (cat-101.gif)?" in text_of(app.screen.query_one("#confirm-question"))
            await pilot.press("y")
            assert not (locations.gallery_dir() / "cat-101.png").exists()
            assert [p.name for p in thumbs.paths] == ["cat-102.png", "cat-100.png"]
            assert "Deleted cat-101.png and its denoising GIF" in screen.query_one("#gallery-status").text
            assert sorted(p.name for p in folder.glob("*.gif")) == ["cat-101-x0.gif", "cat-102.gif"]

            await pilot.press("escape")
            assert app.screen is app.main_screen
            await pilot.press("q")
            await wait_until_exited(app)

    run(scenario())


def test_gallery_reads_cats_saved_by_kittyterm_sample_and_other_pngs(home):
    folder = locations.gallery_dir()
    write_gallery(folder / "2024-01-01", 1)  # a subfolder, as a `sample` run might write (cat-100, older)
    from PIL import Image

    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(folder / "plain.png")
    (folder / ".cat-9.png.123.tmp").write_bytes(b"partial")

    async def scenario():
        app = make_app(None)
        async with app.run_test() as pilot:
            await pilot.press("g")
            assert [p.name for p in app.screen.thumbs.paths] == ["plain.png", "cat-100.png"]  # newest first
            info = screen_text(app.screen, "#cat-info")
            assert "plain.png" in info and "no kittyterm metadata" in info
            await pilot.press("end")
            info = screen_text(app.screen, "#cat-info")
            assert "cat-100.png" in info and "seed 100 · dpm++ · 20 steps" in info and "tiny-cats @ step 500" in info

    run(scenario())


def test_gallery_contact_sheet_reload_delete_key_escape_and_g(home, tmp_path):
    """E saves every cat on one sheet, r reads the folder again, delete asks (escape keeps the
    cat), escape leaves the large view (seen: it left the gallery), and g goes back to the main
    screen."""
    from PIL import Image

    folder = locations.gallery_dir()
    write_gallery(folder, 3)
    export = tmp_path / "exported"
    settings.update(export_folder=str(export))

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g")
            gallery = app.screen
            assert isinstance(gallery, GalleryScreen) and "1/3" in screen_text(gallery, "#gallery-caption")

            await pilot.press("E")
            sheets = list(export.glob("kittyterm-gallery-*.png"))
            assert len(sheets) == 1 and "contact sheet of 3 cats" in gallery.query_one("#gallery-status").text
            sheet = np.asarray(Image.open(sheets[0]))
            assert sheet.shape == (2 + 2 * 66, 2 + 2 * 66, 3)  # 2×2 cells of 64 px with 2-px borders
            for cell, name in enumerate(["cat-102.png", "cat-101.png", "cat-100.png"]):  # newest first
                y, x = 2 + (cell // 2) * 66, 2 + (cell % 2) * 66
                assert np.array_equal(sheet[y : y + 64, x : x + 64], np.asarray(Image.open(folder / name))), name

            added = write_gallery(tmp_path / "more", 4)[3]  # cat-103, the newest
            shutil.copy2(added, folder / added.name)
            assert "1/3" in screen_text(gallery, "#gallery-caption")  # not read again yet
            await pilot.press("r")
            assert "2/4" in screen_text(gallery, "#gallery-caption")  # the same cat stays selected
            assert "cat-102.png" in screen_text(gallery, "#cat-info") and "4 cats" in gallery.query_one("#gallery-status").text
            await pilot.press("home")
            assert "cat-103.png" in screen_text(gallery, "#cat-info")

            await pilot.press("delete")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("escape")
            assert app.screen is gallery and (folder / "cat-103.png").is_file()
            assert "Kept it" in gallery.query_one("#gallery-status").text
            await pilot.press("delete", "y")
            assert not (folder / "cat-103.png").exists() and "1/3" in screen_text(gallery, "#gallery-caption")

            await pilot.press("enter")  # the large view: escape goes back to the thumbnails, not out
            assert gallery.has_class("-large") and "escape: back to the thumbnails" in gallery.query_one("#gallery-status").text
            await pilot.press("escape")
            assert app.screen is gallery and not gallery.has_class("-large")
            await pilot.press("enter", "g")
            assert app.screen is app.main_screen
            await pilot.press("g", "escape")
            assert app.screen is app.main_screen

    run(scenario())


def test_gallery_says_why_a_file_cannot_be_shown_and_its_sheet_leaves_it_out(home, tmp_path):
    """Seen: one truncated PNG in the gallery made E fail ("Could not export: image file is
    truncated"), and a file that is no image was a blank tile without a word."""
    folder = locations.gallery_dir()
    good = write_gallery(folder, 2)
    cut = folder / "cat-7.png"
    cut.write_bytes(good[0].read_bytes()[:200])
    os.utime(cut, (2_000_000_000, 2_000_000_000))  # the newest: selected first
    settings.update(export_folder=str(tmp_path / "exported"))

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("g")
            gallery = app.screen
            assert "cat-7.png" in screen_text(gallery, "#cat-info") and "cannot be shown: corrupt image" in screen_text(gallery, "#cat-info")
            await pilot.press("e")
            assert "cat-7.png cannot be shown (corrupt image" in gallery.query_one("#gallery-status").text  # seen: exported as it was
            await pilot.press("E")
            status = gallery.query_one("#gallery-status").text
            assert "contact sheet of 2 cats" in status and "leaving out cat-7.png (unreadable)" in status, status
            await pilot.press("right")
            assert "cannot be shown" not in screen_text(gallery, "#cat-info")

    run(scenario())
    assert [p.name for p in (tmp_path / "exported").iterdir()][0].startswith("kittyterm-gallery-") and len(list((tmp_path / "exported").iterdir())) == 1


def test_empty_gallery(home):
    async def scenario():
        app = make_app(None)
        async with app.run_test() as pilot:
            await pilot.press("g")
            assert app.screen.query_one("#gallery-empty").display
            await pilot.press("d")
            assert "Nothing to delete" in app.screen.query_one("#gallery-status").text
            await pilot.press("e")
            assert "Nothing to export" in app.screen.query_one("#gallery-status").text

    run(scenario())


# ---------------------------------------------------------------------------- help, palette, run_app


def test_help_screen_lists_every_binding_and_closes_with_f1_q_or_escape(home):
    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = " ".join(text_of(w) for w in app.screen.query("Static"))
            for words in ("Sample cats with the generator settings", "Keep the selected cat", "Delete the selected cat", "Command palette", "Start, pause or resume"):
                assert words in text, words
            for key in ("f1", "q", "escape"):  # q closes the help, it does not quit
                await pilot.press(key)
                assert app.screen is app.main_screen and app.is_running, key
                await pilot.press("question_mark")
                assert isinstance(app.screen, HelpScreen)
            await pilot.press("question_mark")
            assert app.screen is app.main_screen

    run(scenario())


def test_ctrl_q_quits_saving_the_training_state(home, data_folder, one_torch_thread):
    async def scenario():
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: (training_step(app) or 0) >= 2)
            await tap(pilot, "ctrl+q")
            took = await wait_until_exited(app)
        return app, took

    app, took = asyncio.run(scenario())
    assert not app.is_running and took < 20
    checkpoint = locations.runs_dir() / "tiny-cats" / "checkpoint.safetensors"
    assert checkpoint_step(checkpoint) == training_step(app) >= 2


def test_command_palette_runs_actions(home):
    """The palette is generated from the bindings: every key the screen offers now, and no other."""

    def own_commands(screen) -> dict[str, str]:
        return {c.title: c.help for c in app.get_system_commands(screen) if c.help.endswith(")")}

    async def scenario():
        async with app.run_test() as pilot:
            commands = own_commands(app.main_screen)
            expected = {b.description for b in MainScreen.BINDINGS if b.description} | {"Help", "Quit"}
            assert set(commands) == expected - {"Pause", "Resume"}  # space means Train while idle
            assert commands["Keep all"] == "Keep every cat of the batch (K)"
            await pilot.press("g")
            gallery = own_commands(app.screen)
            assert {"Delete", "Export", "Export sheet", "Reload", "Back"} <= set(gallery)
            assert gallery["Delete"] == "Delete the selected cat (asks first) (d / del)"
            await pilot.press("escape")
            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
            for char in "x₀/xₜ":
                await pilot.press(char)
            found = app.screen.query_one(CommandList)
            await wait_for(pilot, lambda: found.option_count == 1)  # the search runs in the background
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.main_screen.show_x0)

    app = make_app(None)
    run(scenario())


def test_run_app_remembers_the_data_folder(home, data_folder, monkeypatch, one_torch_thread):
    from kittyterm import app as app_module

    started = []

    def fake_run(self):
        started.append(self)

    monkeypatch.setattr(app_module.KittytermApp, "run", fake_run)
    app_module.run_app(data_folder, "tiny")
    assert started[-1].session.training.data_folder == data_folder.resolve()
    assert settings.load().data_folder == str(data_folder.resolve())
    app_module.run_app(None, "tiny")
    assert started[-1].session.training.data_folder == data_folder.resolve()
    assert started[-1].graphics is False  # not a terminal, and KITTYTERM_GRAPHICS=halfblock


def test_gallery_uses_textual_image_when_the_terminal_has_graphics(home):
    """With graphics detected (Kitty/Sixel), the large view is a textual-image widget; thumbnails stay half-blocks."""
    write_gallery(locations.gallery_dir(), 2)

    async def scenario():
        app = make_app(None, graphics=True)
        async with app.run_test() as pilot:
            await pilot.press("g")
            from textual_image.widget import Image as GraphicsImage

            image = app.screen.query_one("#cat-graphics", GraphicsImage)
            assert image.image is not None and image.image.size == (64, 64)
            await pilot.press("right")
            assert app.screen.query_one("#cat-graphics", GraphicsImage).image is not None
            assert not app.screen.query("#cat-halfblock")

    run(scenario())


def test_graphics_detection_is_off_when_forced_or_not_a_terminal(monkeypatch):
    from kittyterm.app import detect_graphics

    monkeypatch.setenv("KITTYTERM_GRAPHICS", "halfblock")
    assert detect_graphics("auto") is False
    monkeypatch.delenv("KITTYTERM_GRAPHICS")
    assert detect_graphics("auto") is False  # pytest's stdout is not a terminal


def test_settings_file_is_atomic_and_forgiving(home):
    path = locations.config_file()
    assert settings.load() == settings.Settings()  # no file yet
    settings.remember_data_folder(Path("/some/where/../cats"))
    assert settings.load().data_folder == str(Path("/some/cats").resolve())
    path.write_text('{"data_folder": 5, "budget": ["steps", 7], "graphics": "sixel", "future": {"x": 1}}')
    loaded = settings.load()
    assert loaded.data_folder is None and loaded.budget == ("none", 0) and loaded.graphics == "auto"
    settings.save(loaded)
    assert '"future"' in path.read_text()  # unknown keys survive
    path.write_text("{not json")
    assert settings.load() == settings.Settings()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_rollback_cuts_the_loss_curve_in_order(home, data_folder):
    """After repeated NaNs the engine rolls back to its checkpoint: the curve is cut there, in order."""
    import pytest

    rolled_back = getattr(events, "RolledBack", None)
    if rolled_back is None:
        pytest.skip("this engine has no RolledBack event")

    async def scenario():
        app = make_app(data_folder)
        async with app.run_test() as pilot:
            session, plot = app.session, app.main_screen.query_one(LossPlot)

            def step(n: int, loss: float) -> None:
                session.training.on_event(events.TrainingStep(n, loss, 1e-4, 0.1, 10.0, 1.0))

            for n in range(1, 6):
                step(n, 1.0 / n)
            session.training.on_event(rolled_back(3, 5, 5e-5, "5 steps in a row had a non-finite loss"))
            step(4, 0.4)
            step(5, 0.3)  # all of it before the UI took anything: one tick, applied in order
            await wait_for(pilot, lambda: len(plot.losses) == 5 and plot.losses[-1] == 0.3)
            assert plot.losses == [1.0, 0.5, 1 / 3, 0.4, 0.3]
            await wait_for(pilot, lambda: "went back from step 5 to 3" in status_of(app))

    run(scenario())


def test_loss_curve_is_rebinned_at_once_when_the_terminal_resizes(home):
    """A resize redraws for the new width at once, even right after a throttled draw."""
    from textual_plot import PlotWidget

    losses = list(1 / np.sqrt(np.arange(1, 20_001)))

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            plot = app.main_screen.query_one(LossPlot)
            widget = plot.query_one(PlotWidget)

            def points_for_width() -> int:
                width = max(widget.size.width - widget.margin_left, 30)
                return len(np.arange(1, len(losses) + 1)[:: math.ceil(len(losses) / (2 * width))]) + 1

            def points_drawn() -> int:
                return len(widget._datasets[0].x) if widget._datasets else 0

            await pilot.pause()
            plot.set_losses(losses)
            await wait_for(pilot, lambda: points_drawn() == points_for_width())
            narrow = points_drawn()
            await pilot.resize_terminal(160, 48)
            await pilot.pause()
            assert points_drawn() == points_for_width() > narrow

    run(scenario())


@pytest.mark.parametrize("count", [300, 1])
def test_loss_axis_labels_each_get_a_row_of_their_own(home, count):
    """Seen at 80×24 beside the timelapse strip: a narrow loss range got 8 ticks on a plot 10 rows
    high, so labels were drawn over each other ("0.68" under "0.7" showed as "00.7"); and one
    loss labelled its axis "0.6575" three times."""
    from textual_plot import PlotWidget

    rng = np.random.default_rng(0)
    losses = list(0.6 + 0.04 * rng.standard_normal(count).clip(-1.2, 2.5))

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 18)) as pilot:
            plot = app.main_screen.query_one(LossPlot)
            widget = plot.query_one(PlotWidget)
            formatter = widget._y_formatter
            asked = []
            original = formatter.get_labels_for_ticks

            def recording(ticks):
                asked.append(original(ticks))
                return asked[-1]

            formatter.get_labels_for_ticks = recording
            await pilot.pause()
            plot.set_losses(losses)
            await wait_for(pilot, lambda: bool(widget._datasets) and bool(asked))
            await pilot.pause()
            screen = app.main_screen._compositor.render_strips()
            region = widget.content_region
            lines = [strip.text[region.x : region.x + widget.margin_left] for strip in screen[region.y : region.bottom]]
            shown = [label for label in (line.strip(" ┫┣┃━┏┗") for line in lines) if label]
            assert len(shown) >= 2 and all(label in asked[-1] for label in shown), (shown, asked[-1])
            assert shown == sorted(set(shown), key=float, reverse=True)

    run(scenario())


def test_a_long_status_takes_a_second_line_rather_than_lose_its_path(home):
    """Seen at 100×30: "Saved the denoising (xₜ) of cat 1/4 seed 1898474431 to" and no path."""
    path = "/home/someone/.local/share/kittyterm/gallery/cat-1898474431-denoising-xt.gif"

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.main_screen
            screen.set_status(f"Saved the denoising (xₜ) of cat 1/4 seed 1898474431 to {path}", "success")
            await pilot.pause()
            status = screen.status
            lines = [strip.text for strip in screen._compositor.render_strips()[status.region.y : status.region.bottom]]
            assert status.region.height == 2
            assert path in "".join(line.strip() for line in lines)

    run(scenario())
