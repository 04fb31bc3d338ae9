"""The app's sampling: which model (the training run's EMA, else as `kittyterm sample` chooses),
a background sampler whose every step is offered to the preview, and keeping cats.

Preview frames are coalesced into a one-frame slot: a `PreviewTick` is posted only when none is
pending, and the UI takes the newest frame, so a slow terminal drops frames instead of queueing
them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine import events
from engine.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from engine.threads import SamplingThread, describe_error

from .. import cats, locations, messages
from ..errors import UserError
from ..jobs.models import ModelCache, describe, model_path
from .training import TrainingSession

Post = Callable[[object], object]


def to_hwc_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] → (B, H, W, 3) uint8 numpy."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def random_seeds(count: int = 4) -> list[int]:
    rng = random.SystemRandom()
    return [rng.randrange(2**31) for _ in range(count)]


class SamplingSession:
    """`s` samples in the background (replacing a running sampler); `keep` saves a finished cat."""

    def __init__(
        self,
        post: Post,
        training: TrainingSession,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        seeds: Callable[[], list[int]] = random_seeds,
        frame_interval: float = 1 / 12,
    ) -> None:
        self.post = post
        self.training = training
        self.sampler = sampler
        self.steps = steps or DEFAULT_STEPS[sampler]
        self.seed_source = seeds
        self.frame_interval = frame_interval
        self.models = ModelCache()
        self.thread: SamplingThread | None = None
        self.batch: messages.Batch | None = None
        self.closing = False
        self._lock = threading.Lock()
        self._generation = 0
        self._frame_lock = threading.Lock()
        self._frame_slot: messages.PreviewFrame | None = None
        self._frame_pending = False

    @property
    def generation(self) -> int:
        """Bumped by every sample, cancel and shutdown: messages of older runs are stale."""
        return self._generation

    @property
    def busy(self) -> bool:
        thread = self.thread
        return thread is not None and thread.is_alive()

    def sample(self) -> None:
        """`s`: sample a batch from the current EMA (or a saved model) in the background."""
        with self._lock:
            if self.closing:
                return
            self._generation += 1
            generation = self._generation
            old, self.thread = self.thread, None
        if old is not None:
            old.cancel(timeout=0)
        threading.Thread(target=self._prepare, args=(generation,), name="kittyterm-sample-prep", daemon=True).start()

    def cancel(self) -> bool:
        with self._lock:
            thread = self.thread
            if thread is None or not thread.is_alive():
                return False
            self._generation += 1
            self.thread = None
        thread.cancel(timeout=0)
        return True

    def _model(self) -> tuple[torch.nn.Module, object, str, str, str | torch.device]:
        """(model, schedule, sha256, description, device): the run's EMA while it trains, else a file."""
        trainer = self.training.trainer
        if trainer is not None:
            model, step = self.training.ema_snapshot()
            return model, trainer.schedule, "", f"{self.training.run_name} EMA @ step {step}", trainer.device
        path = model_path(run=self.training.run_name)
        loaded = self.models.load(path)
        return loaded.model, loaded.schedule, loaded.sha256, describe(path, loaded.step), "cpu"

    def _prepare(self, generation: int) -> None:
        from engine.generate import starting_noise

        try:
            model, schedule, sha256, description, device = self._model()
            seeds = list(self.seed_source())
            thread = SamplingThread(model, schedule, seeds, self.sampler, self.steps, sha256, device)
            total = thread.total_steps
        except UserError as error:
            hint = "press space to train one" if self.training.options else "start kittyterm with --data DIR to train one"
            self.post(messages.SessionError(f"No model to sample from yet ({hint}): {error}"))
            return
        except Exception as error:
            self.post(messages.SessionError(f"Could not sample: {describe_error(error)}"))
            return
        with self._lock:
            if self.closing or generation != self._generation:
                return
            self.thread = thread
        thread.subscribe(lambda event: self._on_event(event, generation, description, total))
        self.post(messages.SamplingStarted(tuple(seeds), total, description, generation))
        noise = to_hwc_uint8(starting_noise(seeds, model.config.image_size, model.config.in_channels))
        self.offer_frame(messages.PreviewFrame(0, total, noise, noise, seeds=tuple(seeds)))
        thread.start()

    def offer_frame(self, frame: messages.PreviewFrame) -> None:
        with self._frame_lock:
            self._frame_slot = frame
            post = not self._frame_pending
            self._frame_pending = True
        if post:
            self.post(messages.PreviewTick())

    def take_frame(self) -> messages.PreviewFrame | None:
        """UI thread: the newest preview frame (older ones were dropped)."""
        with self._frame_lock:
            frame, self._frame_slot = self._frame_slot, None
            self._frame_pending = False
            return frame

    def _on_event(self, event: object, generation: int, description: str, total: int) -> None:
        """Runs on the sampling thread."""
        if generation != self._generation:
            return  # a cancelled or replaced run
        if isinstance(event, events.SamplingStep):
            began = time.monotonic()
            self.offer_frame(messages.PreviewFrame(event.step + 1, event.total, to_hwc_uint8(event.x_t), to_hwc_uint8(event.x0)))
            # Pace fast samplers so that every step can be seen (never more than frame_interval).
            wait = self.frame_interval - (time.monotonic() - began)
            if wait > 0:
                time.sleep(wait)
            return
        if isinstance(event, events.SamplingFinished):
            images = event.images.numpy()
            self.batch = messages.Batch(images, event.seeds, event.sampler, event.steps, event.model_sha256, description)
            final = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
            self.offer_frame(messages.PreviewFrame(total, total, final, final, final=True, seeds=event.seeds))
        self.post(messages.for_event(event))

    def keep(self, index: int) -> Path:
        """Save cat `index` of the last finished batch to the gallery; returns its path."""
        batch = self.batch
        if batch is None:
            raise LookupError("Nothing to keep yet: press s to sample some cats")
        if not 0 <= index < len(batch.images):
            raise LookupError(f"There is no cat {index + 1} in this batch")
        info = cats.CatInfo(batch.seeds[index], batch.sampler, batch.steps, batch.model_sha256, batch.model)
        path = cats.save_cat(locations.gallery_dir(), batch.images[index], info)
        batch.kept.add(index)
        return path

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            self.closing = True
            self._generation += 1
            thread, self.thread = self.thread, None
        if thread is not None:
            thread.cancel(timeout=timeout)
