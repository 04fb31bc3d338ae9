"""The app's controller: data loading, the trainer and its thread, sampling, and the event bridge.

Everything slow runs off the UI thread: a loader thread decodes the images and builds (or resumes)
the `Trainer`; `TrainingThread` and `SamplingThread` do the work. Their events reach the UI only
as Textual messages passed to `post` (the app's thread-safe `post_message`). High-rate events are
coalesced: training steps go into a buffer and preview frames into a one-frame slot, and a "tick"
message is posted only when none is pending, so the UI takes the newest data whenever it is
ready and a slow UI can never build a queue.

The UI thread calls the public methods (`toggle_training`, `sample`, `keep`, `shutdown` …); they
return at once.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine import events
from engine.checkpoint import CheckpointError, load_model
from engine.data import DataError, load_image_folder
from engine.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from engine.threads import SamplingThread, TrainingThread, describe_error
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS

from . import cats, locations, messages, runs
from .settings import budget_label

Post = Callable[[object], object]

IDLE, LOADING, READY, RUNNING, PAUSED, FINISHED = "idle", "loading", "ready", "running", "paused", "finished"


def to_hwc_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] → (B, H, W, 3) uint8 numpy."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def random_seeds(count: int = 4) -> list[int]:
    rng = random.SystemRandom()
    return [rng.randrange(2**31) for _ in range(count)]


def read_history(path: Path) -> tuple[list[float], int, str, float] | None:
    """The loss history, step, save time and epoch of a training checkpoint, read without the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            losses = f.get_tensor("history.loss").tolist() if "history.loss" in f.keys() else []
    except Exception:
        return None
    try:
        step = int(metadata.get("step", len(losses)))
        epoch = float(metadata.get("epoch", 0.0))
    except ValueError:
        step, epoch = len(losses), 0.0
    return losses, step, metadata.get("saved_at", ""), epoch


class Session:
    def __init__(
        self,
        post: Post,
        data_folder: Path | None,
        preset: str,
        *,
        device: str | None = None,
        train_overrides: dict | None = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        seeds: Callable[[], list[int]] = random_seeds,
        frame_interval: float = 1 / 12,
        checkpoint_every_seconds: float = 120.0,
        budget: tuple[str, int] = ("none", 0),
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.post = post
        self.data_folder = Path(data_folder).expanduser() if data_folder else None
        self.preset = preset
        self.model_config = PRESETS[preset]
        self.device = device
        self.train_overrides = dict(train_overrides or {})
        self.sampler = sampler
        self.steps = steps or DEFAULT_STEPS[sampler]
        self.seed_source = seeds
        self.frame_interval = frame_interval
        self.checkpoint_every_seconds = checkpoint_every_seconds
        self.budget = budget

        self.run_name = runs.run_name(preset, self.data_folder) if self.data_folder else None
        self.state = IDLE
        self.want_running = False
        self.trainer: Trainer | None = None
        self.thread: TrainingThread | None = None
        self.closing = False
        self._lock = threading.RLock()
        self._loader: threading.Thread | None = None

        # training-step coalescing (written on the training thread, drained on the UI thread)
        self._steps_lock = threading.Lock()
        self._step_buffer: list[tuple[int, float | None]] = []
        self._latest_step: events.TrainingStep | None = None
        self._tick_pending = False
        self._stepping = False  # True between TrainingStarted/Resumed and Paused/Finished
        self._ema_request: threading.Event | None = None
        self._ema_copy: torch.nn.Module | None = None

        # sampling
        self.sampling: SamplingThread | None = None
        self._generation = 0
        self._frame_lock = threading.Lock()
        self._frame_slot: messages.PreviewFrame | None = None
        self._frame_pending = False
        self.batch: messages.Batch | None = None
        self._loaded_model: tuple[Path, float, object] | None = None

    # ------------------------------------------------------------------ paths and budget

    @property
    def checkpoint_path(self) -> Path | None:
        return runs.run_dir(self.run_name) / runs.CHECKPOINT_NAME if self.run_name else None

    def budget_limits(self) -> tuple[int | None, float | None]:
        kind, amount = self.budget
        if kind == "steps":
            return amount, None
        if kind == "minutes":
            return None, amount * 60.0
        return None, None

    def set_budget(self, budget: tuple[str, int]) -> None:
        self.budget = budget
        thread = self.thread
        if thread is not None:
            thread.max_steps, thread.max_seconds = self.budget_limits()

    def budget_reached(self) -> bool:
        max_steps, _ = self.budget_limits()
        return bool(max_steps is not None and self.trainer and self.trainer.step_count >= max_steps)

    def load_history(self) -> None:
        """Post the saved curve of this run (if any) so a reopened app shows it at once."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return

        def work() -> None:
            found = read_history(path)
            if found is not None:
                self.post(messages.HistoryLoaded(*found))

        threading.Thread(target=work, name="kittyterm-history", daemon=True).start()

    # ------------------------------------------------------------------ training

    def toggle_training(self) -> None:
        """Space: start (loading the data first), pause, resume."""
        with self._lock:
            if self.closing:
                return
            if self.data_folder is None:
                self.post(messages.SessionError("No data folder: start kittyterm with --data DIR to train"))
                return
            if self.state == IDLE:
                self.state = LOADING
                self.want_running = True
                self._loader = threading.Thread(target=self._load_and_build, name="kittyterm-loader", daemon=True)
                self._loader.start()
            elif self.state == LOADING:
                self.want_running = not self.want_running
                text = "training starts when the images are loaded" if self.want_running else "will not start training after loading"
                self.post(messages.SessionInfo(f"Loading images: {text}"))
            elif self.state == READY or self.state == FINISHED:
                if self.budget_reached():
                    self.post(messages.SessionError(f"Budget of {budget_label(self.budget)} reached: press b to raise it", "warning"))
                    return
                self._start_thread()
            elif self.state == RUNNING and self.thread is not None:
                self.thread.pause()
                self.state = PAUSED
            elif self.state == PAUSED and self.thread is not None:
                self.thread.resume()
                self.state = RUNNING

    def _progress(self, done: int, total: int) -> None:
        self.post(messages.DataProgress(done, total))

    def _load_and_build(self) -> None:
        assert self.data_folder is not None
        note = ""
        try:
            image_set = load_image_folder(self.data_folder, self.model_config.image_size, locations.cache_dir() / "images", self._progress)
            trainer, resumed, note = self._build_trainer(image_set.images)
        except DataError as error:
            self._loading_failed(str(error))
            return
        except Exception as error:  # out of memory, unreadable files … must never crash the app
            self._loading_failed(f"Could not start training: {describe_error(error)}")
            return
        with self._lock:
            if self.closing:
                return
            self.trainer = trainer
            self.post(messages.TrainerReady(trainer.step_count, trainer.num_images, len(image_set.skipped), resumed, note))
            if self.want_running:
                self._start_thread()
            else:
                self.state = READY

    def _loading_failed(self, text: str) -> None:
        with self._lock:
            self.state = IDLE
            self.want_running = False
        self.post(messages.SessionError(text))

    def _build_trainer(self, images: torch.Tensor) -> tuple[Trainer, bool, str]:
        path = self.checkpoint_path
        assert path is not None and self.run_name is not None
        if path.is_file():
            try:
                return Trainer.resume(path, images, self.device, self.train_overrides or None), True, ""
            except (CheckpointError, ValueError, KeyError) as error:
                moved = runs.archive_run(self.run_name)
                where = f"; the old run was moved to {moved.name}" if moved else ""
                note = f"Could not resume ({str(error).splitlines()[0]}){where}: starting afresh"
        else:
            note = ""
        config = TrainConfig(**self.train_overrides)
        return Trainer(self.model_config, images, config, device=self.device), False, note

    def _start_thread(self) -> None:
        """Start a training thread on the existing trainer (caller holds the lock)."""
        assert self.trainer is not None and self.checkpoint_path is not None
        max_steps, max_seconds = self.budget_limits()
        thread = TrainingThread(
            self.trainer,
            self.checkpoint_path,
            max_steps=max_steps,
            max_seconds=max_seconds,
            checkpoint_every_seconds=self.checkpoint_every_seconds,
        )
        thread.subscribe(self._on_training_event)
        self.thread = thread
        self.state = RUNNING
        thread.start()

    def _on_training_event(self, event: object) -> None:
        """Runs on the training thread."""
        if isinstance(event, events.TrainingStep):
            with self._steps_lock:
                self._step_buffer.append((event.step, event.loss))
                self._latest_step = event
                post = not self._tick_pending
                self._tick_pending = True
            self._serve_ema_request()
            if post:
                self.post(messages.TrainingTick())
            return
        if type(event).__name__ == "RolledBack":
            # The trainer went back to step `event.step`: in the same stream as the steps, tell the
            # UI to cut its curve there (a None loss), so no step is drawn on the wrong side of it.
            with self._steps_lock:
                self._step_buffer.append((event.step, None))
                post = not self._tick_pending
                self._tick_pending = True
            if post:
                self.post(messages.TrainingTick())
        if isinstance(event, (events.TrainingStarted, events.TrainingResumed)):
            self._stepping = True
        elif isinstance(event, (events.TrainingPaused, events.TrainingFinished)):
            self._stepping = False
            self._serve_ema_request()
            if isinstance(event, events.TrainingFinished):
                with self._lock:
                    if self.state in (RUNNING, PAUSED):
                        self.state = FINISHED if event.reason == "budget" else READY
        message = messages.wrap(event)
        if message is not None:
            self.post(message)

    def take_training_updates(self) -> tuple[list[tuple[int, float | None]], events.TrainingStep | None]:
        """UI thread: the (step, loss) pairs since the last call and the newest step event.

        A pair (step, None) means training rolled back to `step`: the curve is cut there."""
        with self._steps_lock:
            buffer, self._step_buffer = self._step_buffer, []
            self._tick_pending = False
            return buffer, self._latest_step

    # ------------------------------------------------------------------ sampling

    def _serve_ema_request(self) -> None:
        """On the training thread, between steps: copy the EMA for a waiting sampler."""
        request = self._ema_request
        if request is not None and self.trainer is not None:
            self._ema_request = None
            self._ema_copy = self._copy_ema()
            request.set()

    def _copy_ema(self) -> torch.nn.Module:
        assert self.trainer is not None
        with torch.no_grad():
            model = copy.deepcopy(self.trainer.ema.module)
        return model.eval().requires_grad_(False)

    def _ema_snapshot(self) -> torch.nn.Module:
        """A private copy of the current EMA, taken between two training steps when training runs."""
        if self._stepping and self.thread is not None and self.thread.is_alive():
            request = self._ema_request or threading.Event()  # a second sampler shares the wait
            self._ema_request = request
            if request.wait(timeout=30.0) and self._ema_copy is not None:
                model, self._ema_copy = self._ema_copy, None
                return model
            self._ema_request = None
        return self._copy_ema()  # paused or stopped: the EMA is not changing

    def sample(self) -> None:
        """`s`: sample a batch from the current EMA (or a saved model) in the background."""
        with self._lock:
            if self.closing:
                return
            self._generation += 1
            generation = self._generation
            old = self.sampling
            self.sampling = None
        if old is not None:
            old.cancel(timeout=0)
        threading.Thread(target=self._prepare_sampling, args=(generation,), name="kittyterm-sample-prep", daemon=True).start()

    def cancel_sampling(self) -> bool:
        with self._lock:
            thread = self.sampling
            if thread is None or not thread.is_alive():
                return False
            self._generation += 1
            self.sampling = None
        thread.cancel(timeout=0)
        self.post(messages.SamplingCancelled(None))
        return True

    def _model_for_sampling(self) -> tuple[torch.nn.Module, object, str, str, str | torch.device]:
        """(model, schedule, sha256, description, device)."""
        trainer = self.trainer
        if trainer is not None:
            model = self._ema_snapshot()
            return model, trainer.schedule, "", f"{self.run_name} EMA @ step {trainer.step_count}", trainer.device
        own = self.checkpoint_path
        path = own if own is not None and own.is_file() else runs.default_model()
        if not path.is_file():
            hint = "press space to train one" if self.data_folder else "start kittyterm with --data DIR to train one"
            raise FileNotFoundError(f"No model to sample from yet ({hint}; the shipped kitty-64 model is not installed)")
        mtime = path.stat().st_mtime
        cached = self._loaded_model
        if cached is not None and cached[0] == path and cached[1] == mtime:
            loaded = cached[2]
        else:
            loaded = load_model(path)
            self._loaded_model = (path, mtime, loaded)
        step = getattr(loaded, "step", 0)
        description = f"{path.parent.name if path.name == runs.CHECKPOINT_NAME else path.stem}" + (f" @ step {step}" if step else "")
        return loaded.model, loaded.schedule, loaded.sha256, description, "cpu"

    def _prepare_sampling(self, generation: int) -> None:
        try:
            model, schedule, sha256, description, device = self._model_for_sampling()
            seeds = list(self.seed_source())
            thread = SamplingThread(model, schedule, seeds, self.sampler, self.steps, sha256, device)
            total = thread.total_steps
        except FileNotFoundError as error:
            self.post(messages.SessionError(str(error)))
            return
        except Exception as error:
            self.post(messages.SessionError(f"Could not sample: {describe_error(error)}"))
            return
        with self._lock:
            if self.closing or generation != self._generation:
                return
            self.sampling = thread
        thread.subscribe(lambda event: self._on_sampling_event(event, generation, description, total))
        self.post(messages.SamplingStarted(tuple(seeds), total, description, generation))
        from engine.generate import starting_noise

        noise = to_hwc_uint8(starting_noise(seeds, model.config.image_size, model.config.in_channels))
        self._offer_frame(messages.PreviewFrame(0, total, noise, noise, seeds=tuple(seeds)))
        thread.start()

    def _offer_frame(self, frame: messages.PreviewFrame) -> None:
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

    def _on_sampling_event(self, event: object, generation: int, description: str, total: int) -> None:
        """Runs on the sampling thread."""
        if generation != self._generation:
            return  # a cancelled or replaced run
        if isinstance(event, events.SamplingStep):
            began = time.monotonic()
            self._offer_frame(messages.PreviewFrame(event.step + 1, event.total, to_hwc_uint8(event.x_t), to_hwc_uint8(event.x0)))
            # Pace fast samplers so that every step can be seen (never more than frame_interval).
            wait = self.frame_interval - (time.monotonic() - began)
            if wait > 0:
                time.sleep(wait)
            return
        if isinstance(event, events.SamplingFinished):
            images = event.images.numpy()
            self.batch = messages.Batch(images, event.seeds, event.sampler, event.steps, event.model_sha256, description)
            final = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
            self._offer_frame(messages.PreviewFrame(total, total, final, final, final=True, seeds=event.seeds))
        message = messages.wrap(event)
        if message is not None:
            self.post(message)

    @property
    def generation(self) -> int:
        """Bumped by every sample, cancel and shutdown: messages of older runs are stale."""
        return self._generation

    @property
    def is_sampling(self) -> bool:
        thread = self.sampling
        return thread is not None and thread.is_alive()

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

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel sampling, stop training (the thread saves a checkpoint), wait for both. Idempotent."""
        with self._lock:
            self.closing = True
            self._generation += 1
            sampling, self.sampling = self.sampling, None
            thread = self.thread
        if sampling is not None:
            sampling.cancel(timeout=min(timeout, 5.0))
        if thread is not None:
            request = self._ema_request
            if request is not None:  # never leave a sampler preparer waiting
                request.set()
            thread.stop(timeout=timeout)

    @property
    def busy_threads(self) -> list[str]:
        alive = []
        if self.thread is not None and self.thread.is_alive():
            alive.append("training")
        if self.sampling is not None and self.sampling.is_alive():
            alive.append("sampling")
        return alive
