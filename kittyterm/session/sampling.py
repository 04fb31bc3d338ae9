"""The app's sampling: the generator settings (which model: the training run's EMA, else as
`kittyterm sample` chooses, or another run or file; sampler, steps, seed, how many cats), a
background sampler whose every step is offered to the preview, and keeping cats with what
`kittyterm sample` needs to draw them again. Besides fresh cats (`s`, `r`) it draws variations of
a kept cat (`v` in the gallery) with the same settings and morphs from one kept cat to another
(`m`), as `kittyterm.jobs` decides; it records every batch's denoising, so that `a` can save a
cat's as a GIF, and saves a morph's GIF when it finishes.

Preview frames are coalesced into a one-frame slot: a `PreviewTick` is posted only when none is
pending, and the UI takes the newest frame, so a slow terminal drops frames instead of queueing
them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine import events
from engine.threads import SamplingThread, describe_error

from .. import cats, locations, messages, settings
from ..errors import UserError
from ..jobs import animation, drawings, variations
from ..jobs.animation import hwc_uint8
from ..jobs.models import ModelCache, chosen_model_path, describe, model_with_sha256
from ..jobs.sampling import batch_seeds, random_seed, sampler_steps
from .training import TrainingSession

Post = Callable[[object], object]


@dataclass(frozen=True)
class Job:
    """A drawing and the model that draws it."""

    drawing: drawings.Drawing
    model: torch.nn.Module
    schedule: object
    sha256: str  # of the model's file; "" for the training run's EMA
    description: str
    device: str | torch.device
    file: str = ""  # the model's file; "" for the training run's EMA


class SamplingSession:
    """`s`, `r`, `v` and `m` sample in the background (replacing a running sampler) with the
    generator settings; `keep` saves a finished cat, `save_animation` its denoising."""

    def __init__(
        self,
        post: Post,
        training: TrainingSession,
        generator: settings.Generator | None = None,
        seed: Callable[[], int] = random_seed,
        frame_interval: float = 1 / 12,
        morph_frames: int = variations.MORPH_FRAMES,
    ) -> None:
        self.post = post
        self.training = training
        self.generator = generator or settings.load().generator  # as chosen last time
        self.seed_source = seed
        self.frame_interval = frame_interval
        self.morph_frames = morph_frames
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

    def next_settings(self, new_seed: bool = False) -> settings.Generator:
        """The settings of the next batch: a new random seed with `new_seed` or an unlocked seed
        (which the settings then hold), else the locked one."""
        if new_seed or not self.generator.locked:
            self.generator = dataclasses.replace(self.generator, seed=self.seed_source())
        return self.generator

    def sample(self, new_seed: bool = False) -> settings.Generator:
        """`s` (`r` with `new_seed`): sample a batch with the generator settings in the
        background; returns the settings used."""
        generator = self.next_settings(new_seed)
        self._launch(lambda: self._plan_cats(generator))
        return generator

    def vary(self, path: Path) -> settings.Generator:
        """`v` in the gallery: variations of the picture at `path` with the generator settings
        (one per seed); returns the settings used."""
        generator = self.next_settings()
        self._launch(lambda: self._plan_variations(path, generator))
        return generator

    def morph(self, path_a: Path, path_b: Path) -> None:
        """`m` in the gallery: the morph from the cat at `path_a` to the one at `path_b`."""
        self._launch(lambda: self._plan_morph(path_a, path_b))

    def _launch(self, plan: Callable[[], Job]) -> None:
        with self._lock:
            if self.closing:
                return
            self._generation += 1
            generation = self._generation
            old, self.thread = self.thread, None
        if old is not None:
            old.cancel(timeout=0)
        threading.Thread(target=self._prepare, args=(generation, plan), name="kittyterm-sample-prep", daemon=True).start()

    def cancel(self) -> bool:
        with self._lock:
            thread = self.thread
            if thread is None or not thread.is_alive():
                return False
            self._generation += 1
            self.thread = None
        thread.cancel(timeout=0)
        return True

    def _model(self, choice: str = "current") -> tuple[torch.nn.Module, object, str, str, str | torch.device, str]:
        """(model, schedule, sha256, description, device, file): the model `choice` names: the
        run's EMA while it trains for "current" (no file), else a file (`jobs.models.chosen_model_path`)."""
        trainer = self.training.trainer
        if choice == "current" and trainer is not None:
            model, step = self.training.ema_snapshot()
            return model, trainer.schedule, "", f"{self.training.run_name} EMA @ step {step}", trainer.device, ""
        try:
            path = chosen_model_path(choice, self.training.run_name)
        except UserError as error:
            hint = "press space to train one" if self.training.options else "start kittyterm with --data DIR to train one"
            raise UserError(f"No model to sample from yet ({hint}): {error}" if choice == "current" else f"Cannot sample: {error}") from None
        return self._file_model(path)

    def _file_model(self, path: Path) -> tuple[torch.nn.Module, object, str, str, str | torch.device, str]:
        loaded = self.models.load(path)
        return loaded.model, loaded.schedule, loaded.sha256, describe(path, loaded.step), "cpu", str(path.resolve())

    def _drew(self, cat: cats.CatInfo, name: str) -> tuple[torch.nn.Module, object, str, str, str | torch.device, str]:
        """The model that drew a kept cat, as `_model` gives it: its file, found by the sha256 the
        PNG records, or, for a cat of the training EMA, that EMA if the run is still at its step."""
        if cat.model_sha256:
            path = model_with_sha256(cat.model_sha256)
            if path is None:
                raise UserError(f"The model that drew {name} ({cat.model}) is no longer here, so it cannot be drawn again")
            return self._file_model(path)
        drawn = self._model() if self.training.trainer is not None else None
        if drawn is None or drawn[3] != cat.model:
            raise UserError(f"{name} was drawn by {cat.model or 'a training EMA'}, which has trained on since, so it cannot be drawn again (cats of a saved model can)")
        return drawn

    def _plan_cats(self, g: settings.Generator) -> Job:
        model, schedule, sha256, description, device, file = self._model(g.model)
        seeds = batch_seeds(g.seed, g.count)
        drawing = drawings.cats(model, schedule, seeds, g.sampler, sampler_steps(g.sampler, g.steps, schedule))
        return Job(drawing, model, schedule, sha256, description, device, file)

    def _plan_variations(self, path: Path, g: settings.Generator) -> Job:
        model, schedule, sha256, description, device, file = self._model(g.model)
        picture = variations.read_picture(path, model.config.image_size)
        steps = sampler_steps(g.sampler, g.steps, schedule)
        drawing = variations.variations(model, schedule, picture, batch_seeds(g.seed, g.count), g.sampler, steps, variations.STRENGTH)
        return Job(drawing, model, schedule, sha256, description, device, file)

    def _plan_morph(self, path_a: Path, path_b: Path) -> Job:
        a, b = variations.morph_ends(path_a, path_b)
        model, schedule, sha256, description, device, file = self._drew(a, Path(path_a).name)
        drawing = drawings.morph(model, schedule, a.seed, b.seed, self.morph_frames, a.sampler, a.steps)
        return Job(drawing, model, schedule, sha256, description, device, file)

    def _prepare(self, generation: int, plan: Callable[[], Job]) -> None:
        try:
            job = plan()
            drawing = job.drawing
            thread = SamplingThread(
                job.model, job.schedule, drawing.noise(), drawing.sampler, drawing.steps, job.sha256, job.device,
                grid=list(drawing.grid), start=drawing.start,
            )
            total = thread.total_steps
            first = hwc_uint8(drawing.first_latents(job.schedule))
        except UserError as error:
            self.post(messages.SessionError(str(error)))
            return
        except Exception as error:
            self.post(messages.SessionError(f"Could not sample: {describe_error(error)}"))
            return
        frames = {"x_t": animation.FrameRecorder(first, total), "x0": animation.FrameRecorder(first, total)}
        with self._lock:
            if self.closing or generation != self._generation:
                return
            self.thread = thread
        thread.subscribe(lambda event: self._on_event(event, generation, job, frames))
        self.post(messages.SamplingStarted(drawing.seeds, total, job.description, drawing.summary, generation))
        self.offer_frame(messages.PreviewFrame(0, total, first, first, seeds=drawing.seeds))
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

    def _on_event(self, event: object, generation: int, job: Job, frames: dict[str, animation.FrameRecorder]) -> None:
        """Runs on the sampling thread."""
        if generation != self._generation:
            return  # a cancelled or replaced run
        if isinstance(event, events.SamplingStep):
            began = time.monotonic()
            x_t, x0 = hwc_uint8(event.x_t), hwc_uint8(event.x0)
            frames["x_t"].add(event.step, x_t)
            frames["x0"].add(event.step, x0)
            self.offer_frame(messages.PreviewFrame(event.step + 1, event.total, x_t, x0))
            # Pace fast samplers so that every step can be seen (never more than frame_interval).
            wait = self.frame_interval - (time.monotonic() - began)
            if wait > 0:
                time.sleep(wait)
            return
        if isinstance(event, events.SamplingFinished):
            images = event.images.numpy()
            batch = messages.Batch(images, job.drawing, event.model_sha256, job.description, frames, job.file)
            if batch.is_morph:
                info = job.drawing.info(None, event.model_sha256, job.description)
                try:
                    batch.animation = animation.save_morph(locations.gallery_dir(), job.drawing.morph_stem, images, info)
                except OSError as error:
                    self.post(messages.SessionError(f"Could not save the morph: {describe_error(error)}"))
            self.batch = batch
            final = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
            self.offer_frame(messages.PreviewFrame(len(job.drawing.grid), len(job.drawing.grid), final, final, final=True, seeds=event.seeds))
        self.post(messages.for_event(event))

    def keep(self, index: int) -> Path:
        """Save image `index` of the last finished batch (not a morph) to the gallery; returns its path."""
        batch = self._finished(index)
        if batch.is_morph:
            raise LookupError(f"A morph is not kept frame by frame: its GIF is {batch.animation or 'not saved'}")
        info = batch.drawing.info(index, batch.model_sha256, batch.model, batch.file)
        path = cats.save_cat(locations.gallery_dir(), batch.images[index], info, batch.drawing.stem(index))
        batch.kept.add(index)
        return path

    def save_animation(self, index: int, x0: bool = False) -> Path:
        """`a`: image `index`'s denoising (x̂0 or x_t, as the preview showed it) as a GIF in the
        gallery folder, ending on the finished image; a morph's GIF is already saved."""
        batch = self._finished(index)
        if batch.is_morph:
            if batch.animation is None:
                raise LookupError("The morph's GIF could not be saved")
            return batch.animation
        shows = "x0" if x0 else "x_t"
        info = {**batch.drawing.info(index, batch.model_sha256, batch.model, batch.file), "shows": shows}
        stem = batch.drawing.stem(index) + ("-x0" if x0 else "")
        final = np.ascontiguousarray(batch.images[index].transpose(1, 2, 0))
        return animation.save_denoising(locations.gallery_dir(), stem, batch.frames[shows].of(index), final, info)

    def _finished(self, index: int) -> messages.Batch:
        batch = self.batch
        if batch is None:
            raise LookupError("Nothing to keep yet: press s to sample some cats")
        if not 0 <= index < len(batch):
            raise LookupError(f"There is no cat {index + 1} in this batch")
        return batch

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            self.closing = True
            self._generation += 1
            thread, self.thread = self.thread, None
        if thread is not None:
            thread.cancel(timeout=timeout)
