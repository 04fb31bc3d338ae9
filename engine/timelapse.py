"""The learning timelapse: the same few seeds drawn by the EMA model now and then while it trains.

`TimelapseThread` follows a `TrainingThread` through its events. A frame is due at every
checkpoint save, every `every_seconds` of training (pauses not counted) and, if set, every
`every_steps` steps; at the start of a session when the store has no frame of that step (step 0
of a new run); and on a pause or at the budget. The training thread copies the EMA to the CPU
between two steps (a few milliseconds; the copy's step is the frame's) and hands it over; this
thread samples it with one intra-op thread at a lower scheduling priority and gives the images
to a `FrameStore`, which keeps them. While a frame is being drawn, a due frame is not queued: it
waits for the first event after the sampler is free, and the training loop never waits for it
(except when it stops anyway: on a pause and at the budget, where the last frame shows the run
as it is left).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Protocol

import torch

from . import events
from .generate import generate
from .samplers import DEFAULT_SAMPLER, sampler_timesteps
from .threads import describe_error
from .unet import UNet

SEEDS = tuple(range(8))
STEPS = 10  # of the default sampler: cats are recognisable, and a frame costs little
EVERY_SECONDS = 60.0
NICENESS = 10  # added to the sampler thread's nice value (Linux), so that training goes first


class FrameStore(Protocol):
    """Where a run's frames are kept (`kittyterm.jobs.timelapse.RunFrames`)."""

    def steps(self) -> set[int]:
        """The steps that have a frame."""

    def write(self, step: int, images: torch.Tensor) -> Path:
        """Keep the frame of `step`: (B, 3, H, W) uint8, one image per seed."""

    def drop_after(self, step: int) -> None:
        """Forget the frames after `step` (training went back to it)."""


class TimelapseCancelled(Exception):
    pass


def cpu_copy(model: UNet) -> UNet:
    """A private float32 copy of `model` on the CPU in the default memory layout, made without a
    second copy on the model's own device."""
    with torch.device("meta"):
        copy = UNet(model.config)
    state = {
        name: tensor.detach().to("cpu", torch.float32, memory_format=torch.contiguous_format, copy=True)
        for name, tensor in model.state_dict().items()
    }
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)


def use_one_thread_here() -> None:
    """Compute with one intra-op thread on the calling thread only. `torch.set_num_threads` also
    sets the default that threads take at their first parallel operation, so that default is set
    back from a helper thread, leaving the calling thread's own setting at 1."""
    default = torch.get_num_threads()  # this thread's first call: the process default
    torch.set_num_threads(1)
    restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="kittyterm-threads")
    restore.start()
    restore.join()


def lower_priority(niceness: int) -> None:
    """Raise the calling thread's nice value by `niceness` (Linux, where a thread has its own)."""
    if niceness > 0 and sys.platform.startswith("linux"):
        thread = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
        except OSError:
            pass


class TimelapseThread(threading.Thread):
    """Draws `seeds` with `sampler` in `steps` steps from copies of a training run's EMA."""

    def __init__(
        self,
        store: FrameStore,
        seeds: tuple[int, ...] = SEEDS,
        sampler: str = DEFAULT_SAMPLER,
        steps: int = STEPS,
        every_seconds: float = EVERY_SECONDS,
        every_steps: int | None = None,
        niceness: int = NICENESS,
    ) -> None:
        super().__init__(name="kittyterm-timelapse", daemon=True)
        self.store = store
        self.seeds = list(seeds)
        self.sampler = sampler
        self.steps = steps
        self.every_seconds = every_seconds
        self.every_steps = every_steps
        self.niceness = niceness
        self.emitter = events.EventEmitter()
        self.trainer = None
        self._condition = threading.Condition()
        self._job: tuple[int, UNet, object] | None = None  # (step, model, schedule) handed over
        self._busy = False  # a frame is handed over or being drawn
        self._closing = False
        self._cancel = threading.Event()
        # Read and written on the training thread only:
        self._done = set(store.steps())
        self._wanted = False
        self._last_step = 0  # of the last frame, or where the session started
        self._last_elapsed = 0.0
        self._elapsed = 0.0

    def subscribe(self, subscriber: events.Subscriber):
        return self.emitter.subscribe(subscriber)

    def attach(self, training) -> None:
        """Follow `training` (a `TrainingThread`, not yet started) and start drawing frames."""
        self.trainer = training.trainer
        training.subscribe(self.on_training_event)
        self.start()

    @property
    def busy(self) -> bool:
        with self._condition:
            return self._busy

    # ------------------------------------------------------------------ on the training thread

    def on_training_event(self, event: object) -> None:
        """Runs on the training thread, between steps."""
        if isinstance(event, events.TrainingStarted):
            self._elapsed = self._last_elapsed = 0.0
            self._last_step = event.step
            self._wanted = event.step not in self._done
        elif isinstance(event, events.TrainingStep):
            self._elapsed = event.elapsed
            if self.every_steps is not None and event.step - self._last_step >= self.every_steps:
                self._wanted = True
            if self._elapsed - self._last_elapsed >= self.every_seconds:
                self._wanted = True
        elif isinstance(event, events.CheckpointSaved):
            self._wanted = True
        elif isinstance(event, events.RolledBack):
            self.store.drop_after(event.step)
            self._done = {step for step in self._done if step <= event.step}
            self._last_step = min(self._last_step, event.step)
            return
        elif isinstance(event, events.TrainingPaused):
            self._serve(wait=True)
            return
        elif isinstance(event, events.TrainingFinished):
            self._serve(wait=event.reason == "budget")
            with self._condition:  # the thread ends once the last frame is drawn
                self._closing = True
                self._condition.notify_all()
            return
        else:
            return
        self._serve(wait=False)

    def _serve(self, wait: bool) -> None:
        """Hand a copy of the EMA over if a frame is due and the sampler is free (or, with
        `wait`, once it is free)."""
        if not self._wanted:
            return
        step = self.trainer.step_count
        if step in self._done:  # drawn before (by a run that was stopped or killed since)
            self._wanted = False
            self._last_step, self._last_elapsed = step, self._elapsed
            return
        with self._condition:
            if wait:
                self._condition.wait_for(lambda: not self._busy or self._closing)
            if self._busy or self._closing:
                return
            self._busy = True
        self._wanted = False
        self._last_step, self._last_elapsed = step, self._elapsed
        self._done.add(step)
        model = cpu_copy(self.trainer.ema.module)
        with self._condition:
            self._job = (step, model, self.trainer.schedule)
            self._condition.notify_all()

    # ------------------------------------------------------------------ on this thread

    def run(self) -> None:
        use_one_thread_here()
        lower_priority(self.niceness)
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._job is not None or self._closing)
                if self._job is None:
                    return
                step, model, schedule = self._job
                self._job = None
            try:
                self._draw(step, model, schedule)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _draw(self, step: int, model: UNet, schedule) -> None:
        def check(*_) -> None:
            if self._cancel.is_set():
                raise TimelapseCancelled

        try:
            grid = sampler_timesteps(self.sampler, schedule, min(self.steps, schedule.num_steps))
            images = generate(model, schedule, self.seeds, self.sampler, device="cpu", callback=check, grid=grid)
            path = self.store.write(step, images)
        except TimelapseCancelled:
            return
        except Exception as error:
            self.emitter.emit(events.EngineError("timelapse", f"timelapse frame of step {step} not kept: {describe_error(error)}"))
            return
        self.emitter.emit(events.TimelapseFrame(step, images, path))

    def close(self, timeout: float | None = None) -> None:
        """Take no more frames; let the frame being drawn finish for up to `timeout` seconds, then
        cancel it (it is not kept) and wait for the thread to end."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
            self._cancel.set()
            self.join()
