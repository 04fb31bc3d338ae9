"""Background threads that train and sample, reporting through events.

`TrainingThread` runs `Trainer.step()` in a loop that can be paused, resumed and stopped (the
thread sleeps on a condition variable while paused: no busy waiting). It saves a checkpoint
periodically, on pause and on stop. Steps do not wait for the device: their metrics are read
back every `report_every_seconds` (on a GPU; after every step on the CPU, where reading costs
nothing) and turned into one event per step. With `decay_to_budget`, the step or time budget is
passed on to the trainer as the horizon its learning rate decays towards (`cool_down` sets one
for an open-ended run). `SamplingThread` runs one sampler, emitting every step.
"""

from __future__ import annotations

import glob
import math
import threading
import time
from collections import deque
from pathlib import Path

import torch

from . import events
from .checkpoint import CheckpointError
from .files import remove_stale_temporaries
from .generate import SeededNoise, generate
from .samplers import sampler_timesteps
from .schedules import NoiseSchedule
from .trainer import Trainer


def describe_error(error: BaseException) -> str:
    """A one-line, user-facing description of a failure in a background thread."""
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory: try a smaller batch size"
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    text = str(error).strip().splitlines()
    if isinstance(error, (CheckpointError, TrainingDiverged)) and text:
        return text[0]  # already a sentence for the user
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class TrainingDiverged(RuntimeError):
    """Rolling back did not cure the NaNs: training stops, keeping the last good checkpoint."""


class TrainingThread(threading.Thread):
    def __init__(
        self,
        trainer: Trainer,
        checkpoint_path: Path,
        max_steps: int | None = None,
        max_seconds: float | None = None,
        checkpoint_every_steps: int = 1000,
        checkpoint_every_seconds: float = 120.0,
        start_paused: bool = False,
        max_consecutive_skips: int = 5,
        rollback_lr_factor: float = 0.5,
        max_rollbacks: int = 5,
        report_every_seconds: float | None = None,
        decay_to_budget: bool = False,
    ) -> None:
        super().__init__(name="kittyterm-training", daemon=True)
        self.trainer = trainer
        self.checkpoint_path = Path(checkpoint_path)
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint_every_seconds = checkpoint_every_seconds
        self.emitter = events.EventEmitter()
        self._condition = threading.Condition()
        self._paused = start_paused
        self._stop_requested = False
        self.finished_reason: str | None = None
        # Bad numbers: after `max_consecutive_skips` non-finite steps in a row, go back to the last
        # checkpoint with the learning rate times `rollback_lr_factor`; give up after `max_rollbacks`.
        self.max_consecutive_skips = max_consecutive_skips
        self.rollback_lr_factor = rollback_lr_factor
        self.max_rollbacks = max_rollbacks
        self.rollbacks = 0
        self.save_error: str | None = None  # why the latest save failed; None once one succeeds
        if report_every_seconds is None or getattr(trainer, "distributed", None):
            # DDP ranks agree on stopping before every step, so they read every step.
            report_every_seconds = 0.0 if trainer.device.type == "cpu" or getattr(trainer, "distributed", None) else 0.25
        self.report_every_seconds = report_every_seconds
        self.decay_to_budget = decay_to_budget
        self._cool_down_requested = False

    def subscribe(self, subscriber: events.Subscriber):
        return self.emitter.subscribe(subscriber)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        with self._condition:
            self._paused = True

    def resume(self) -> None:
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to save and exit; wait up to `timeout` seconds for it."""
        with self._condition:
            self._stop_requested = True
            self._condition.notify_all()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def save(self) -> bool:
        try:
            self.trainer.save(self.checkpoint_path)
        except Exception as error:  # a failed save must never end the run (the previous file is intact)
            self.save_error = describe_error(error)
            message = f"checkpoint not saved at step {self.trainer.step_count} ({self.checkpoint_path}): {self.save_error}"
            self.emitter.emit(events.EngineError("training", message))
            return False
        self.save_error = None
        self.emitter.emit(events.CheckpointSaved(self.checkpoint_path, self.trainer.step_count))
        return True

    def _roll_back(self, skipped_in_a_row: int) -> None:
        """Repeated non-finite steps: reload the last checkpoint with a lower learning rate."""
        trainer = self.trainer
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged: still NaN/inf after {self.rollbacks} rollbacks "
                f"(learning rate now {trainer.config.lr:.2g}); the last good checkpoint is kept"
            )
        self.rollbacks += 1
        from_step = trainer.step_count
        why = (
            "the weights became non-finite"
            if not trainer.weights_finite
            else f"{skipped_in_a_row} steps in a row had a non-finite loss or gradient"
        )
        if self.checkpoint_path.is_file():
            trainer.rollback(self.checkpoint_path, self.rollback_lr_factor)
        elif trainer.weights_finite:  # nothing saved yet, but the weights are still good
            trainer.lower_learning_rate(self.rollback_lr_factor)
            why += " (no checkpoint yet: kept the current weights)"
        else:
            raise TrainingDiverged("the weights became non-finite before any checkpoint was saved")
        self.emitter.emit(events.RolledBack(trainer.step_count, from_step, trainer.config.lr, why))
        self.save()  # persist the lowered learning rate

    def _wait_while_paused(self) -> bool:
        """Block while paused; return False when a stop was requested."""
        with self._condition:
            if not self._paused:
                return not self._stop_requested
        self.save()
        self.emitter.emit(events.TrainingPaused(self.trainer.step_count))
        with self._condition:
            self._condition.wait_for(lambda: not self._paused or self._stop_requested)
            if self._stop_requested:
                return False
        self.emitter.emit(events.TrainingResumed(self.trainer.step_count))
        return True

    def _stop_reason(self, elapsed: float) -> str | None:
        """Why to stop before the next step ("stopped" or "budget"), or None to go on.
        Blocks while paused; `elapsed` is the seconds spent stepping so far."""
        if not self._wait_while_paused():
            return "stopped"
        if self.max_steps is not None and self.trainer.step_count_bound >= self.max_steps and self.trainer.step_count >= self.max_steps:
            return "budget"
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            return "budget"
        return None

    def cool_down(self) -> None:
        """End an open-ended run gently: the learning rate decays from now to its floor and
        training stops when it gets there (`Trainer.cool_down`), at the next read."""
        with self._condition:
            self._cool_down_requested = True

    def _set_horizon(self, elapsed: float, start_step: int) -> None:
        """Tell the trainer when the run ends: the step budget, or where the time budget will
        run out at this session's speed so far (re-estimated at every read)."""
        trainer = self.trainer
        if not self.decay_to_budget:
            return
        horizon = float(self.max_steps) if self.max_steps is not None else math.inf
        done = trainer.step_count - start_step
        if self.max_seconds is not None and elapsed > 0 and done > 0:
            remaining = max(self.max_seconds - elapsed, 0.0)
            horizon = min(horizon, trainer.step_count + done * remaining / elapsed)
        if horizon != trainer.horizon:
            trainer.set_horizon(max(horizon, 1.0))

    def run(self) -> None:
        trainer = self.trainer
        emit = self.emitter.emit
        emit(events.TrainingStarted(trainer.step_count, trainer.num_images, tuple(trainer.history.losses)))
        start_step = trainer.step_count
        elapsed = 0.0  # seconds spent stepping (pauses excluded)
        recent: deque[tuple[float, int]] = deque(maxlen=20)
        last_save_step, last_save_time = trainer.step_count, time.monotonic()
        unsaved = False
        reason = "stopped"
        skipped_in_a_row = 0
        distributed = getattr(trainer, "distributed", None)
        if distributed is None or distributed.is_main:  # the one process that writes checkpoints
            remove_stale_temporaries(self.checkpoint_path.parent, glob.escape(self.checkpoint_path.name))
        self._set_horizon(elapsed, start_step)
        try:
            while True:
                stop_reason = self._stop_reason(elapsed)
                if stop_reason is not None:
                    reason = stop_reason
                    break
                began = time.perf_counter()
                steps = 0
                while True:  # step without waiting for the device until a read is due
                    trainer.step()
                    steps += 1
                    if time.perf_counter() - began >= self.report_every_seconds or self.max_steps is not None and trainer.step_count_bound >= self.max_steps:
                        break
                metrics = trainer.read_metrics()  # waits for the device
                took = time.perf_counter() - began
                elapsed += took
                recent.append((took, steps * trainer.config.batch_size))
                speed = sum(n for _, n in recent) / max(sum(s for s, _ in recent), 1e-9)
                skipped = trainer.skipped_steps - sum(m.skipped for m in metrics)
                for result in metrics:
                    if result.skipped:
                        skipped += 1
                        skipped_in_a_row += 1
                        why = "loss or gradient not finite" if result.weights_finite else "weights not finite after the update"
                        emit(events.StepSkipped(result.step, why, skipped))
                        if skipped_in_a_row >= self.max_consecutive_skips or not result.weights_finite:
                            self._roll_back(skipped_in_a_row)  # the steps after this one are undone with it
                            skipped_in_a_row = 0
                            unsaved = self.save_error is not None
                            last_save_step, last_save_time = trainer.step_count, time.monotonic()
                            break
                        continue
                    skipped_in_a_row = 0
                    unsaved = True
                    emit(events.TrainingStep(result.step, result.loss, result.lr, trainer.epoch, speed, elapsed))
                if self._cool_down_requested:
                    self._cool_down_requested = False
                    self.max_steps, self.decay_to_budget = trainer.cool_down(), True
                self._set_horizon(elapsed, start_step)
                now = time.monotonic()
                if unsaved and (
                    trainer.step_count - last_save_step >= self.checkpoint_every_steps
                    or now - last_save_time >= self.checkpoint_every_seconds
                ):
                    if self.save():
                        unsaved = False
                    last_save_step, last_save_time = trainer.step_count, now
        except Exception as error:
            emit(events.EngineError("training", describe_error(error)))
            reason = "error"
            if isinstance(error, (TrainingDiverged, CheckpointError)) or not trainer.weights_finite:
                unsaved = False  # keep the last good checkpoint rather than save a doubtful state
        if unsaved or (trainer.step_count == start_step == 0 and reason != "error"):
            self.save()
        self.finished_reason = reason
        emit(events.TrainingFinished(trainer.step_count, reason))


class SamplingCancelledError(Exception):
    pass


class SamplingThread(threading.Thread):
    """Sample a batch in the background, emitting `SamplingStep` after every sampler step.

    `seeds`, `grid` and `start` are as for `generate` (`seeds` may be a noise source such as a
    `SlerpNoise`; the events then name its seeds); the grid is by default the sampler's own
    for `steps`."""

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: NoiseSchedule,
        seeds: list[int] | SeededNoise,
        sampler: str,
        steps: int,
        model_sha256: str = "",
        device: str | torch.device = "cpu",
        *,
        grid: list[int] | None = None,
        start: torch.Tensor | None = None,
    ) -> None:
        super().__init__(name="kittyterm-sampling", daemon=True)
        self.model = model
        self.schedule = schedule
        self.noise = seeds if isinstance(seeds, SeededNoise) else None
        self.seeds = list(seeds.seeds if isinstance(seeds, SeededNoise) else seeds)
        self.sampler = sampler
        self.steps = steps
        # built once: the sampler runs over it
        self.grid = list(grid) if grid is not None else sampler_timesteps(sampler, schedule, steps)
        self.start_images = start
        self.model_sha256 = model_sha256
        self.device = device
        self.emitter = events.EventEmitter()
        self._cancel = threading.Event()
        self.result: torch.Tensor | None = None

    def subscribe(self, subscriber: events.Subscriber):
        return self.emitter.subscribe(subscriber)

    def cancel(self, timeout: float | None = None) -> None:
        self._cancel.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        emit = self.emitter.emit
        last_step = -1

        def on_step(step: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
            nonlocal last_step
            last_step = step
            if self._cancel.is_set():
                raise SamplingCancelledError
            emit(events.SamplingStep(step, self.total_steps, x_t.float().cpu().clone(), x0.float().cpu().clone()))

        began = time.perf_counter()
        try:
            images = generate(
                self.model, self.schedule, self.noise or self.seeds, self.sampler, device=self.device, callback=on_step,
                grid=self.grid, start=self.start_images,
            )
        except SamplingCancelledError:
            emit(events.SamplingCancelled(last_step))
            return
        except Exception as error:
            emit(events.EngineError("sampling", describe_error(error)))
            return
        self.result = images
        emit(
            events.SamplingFinished(
                images, tuple(self.seeds), self.sampler, self.steps, self.model_sha256, time.perf_counter() - began
            )
        )

    @property
    def total_steps(self) -> int:
        return len(self.grid)
