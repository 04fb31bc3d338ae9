"""Starting a run from exported weights: `kittyterm train --init`, and the app's start dialog.

The engine side (`Trainer.initialised_from`) is tested in test_init.py; these tests hold the
policy: which run a fine-tune is, what it records, how it resumes, and the one-line errors."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from typer.testing import CliRunner

from engine.checkpoint import read_checkpoint, split_prefix
from kittyterm import locations, runs
from kittyterm.cli import app as cli
from kittyterm.jobs.training import FINE_TUNE_LR, SHIPPED_INIT, TrainingOptions, open_training
from tests.test_app_support import make_app, one_torch_thread, tap, wait_for, wait_until_exited, write_images  # noqa: F401


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ema_weights(path):
    return {k: v.float() for k, v in split_prefix(read_checkpoint(path)[0], "ema").items()}


@pytest.fixture
def cats(tmp_path):
    return write_images(tmp_path / "cats", count=8)


def test_init_starts_a_recorded_run_from_the_file_and_resumes_it(trained_tiny, cats):
    """Seen to catch: the CLI building a fresh network and ignoring --init (the first checkpoint
    then differs from the file), and a second run with --init starting over instead of resuming."""
    result = invoke("train", "--data", cats, "--init", trained_tiny.weights, "--steps", 1, "--batch-size", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "new run tiny-cats" in result.output and f"fine-tuning from {trained_tiny.weights}" in result.output
    assert "predicts ε" in result.output  # the file's prediction, not a new run's v
    checkpoint = runs.checkpoint_path("tiny-cats")
    tensors, metadata = read_checkpoint(checkpoint)
    assert json.loads(metadata["train_config"])["lr"] == FINE_TUNE_LR
    assert json.loads(metadata["init_from"])["path"] == str(trained_tiny.weights)
    assert runs.run_info("tiny-cats")["init"] == str(trained_tiny.weights.resolve())
    start, after = ema_weights(trained_tiny.weights), split_prefix(tensors, "model")
    moved = max(float((after[k] - v).abs().max()) for k, v in start.items())
    assert 0 < moved < 0.05  # one step at the fine-tuning rate: moved, but still the file's network

    again = invoke("train", "--data", cats, "--init", trained_tiny.weights, "--steps", 2, "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert "resuming run tiny-cats at step 1" in again.output
    plain = invoke("train", "--data", cats, "--steps", 3, "--device", "cpu")  # the folder's run is found again
    assert plain.exit_code == 0 and "resuming run tiny-cats at step 2" in plain.output, plain.output
    assert json.loads(read_checkpoint(checkpoint)[1]["schedule_config"])["prediction"] == "eps"  # resumed as trained


def test_a_fine_tune_stopped_before_its_first_save_goes_on_as_a_fine_tune(trained_tiny, cats):
    """Seen to catch: a run whose fine-tune was chosen (in the app: space, f) and stopped before
    its first checkpoint starting from scratch on the next start, its run.json still saying
    where it started from."""
    open_training(TrainingOptions(data=cats, init=str(trained_tiny.weights), device="cpu")).close()
    assert not runs.checkpoint_path("tiny-cats").exists() and runs.run_info("tiny-cats")["init"]

    result = invoke("train", "--data", cats, "--steps", 1, "--batch-size", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"fine-tuning from {trained_tiny.weights.resolve()}" in result.output and "predicts ε" in result.output
    assert json.loads(read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]["init_from"])["path"] == str(trained_tiny.weights.resolve())


def test_a_fine_tune_whose_weights_are_gone_says_how_to_start_afresh(trained_tiny, cats, tmp_path):
    weights = tmp_path / "moved.safetensors"
    weights.write_bytes(trained_tiny.weights.read_bytes())
    open_training(TrainingOptions(data=cats, init=str(weights), device="cpu")).close()
    weights.unlink()
    result = invoke("train", "--data", cats, "--steps", 1, "--device", "cpu")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"run tiny-cats was to be fine-tuned from {weights}, which is gone" in result.output and "--fresh" in result.output

    fresh = invoke("train", "--data", cats, "--steps", 1, "--batch-size", 2, "--device", "cpu", "--fresh")
    assert fresh.exit_code == 0 and "predicts v" in fresh.output, fresh.output  # from scratch, as asked
    assert "init" not in runs.run_info("tiny-cats") and "init_from" not in read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]


def test_init_from_another_file_refuses_to_overwrite_a_run(trained_tiny, cats):
    assert invoke("train", "--data", cats, "--preset", "tiny", "--steps", 1, "--batch-size", 2, "--device", "cpu").exit_code == 0
    before = runs.checkpoint_path("tiny-cats").read_bytes()
    result = invoke("train", "--data", cats, "--init", trained_tiny.weights, "--steps", 1, "--device", "cpu")
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "already has a checkpoint (trained from scratch)" in result.output and "--fresh" in result.output
    assert runs.checkpoint_path("tiny-cats").read_bytes() == before
    fresh = invoke("train", "--data", cats, "--init", trained_tiny.weights, "--steps", 1, "--fresh", "--batch-size", 2, "--device", "cpu")
    assert fresh.exit_code == 0 and "fine-tuning from" in fresh.output, fresh.output


@pytest.mark.parametrize(
    ("init", "extra", "message"),
    [
        ("missing.safetensors", [], "--init {dir}/missing.safetensors: no such file"),
        ("garbage.safetensors", [], "cannot start from {dir}/garbage.safetensors: not a readable safetensors file"),
        ("WEIGHTS", ["--preset", "kitty-64"], "holds a tiny model, not the --preset kitty-64 asked for"),
        ("WEIGHTS", ["--cuda-graph"], "--cuda-graph captures the step on one CUDA GPU, not on cpu"),
    ],
)
def test_a_bad_init_is_one_line_and_creates_no_run(trained_tiny, cats, tmp_path, init, extra, message):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    path = trained_tiny.weights if init == "WEIGHTS" else tmp_path / init
    result = invoke("train", "--data", cats, "--init", path, "--steps", 1, "--device", "cpu", *extra)
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ") and result.output.strip().count("\n") == 0, result.output
    assert message.format(dir=tmp_path) in result.output
    assert not locations.runs_dir().exists() or not any(locations.runs_dir().iterdir())


def test_init_kitty_64_fine_tunes_the_shipped_fp16_weights(tmp_path):
    """The shipped file is fp16 EMA weights only: it trains, saves and resumes as a kitty-64 run."""
    cats = write_images(tmp_path / "cats", count=4, size=64)
    result = invoke("train", "--data", cats, "--init", SHIPPED_INIT, "--steps", 1, "--batch-size", 2, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "new run kitty-64-cats" in result.output
    tensors, metadata = read_checkpoint(runs.checkpoint_path("kitty-64-cats"))
    assert json.loads(metadata["init_from"])["path"] == str(locations.shipped_model())
    shipped = ema_weights(locations.shipped_model())
    assert all(tensors[f"model.{k}"].dtype == torch.float32 for k in list(shipped)[:3])  # trains in fp32
    resumed = invoke("train", "--data", cats, "--steps", 2, "--device", "cpu")
    assert resumed.exit_code == 0 and "resuming run kitty-64-cats at step 1" in resumed.output, resumed.output


def test_the_app_asks_how_a_new_run_starts_and_remembers_it(cats, one_torch_thread):
    """Seen to catch: the app starting `tiny` from scratch without asking, and asking again on
    the next launch instead of resuming the fine-tune the user chose."""

    async def first_launch():
        app = make_app(cats, preset=None)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "StartFromScreen")
            assert app.session.trainer is None  # nothing opens before the answer
            await tap(pilot, "f")
            await wait_for(pilot, lambda: app.session.training.run is not None and app.session.trainer.step_count >= 1)
            assert "fine-tuning from kitty-64" in app.main_screen.status.text  # seen: overwritten as training began
            opened = (app.session.training.run.name, app.session.trainer.init_origin["path"], app.session.trainer.config.lr)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return opened

    assert asyncio.run(first_launch()) == ("kitty-64-cats", str(locations.shipped_model()), FINE_TUNE_LR)
    assert runs.run_info("kitty-64-cats")["init"] == SHIPPED_INIT

    async def second_launch():
        app = make_app(cats, preset=None)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: app.session.training.run is not None)
            shown = type(app.screen).__name__
            opened = (app.session.training.run.name, app.session.training.run.resumed)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return shown, opened

    assert asyncio.run(second_launch()) == ("MainScreen", ("kitty-64-cats", True))


def test_escape_in_the_start_dialog_starts_nothing(cats, one_torch_thread):
    async def scenario():
        app = make_app(cats, preset=None)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "StartFromScreen")
            await tap(pilot, "escape")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "MainScreen")
            state = str(app.session.state)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return state

    assert asyncio.run(scenario()) == "idle"
    assert not runs.run_dir("kitty-64-cats").exists() and not runs.run_dir("tiny-cats").exists()
