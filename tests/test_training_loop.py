"""`TrainingThread` over the sync-free step: metrics read back in batches, budgets passed on to
the learning-rate schedule, a cool-down on request."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from engine import events
from engine.threads import TrainingThread
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)
LR = 1e-3


def make_trainer(**overrides) -> Trainer:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(batch_size=2, lr=LR, warmup_steps=1, min_lr_ratio=0.1, **overrides)
    return Trainer(SMALL, images, config, device="cpu")


def run(trainer, path, on_event=None, **options) -> list:
    thread = TrainingThread(trainer, path, **options)
    seen: list = []

    def subscriber(event):
        seen.append(event)
        if on_event:
            on_event(thread, event)

    thread.subscribe(subscriber)
    thread.start()
    thread.join(240)
    assert not thread.is_alive(), "training hung"
    return seen


def of(seen, kind):
    return [e for e in seen if isinstance(e, kind)]


def test_batched_reads_still_report_every_step_in_order(tmp_path):
    """Reading back every 0.3 s (as on a GPU) instead of every step changes nothing a listener
    sees: one event per step, in order, with the step's own loss, and the budget is met exactly."""
    trainer = make_trainer()
    seen = run(trainer, tmp_path / "c.safetensors", max_steps=12, report_every_seconds=0.3)
    steps = of(seen, events.TrainingStep)
    assert [e.step for e in steps] == list(range(1, 13)) and trainer.step_count == 12
    assert [e.loss for e in steps] == trainer.history.losses
    assert of(seen, events.TrainingFinished)[0].reason == "budget"
    assert trainer.steps_attempted == 12  # no step past the budget


def test_a_step_budget_decays_the_learning_rate_to_its_floor(tmp_path):
    trainer = make_trainer()
    steps = of(run(trainer, tmp_path / "c.safetensors", max_steps=20, decay_to_budget=True), events.TrainingStep)
    assert trainer.horizon == 20
    rates = [e.lr for e in steps]
    assert rates[:16] == pytest.approx([LR] * 16) and rates[-1] == pytest.approx(0.1 * LR)
    assert all(a > b for a, b in zip(rates[16:], rates[17:]))
    plain = make_trainer()
    steps = of(run(plain, tmp_path / "d.safetensors", max_steps=20), events.TrainingStep)
    assert steps[-1].lr == pytest.approx(LR) and plain.horizon == float("inf")  # no budget given to the schedule


def test_a_time_budget_stops_training_and_decays_towards_its_estimated_end(tmp_path):
    trainer = make_trainer()
    seen = run(trainer, tmp_path / "c.safetensors", max_seconds=3.0, decay_to_budget=True)
    steps = of(seen, events.TrainingStep)
    assert of(seen, events.TrainingFinished)[0].reason == "budget"
    assert steps[-1].elapsed >= 3.0 and steps[-2].elapsed < 3.0 + 1.0
    assert trainer.horizon < float("inf")
    assert steps[-1].lr < 0.7 * LR and steps[0].lr == pytest.approx(LR)  # well into the decay at the end


def test_a_cool_down_ends_an_open_ended_run_at_the_floor(tmp_path):
    asked = threading.Event()

    def on_event(thread, event):
        if isinstance(event, events.TrainingStep) and event.step == 8 and not asked.is_set():
            asked.set()
            thread.cool_down()

    trainer = make_trainer()
    seen = run(trainer, tmp_path / "c.safetensors", on_event=on_event)
    steps = of(seen, events.TrainingStep)
    assert of(seen, events.TrainingFinished)[0].reason == "budget"
    assert trainer.step_count == 10 == trainer.horizon  # 8 steps are 80 % of the run
    assert steps[-1].lr == pytest.approx(0.1 * LR) and steps[7].lr == pytest.approx(LR)


def test_nans_roll_back_with_batched_reads(tmp_path):
    """5 NaN losses in a row found in a batch of read-back steps: training goes back to the last
    checkpoint with half the rate, the EMA never sees a NaN, and the run completes."""
    trainer = make_trainer()
    calls = {"n": 0}
    original_forward = trainer.forward

    def forward(x, t):
        calls["n"] += 1
        out = original_forward(x, t)
        return out * float("nan") if 7 <= calls["n"] < 12 else out

    trainer.forward = forward
    seen = run(trainer, tmp_path / "c.safetensors", max_steps=10, checkpoint_every_steps=3, report_every_seconds=0.3)
    rolled = of(seen, events.RolledBack)
    assert len(rolled) == 1 and rolled[0].lr == pytest.approx(LR / 2)
    assert len(of(seen, events.StepSkipped)) >= 5 and trainer.step_count == 10
    assert all(torch.isfinite(v).all() for v in trainer.ema.module.state_dict().values())
