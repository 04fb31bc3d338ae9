"""Issue 5, item 5: NaN/inf in a loss, a gradient or the weights.

A non-finite step is skipped and counted; `max_consecutive_skips` of them in a row (or weights
that became non-finite) roll training back to the last good checkpoint with half the learning
rate, which is saved with the run; the user is told (`events.RolledBack`, a line from the CLI).
A NaN never reaches the EMA or a saved checkpoint; if rolling back does not help, training stops
with an error and keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from typer.testing import CliRunner

from engine import events
from engine.checkpoint import read_checkpoint, split_prefix
from engine.threads import TrainingThread
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet
from tests.faults import record
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)
LR = 1e-3


def make_trainer() -> Trainer:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Trainer(SMALL, images, TrainConfig(batch_size=2, lr=LR, warmup_steps=1), device="cpu")


class Injector:
    """Poison chosen calls of `trainer.step()`: 'loss' (NaN prediction), 'grad' (inf gradient),
    'weights' (NaN written into a weight right after the optimizer step)."""

    def __init__(self, trainer: Trainer, plan) -> None:
        self.plan = plan  # call index → kind or None
        self.calls = 0
        self.kind = None
        self.injected: list[str] = []
        original_step, original_forward = trainer.step, trainer.forward
        original_optimizer_step = trainer.optimizer.step
        first = next(trainer.model.parameters())

        def step():
            self.kind = self.plan(self.calls)
            self.calls += 1
            if self.kind:
                self.injected.append(self.kind)
            return original_step()

        def forward(x, t):
            out = original_forward(x, t)
            return out * float("nan") if self.kind == "loss" else out

        def optimizer_step(*args, **kwargs):
            result = original_optimizer_step(*args, **kwargs)
            if self.kind == "weights":
                with torch.no_grad():
                    first.view(-1)[0] = float("nan")
            return result

        first.register_hook(lambda g: g * float("inf") if self.kind == "grad" else g)
        trainer.step, trainer.forward, trainer.optimizer.step = step, forward, optimizer_step


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in module.state_dict().values())


class Watcher:
    """Checks, on the training thread after every event, that the EMA and every checkpoint are finite."""

    def __init__(self, trainer: Trainer, path) -> None:
        self.trainer, self.path = trainer, path
        self.events: list = []
        self.problems: list[str] = []

    def __call__(self, event) -> None:
        self.events.append(event)
        if not all_finite(self.trainer.ema.module):
            self.problems.append(f"EMA not finite after {event}")
        if isinstance(event, events.CheckpointSaved):
            tensors, metadata = read_checkpoint(self.path)
            bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad or int(metadata["step"]) != event.step:
                self.problems.append(f"checkpoint at {event.step}: {bad[:3]}")

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def run_thread(trainer, path, **options) -> Watcher:
    thread = TrainingThread(trainer, path, **options)
    watcher = Watcher(trainer, path)
    thread.subscribe(watcher)
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "training hung"
    watcher.thread = thread
    return watcher


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_counted(kind):
    trainer = make_trainer()
    trainer.step()
    injector = Injector(trainer, lambda call: kind if call == 0 else None)
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    result = trainer.step()
    assert result.skipped and trainer.skipped_steps == 1 and trainer.step_count == 1 and len(trainer.history.losses) == 1
    assert all(torch.equal(model[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(ema[k], v) for k, v in trainer.ema.module.state_dict().items())
    assert not trainer.step().skipped and trainer.step_count == 2
    record("numbers", faults=len(injector.injected), survived=1, note=f"one NaN/inf {kind}: step skipped and counted, weights and EMA untouched")


def test_repeated_nans_roll_back_with_a_lower_rate_that_is_saved(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    # steps 1-7 train (saves at 3 and 6), then 5 poisoned calls in a row, then clean again
    Injector(trainer, lambda call: "loss" if 7 <= call < 12 else None)
    watcher = run_thread(trainer, path, max_steps=10, checkpoint_every_steps=3, max_consecutive_skips=5)
    rolled = watcher.of(events.RolledBack)
    assert len(rolled) == 1 and (rolled[0].from_step, rolled[0].step) == (7, 6)
    assert rolled[0].lr == pytest.approx(LR / 2) and "5 steps in a row" in rolled[0].reason
    assert len(watcher.of(events.StepSkipped)) == 5 and trainer.skipped_steps == 5
    steps = [e.step for e in watcher.of(events.TrainingStep)]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10]  # step 7 is redone after going back to 6
    assert trainer.step_count == 10 and len(trainer.history.losses) == 10
    assert watcher.problems == [] and watcher.of(events.TrainingFinished)[0].reason == "budget"
    _, metadata = read_checkpoint(path)
    assert json.loads(metadata["train_config"])["lr"] == pytest.approx(LR / 2) and metadata["skipped_steps"] == "5"
    resumed = Trainer.resume(path, trainer.batches.images, device="cpu")
    assert resumed.config.lr == pytest.approx(LR / 2) and resumed.skipped_steps == 5  # survives a restart
    record("numbers", faults=5, survived=1, lost=0, note="5 NaN losses in a row: rolled back 7 → 6, lr halved and saved")


def test_rolled_back_state_is_the_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    for _ in range(3):
        trainer.step()
    trainer.save(path)
    for _ in range(2):
        trainer.step()
    assert trainer.rollback(path) == 3
    tensors, _ = read_checkpoint(path)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, split_prefix(tensors, "model")[name]), name
    for name, value in trainer.ema.module.state_dict().items():
        assert torch.equal(value, split_prefix(tensors, "ema")[name]), name
    assert trainer.history.losses == tensors["history.loss"].tolist() and trainer.config.lr == pytest.approx(LR / 2)
    record("numbers", faults=1, survived=1, note="rollback restores weights, EMA, optimizer, RNG and history exactly")


def test_non_finite_weights_never_reach_the_ema_and_roll_back_at_once(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    injector = Injector(trainer, lambda call: "weights" if call == 4 else None)
    watcher = run_thread(trainer, path, max_steps=6, checkpoint_every_steps=2)
    skipped = watcher.of(events.StepSkipped)
    assert len(skipped) == 1 and "weights" in skipped[0].reason
    rolled = watcher.of(events.RolledBack)
    assert len(rolled) == 1 and (rolled[0].from_step, rolled[0].step) == (4, 4) and "non-finite" in rolled[0].reason
    assert watcher.problems == [] and all_finite(trainer.model) and all_finite(trainer.ema.module)
    assert trainer.step_count == 6
    record("numbers", faults=len(injector.injected), survived=1, note="NaN written into a weight: EMA untouched, immediate rollback")


def test_save_refuses_a_non_finite_state(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    trainer.step()
    trainer.save(path)
    before = path.read_bytes()
    faults = 0
    for target in ("model", "ema", "optimizer"):
        poisoned = make_trainer()
        poisoned.step()
        with torch.no_grad():
            if target == "model":
                next(poisoned.model.parameters()).view(-1)[0] = float("inf")
            elif target == "ema":
                next(poisoned.ema.module.parameters()).view(-1)[0] = float("nan")
            else:
                next(iter(poisoned.optimizer.state.values()))["exp_avg"].view(-1)[0] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            poisoned.save(path)
        faults += 1
        assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
        thread = TrainingThread(poisoned, path)
        seen: list = []
        thread.subscribe(seen.append)
        assert thread.save() is False
        assert "non-finite" in seen[0].message and path.read_bytes() == before
    record("numbers", faults=faults, survived=faults, note="NaN/inf in model, EMA or optimizer state: save refused, last checkpoint kept")


def test_divergence_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    injector = Injector(trainer, lambda call: "loss" if call >= 4 else None)  # NaN forever after step 4
    watcher = run_thread(trainer, path, max_steps=50, checkpoint_every_steps=2, max_consecutive_skips=2, max_rollbacks=3)
    assert len(watcher.of(events.RolledBack)) == 3
    assert [e.lr for e in watcher.of(events.RolledBack)] == pytest.approx([LR / 2, LR / 4, LR / 8])
    finished = watcher.of(events.TrainingFinished)[0]
    errors = [e.message for e in watcher.of(events.EngineError)]
    assert finished.reason == "error" and errors and "training diverged" in errors[-1]
    _, metadata = read_checkpoint(path)
    assert metadata["step"] == "4" and watcher.problems == []
    record("numbers", faults=len(injector.injected), survived=1, note="NaN forever: 3 rollbacks (lr/2, /4, /8), then a clear error; checkpoint kept")


def test_nans_before_any_checkpoint_lower_the_rate_only(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    injector = Injector(trainer, lambda call: "grad" if call < 3 else None)
    watcher = run_thread(trainer, path, max_steps=2, checkpoint_every_steps=100, max_consecutive_skips=3)
    rolled = watcher.of(events.RolledBack)
    assert len(rolled) == 1 and rolled[0].step == 0 and "no checkpoint yet" in rolled[0].reason
    assert trainer.config.lr == pytest.approx(LR / 2) and trainer.step_count == 2 and watcher.problems == []
    record("numbers", faults=len(injector.injected), survived=1, note="NaNs before the first save: lr lowered, weights kept")


def test_random_nans_never_reach_the_ema_or_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trainer = make_trainer()
    rng = random.Random(5)
    plan = [rng.choice(["loss", "grad", "weights"]) if rng.random() < 0.3 else None for _ in range(200)]
    injector = Injector(trainer, lambda call: plan[call] if call < len(plan) else None)
    watcher = run_thread(trainer, path, max_steps=25, checkpoint_every_steps=2, max_consecutive_skips=3, max_rollbacks=100)
    assert watcher.problems == [] and watcher.of(events.TrainingFinished)[0].reason == "budget"
    assert trainer.skipped_steps == len(injector.injected) == len(watcher.of(events.StepSkipped))
    assert all_finite(trainer.ema.module) and trainer.step_count == 25
    record("numbers", faults=len(injector.injected), survived=1,
           note=f"{len(injector.injected)} random NaN/inf injections over {injector.calls} steps, "
           f"{len(watcher.of(events.RolledBack))} rollbacks; every checkpoint and the EMA finite")


def test_cli_tells_the_user_about_a_rollback(tmp_path, monkeypatch, kittyterm_home):
    from PIL import Image

    from kittyterm.cli import app

    data = tmp_path / "pics"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 50, 100, 150)).save(data / f"{i}.png")
    calls = {"n": 0}
    original = UNet.forward

    def forward(self, x, t):
        if not self.training or x.is_meta:  # the timelapse's sampling, the memory check's meta pass
            return original(self, x, t)
        calls["n"] += 1
        out = original(self, x, t)
        return out * float("nan") if 4 <= calls["n"] < 9 else out  # 5 NaN steps in a row after step 3

    monkeypatch.setattr(UNet, "forward", forward)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--preset", "tiny", "--steps", "5", "--batch-size", "2",
                                      "--device", "cpu", "--checkpoint-every", "2", "--lr", "0.001"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "rolled back from step 3 to the checkpoint at step 2" in result.output and "0.0005" in result.output
    assert result.output.count("skipped step") == 5
    _, metadata = read_checkpoint(kittyterm_home / "data/runs/tiny-pics/checkpoint.safetensors")
    assert metadata["step"] == "5" and json.loads(metadata["train_config"])["lr"] == pytest.approx(5e-4)
    record("numbers", faults=5, survived=1, note="`kittyterm train`: 5 NaN steps → a 'rolled back' line, lowered lr saved")
