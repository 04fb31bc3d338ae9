"""One policy for both front ends (`kittyterm.jobs`), and the rough edges a new user hit.

Each defect test names the defect it was seen to catch before the fix.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from engine.checkpoint import read_checkpoint
from kittyterm import __version__, runs
from kittyterm.cats import METADATA_KEY, read_cat_info
from kittyterm.cli import app as cli
from kittyterm.errors import UserError
from kittyterm.jobs import devices
from kittyterm.jobs.training import FRESH_HINT, NEW_RUN_PREDICTION
from tests.test_app_support import make_app, one_torch_thread, tap, wait_for, wait_until_exited, write_images  # noqa: F401


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def cats(tmp_path):
    return write_images(tmp_path / "cats", count=8)


def test_the_app_and_the_cli_open_the_same_run_with_the_same_defaults(kittyterm_home, cats, one_torch_thread):
    """Seen to catch: the app's batch (64) and preset differing from the CLI's (32 on a CPU)."""

    async def scenario():
        app = make_app(cats, session={"batch_size": None}, preset=None)
        async with app.run_test() as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "StartFromScreen")
            await tap(pilot, "t")  # from scratch, the CLI's default on a CPU
            await wait_for(pilot, lambda: app.session.trainer is not None)
            trainer = app.session.trainer
            run = app.session.training.run
            opened = (run.name, run.preset, trainer.config.batch_size, trainer.config.lr, trainer.schedule.config.prediction)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return opened

    assert asyncio.run(scenario()) == ("tiny-cats", "tiny", 32, 5e-4, NEW_RUN_PREDICTION)
    result = invoke("train", "--data", cats, "--steps", 1, "--device", "cpu", "--run", "cli")
    assert f"preset tiny, batch 32, predicts {NEW_RUN_PREDICTION}, on cpu" in result.output
    _, metadata = read_checkpoint(runs.checkpoint_path("cli"))
    assert json.loads(metadata["schedule_config"])["prediction"] == NEW_RUN_PREDICTION == "v"


def test_a_damaged_checkpoint_gets_the_same_message_in_both(kittyterm_home, cats, one_torch_thread):
    """Seen to catch: the app silently moved a damaged run aside while the CLI refused it."""
    runs.checkpoint_path("tiny-cats").parent.mkdir(parents=True)
    runs.checkpoint_path("tiny-cats").write_bytes(b"\0" * 100)
    result = invoke("train", "--data", cats, "--preset", "tiny", "--steps", 1, "--device", "cpu")
    assert result.exit_code == 1 and FRESH_HINT in result.output

    async def scenario():
        app = make_app(cats)
        async with app.run_test(size=(200, 30)) as pilot:
            await tap(pilot, "space")
            await wait_for(pilot, lambda: FRESH_HINT in app.main_screen.status.text)
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(scenario())
    assert sorted(p.name for p in runs.run_dir("tiny-cats").parent.iterdir()) == ["tiny-cats"]  # nothing moved unasked


def test_sample_uses_a_run_whose_name_has_a_dot(kittyterm_home, tmp_path):
    """Seen to catch: runs named `cats.v2` or `v1.2` were skipped and the shipped model sampled instead."""
    data = write_images(tmp_path / "cats.v2", count=4)
    assert invoke("train", "--data", data, "--preset", "tiny", "--steps", 1, "--batch-size", 2, "--device", "cpu").exit_code == 0
    result = invoke("sample", "--out", tmp_path / "out", "-n", 1, "--steps", 2, "--seed", 3, "--device", "cpu")
    assert result.exit_code == 0 and "runs/tiny-cats.v2/checkpoint.safetensors" in result.output
    assert read_cat_info(tmp_path / "out" / "cat-3.png").model == "checkpoint.safetensors"
    assert invoke("train", "--data", data, "--preset", "tiny", "--steps", 1, "--fresh", "--device", "cpu").exit_code == 0
    archived = [p.name for p in runs.run_dir("x").parent.iterdir() if runs.is_archived(p.name)]
    assert len(archived) == 1 and runs.latest_checkpoint().parent.name == "tiny-cats.v2"


def test_version_completion_and_the_app_in_the_root_help():
    """Seen to catch: no --version, completion switched off, the help silent about the app."""
    version = invoke("--version")
    assert version.exit_code == 0 and version.output.strip() == f"kittyterm {__version__}"
    help_text = invoke("--help").output
    assert "--install-completion" in help_text
    assert "with no command to open the full-screen app" in " ".join(help_text.split())


def test_auto_picks_cuda_then_mps_then_cpu_and_mps_is_accepted(monkeypatch):
    """Seen to catch: `--device mps` refused as an unknown device, and `auto` never picking MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.resolve_device("auto") == "mps" and devices.resolve_device("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    with pytest.raises(UserError, match="no Apple GPU"):
        devices.resolve_device("mps")
    with pytest.raises(UserError, match="unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"):
        devices.resolve_device("tpu")


def test_sample_refuses_a_file_name_as_the_folder_and_a_bad_device_leaves_nothing(kittyterm_home, tmp_path, monkeypatch):
    """Seen to catch: `--out cats/cat-1.png` made a folder named cat-1.png; a failed `--device cuda`
    left an empty output folder behind."""
    result = invoke("sample", "--out", tmp_path / "cats" / "cat-1.png", "-n", 1, "--steps", 1)
    assert result.exit_code == 1 and "looks like a file name" in result.output
    assert not (tmp_path / "cats").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("sample", "--out", tmp_path / "new", "--device", "cuda", "-n", 1)
    assert result.exit_code == 1 and "no CUDA GPU" in result.output and not (tmp_path / "new").exists()


def test_lr_and_seed_on_a_resumed_run_are_not_ignored_silently(kittyterm_home, cats):
    """Seen to catch: `--lr` and `--seed` silently ignored when a run resumed."""
    base = ["train", "--data", cats, "--preset", "tiny", "--batch-size", 2, "--device", "cpu"]
    assert invoke(*base, "--steps", 1).exit_code == 0
    result = invoke(*base, "--steps", 2, "--lr", "1e-4", "--seed", 5)
    assert result.exit_code == 0
    assert "learning rate set to 0.0001 for the rest of the run" in result.output
    assert "--seed applies to new runs only" in result.output
    from engine.checkpoint import read_checkpoint

    assert json.loads(read_checkpoint(runs.checkpoint_path("tiny-cats"))[1]["train_config"])["lr"] == 1e-4


def test_the_grid_records_how_its_cats_were_made(kittyterm_home, tmp_path):
    """Seen to catch: the --grid contact sheet had no metadata (the single cats did)."""
    result = invoke("sample", "--out", tmp_path, "-n", 3, "--steps", 2, "--seed", 40, "--grid", "--device", "cpu", "--sampler", "ddim")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "grid-40.png") as sheet:
        info = json.loads(sheet.info[METADATA_KEY])
    cat = read_cat_info(tmp_path / "cat-41.png")
    assert info["seeds"] == [40, 41, 42] and info["columns"] == 2
    assert (info["sampler"], info["steps"], info["model_sha256"]) == (cat.sampler, cat.steps, cat.model_sha256) == ("ddim", 2, cat.model_sha256)
    assert "ddim 2 steps, seeds 40–42" in result.output  # seen: "seeds 40…", never the last one


def test_one_cat_of_one_step_is_said_in_the_singular(kittyterm_home, tmp_path):
    result = invoke("sample", "--out", tmp_path, "-n", 1, "--steps", 1, "--seed", 7, "--device", "cpu", "--sampler", "ddim")
    assert result.exit_code == 0 and "ddim 1 step, seed 7" in result.output, result.output  # seen: "ddim 1 steps"


def test_the_command_line_and_the_app_default_to_the_engines_sampler():
    from engine.samplers import DEFAULT_SAMPLER

    import typer

    from kittyterm.settings import Generator

    commands = typer.main.get_command(cli).commands
    for name in ("sample", "vary", "morph", "eval"):
        option = next(p for p in commands[name].params if p.name == "sampler")
        assert option.default == DEFAULT_SAMPLER or option.default.value == DEFAULT_SAMPLER, name
    assert Generator().sampler == DEFAULT_SAMPLER


def test_the_steps_help_names_every_samplers_default():
    from engine.samplers import DEFAULT_STEPS

    import typer

    sample = typer.main.get_command(cli).commands["sample"]
    text = next(p.help for p in sample.params if p.name == "steps")
    assert f"(default: {', '.join(f'{steps} {name}' for name, steps in DEFAULT_STEPS.items())})" in text
