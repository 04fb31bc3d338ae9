"""The app's training: opening the run off the UI thread, the pause/resume state machine, the
event bridge to the UI, private copies of the EMA for the sampler, and the run's timelapse
(drawn by `kittyterm.jobs.timelapse.start_timelapse`, as `kittyterm train` draws it).

The run is opened by `kittyterm.jobs.training.open_training` on a loader thread, exactly as
`kittyterm train` opens it (same device, preset, batch, run name, lock and error messages).
Training events reach the UI as Textual messages passed to `post` (the app's thread-safe
`post_message`). Steps and rollbacks are coalesced: they go into a buffer, and a `TrainingTick`
is posted only when none is pending, so the UI takes the newest data whenever it is ready and a
slow UI can never build a queue.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from engine import events
from engine.threads import TrainingThread

from .. import messages, runs
from ..errors import UserError
from ..jobs import timelapse
from ..jobs.training import SHIPPED_INIT, TrainingOptions, TrainingRun, needs_start_choice, open_training
from .state import Toggle, TrainingState

Post = Callable[[object], object]
State = TrainingState


def read_history(path: Path) -> tuple[list[float], int, str, float]:
    """The loss history, step, save time and epoch of a training checkpoint: its header, checked
    as every checkpoint's is (`engine.checkpoint.CheckpointFile`), and the history tensor alone;
    CheckpointError if the file cannot be read."""
    from engine.checkpoint import CheckpointFile

    with CheckpointFile(path) as checkpoint:
        history = checkpoint.tensor("history.loss")
        metadata = checkpoint.metadata
    losses = history.tolist() if history is not None else []
    try:
        step = int(metadata.get("step", len(losses)))
        epoch = float(metadata.get("epoch", 0.0))
    except ValueError:
        step, epoch = len(losses), 0.0
    return losses, step, metadata.get("saved_at", ""), epoch


class TrainingSession:
    """Space starts (loading first), pauses and resumes; `shutdown` saves and lets go of the run."""

    def __init__(
        self,
        post: Post,
        options: TrainingOptions | None,
        checkpoint_every_seconds: float = 120.0,
        budget: tuple[str, int] = ("none", 0),
    ) -> None:
        self.post = post
        self.options = options
        self.checkpoint_every_seconds = checkpoint_every_seconds
        self.budget = budget
        self.state = State.IDLE
        self.want_running = False
        self.run: TrainingRun | None = None
        self.thread: TrainingThread | None = None
        # The `engine.timelapse.TimelapseThread` of each training thread: after a cool-down or the
        # budget, the last one may still draw its final frame while the next one starts.
        self.timelapses: list = []
        self.closing = False
        self._lock = threading.RLock()
        self._run_name: str | None = None

        # coalescing (written on the training thread, drained on the UI thread)
        self._updates_lock = threading.Lock()
        self._updates: list[events.TrainingStep | events.RolledBack] = []
        self._tick_pending = False
        self._stepping = False  # True between TrainingStarted/Resumed and Paused/Finished
        self._ema_request: threading.Event | None = None
        self._ema_copy: tuple[torch.nn.Module, int] | None = None

    # ------------------------------------------------------------------ the run

    @property
    def data_folder(self) -> Path | None:
        return Path(self.options.data) if self.options else None

    @property
    def trainer(self):
        return self.run.trainer if self.run else None

    @property
    def run_name(self) -> str | None:
        """The run this session trains (known before it is opened, when the device is)."""
        if self.run is not None:
            return self.run.name
        if self._run_name is None and self.options is not None:
            from ..jobs.devices import resolve_device
            from ..jobs.training import plan

            try:
                self._run_name = plan(self.options, resolve_device(self.options.device))[0]
            except UserError:
                return None
        return self._run_name

    @property
    def checkpoint_path(self) -> Path | None:
        name = self.run_name
        return runs.checkpoint_path(name) if name else None

    # ------------------------------------------------------------------ budget

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
        """Post the saved curve and timelapse of this run (if any) so a reopened app shows them at once."""
        path = self.checkpoint_path
        if path is None:
            return

        def work() -> None:
            from engine.checkpoint import CheckpointError

            try:
                if path.is_file():
                    self.post(messages.HistoryLoaded(*read_history(path)))
            except CheckpointError as error:  # said now, not only when space fails; the action first, as a long path gets cut
                self.post(messages.SessionError(f"Run {self.run_name} cannot be resumed: F starts it afresh, keeping the old run aside. {error}", "warning"))
            frames = timelapse.read_frames(timelapse.frames_dir(self.run_name))
            if frames:
                self.post(messages.TimelapseLoaded(frames))

        threading.Thread(target=work, name="kittyterm-history", daemon=True).start()

    # ------------------------------------------------------------------ space

    def toggle(self) -> Toggle:
        """Space: start (opening the run first), pause, resume. Returns what it did."""
        with self._lock:
            if self.closing:
                return Toggle.CLOSING
            if self.options is None:
                return Toggle.NO_DATA
            if self.state == State.IDLE:
                if self.needs_start_choice():
                    return Toggle.CHOOSE_START
                self._open(fresh=False)
                return Toggle.LOADING
            if self.state == State.LOADING:
                self.want_running = not self.want_running
                return Toggle.START_AFTER_LOADING if self.want_running else Toggle.STAY_AFTER_LOADING
            if self.state in (State.READY, State.FINISHED, State.COOLED_DOWN):
                if self.budget_reached():
                    return Toggle.BUDGET_REACHED
                self._start_thread()
                return Toggle.STARTED
            if self.state == State.RUNNING:
                self.thread.pause()
                self.state = State.PAUSED
                return Toggle.PAUSING
            self.thread.resume()
            self.state = State.RUNNING
            return Toggle.RESUMED

    def needs_start_choice(self) -> bool:
        from ..jobs.devices import resolve_device

        return self.options is not None and needs_start_choice(self.options, resolve_device(self.options.device))

    def choose_start(self, choice: str) -> bool:
        """Open a new run as the start dialog answered: `fine-tune` (from the shipped model) or a
        preset from scratch. Returns whether it started loading."""
        with self._lock:
            if self.closing or self.options is None or self.state != State.IDLE:
                return False
            if choice == "fine-tune":
                self.options = dataclasses.replace(self.options, init=SHIPPED_INIT, preset=None)
            else:
                self.options = dataclasses.replace(self.options, preset=choice, init=None)
            self._run_name = None
            self._open(fresh=False)
            return True

    def cool_down(self) -> int | None:
        """End the running training gently: the learning rate decays to its floor, then
        training stops (a checkpoint is saved). Returns about the step it ends at (the thread
        starts the cool-down between two steps), or None when nothing is training."""
        with self._lock:
            if self.state != State.RUNNING or self.thread is None:
                return None
            self.thread.cool_down()
            return self.trainer.cool_down_end()

    def start_fresh(self) -> bool:
        """Move the run aside and start a new one (after a checkpoint could not be resumed).
        Only while nothing is loaded or training; returns whether it started."""
        with self._lock:
            if self.closing or self.options is None or self.state != State.IDLE:
                return False
            self._open(fresh=True)
            return True

    def _open(self, fresh: bool) -> None:
        """Open the run on a loader thread (the caller holds the lock): the run whose history the
        app shows, even if another run has trained on the folder since."""
        self.state = State.LOADING
        self.want_running = True
        options = dataclasses.replace(self.options, fresh=fresh, run=self.run_name or self.options.run)
        threading.Thread(target=self._open_run, args=(options,), name="kittyterm-loader", daemon=True).start()

    def _open_run(self, options: TrainingOptions) -> None:
        try:
            run = open_training(options, lambda done, total: self.post(messages.DataProgress(done, total)))
        except UserError as error:
            self._opening_failed(str(error))
            return
        except Exception as error:  # out of memory, unreadable files … must never crash the app
            from engine.threads import describe_error

            self._opening_failed(f"Could not start training: {describe_error(error)}")
            return
        with self._lock:
            if self.closing:
                run.close()
                return
            self.run = run
            trainer = run.trainer
            if options.fresh:  # the frames went aside with the old run
                self.post(messages.TimelapseLoaded([]))
            ready = messages.TrainerReady(trainer.step_count, run.num_images, len(run.skipped), run.resumed, " · ".join(run.notes))
            # The UI mirrors `state` when it handles the message, which may be at once: the state
            # it announces is set first.
            if self.want_running:
                self._start_thread(announce=ready)
            else:
                self.state = State.READY
                self.post(ready)

    def _opening_failed(self, text: str) -> None:
        with self._lock:
            self.state = State.IDLE
            self.want_running = False
        self.post(messages.SessionError(text))

    def _start_thread(self, announce: object | None = None) -> None:
        """Start a training thread on the opened run (the caller holds the lock); `announce` is
        posted once the state is RUNNING and before the thread's first event."""
        max_steps, max_seconds = self.budget_limits()
        thread = TrainingThread(
            self.run.trainer,
            self.run.checkpoint,
            max_steps=max_steps,
            max_seconds=max_seconds,
            checkpoint_every_seconds=self.checkpoint_every_seconds,
            decay_to_budget=True,  # open-ended (no decay) unless a budget is set or a cool-down asked for
        )
        thread.subscribe(self.on_event)
        drawing = timelapse.start_timelapse(self.run, thread)  # after on_event: a pause is shown first
        drawing.subscribe(lambda event: self.post(messages.for_event(event)))
        self.timelapses = [*(old for old in self.timelapses if old.is_alive()), drawing]
        self.thread = thread
        self.state = State.RUNNING
        if announce is not None:
            self.post(announce)
        thread.start()

    # ------------------------------------------------------------------ the event bridge

    def on_event(self, event: object) -> None:
        """Runs on the training thread: coalesce steps and rollbacks, post the rest."""
        if isinstance(event, (events.TrainingStep, events.RolledBack)):
            # A rollback travels in the same stream as the steps, so that the UI cuts its curve
            # at the right place and no step is drawn on the wrong side of it.
            with self._updates_lock:
                self._updates.append(event)
                post = not self._tick_pending
                self._tick_pending = True
            self._serve_ema_request()
            if post:
                self.post(messages.TrainingTick())
            return
        if isinstance(event, (events.TrainingStarted, events.TrainingResumed)):
            self._stepping = True
        elif isinstance(event, (events.TrainingPaused, events.TrainingFinished)):
            self._stepping = False
            self._serve_ema_request()
            if isinstance(event, events.TrainingFinished):
                with self._lock:
                    if self.state in (State.RUNNING, State.PAUSED):
                        if event.reason != "budget":
                            self.state = State.READY
                        else:  # the thread stops at the budget's end, or at a cool-down's
                            self.state = State.FINISHED if self.budget_reached() else State.COOLED_DOWN
        self.post(messages.for_event(event))

    def take_updates(self) -> list[events.TrainingStep | events.RolledBack]:
        """UI thread: the steps and rollbacks since the last call, in order."""
        with self._updates_lock:
            updates, self._updates = self._updates, []
            self._tick_pending = False
            return updates

    # ------------------------------------------------------------------ the EMA for sampling

    def _serve_ema_request(self) -> None:
        """On the training thread, between steps: copy the EMA for a waiting sampler."""
        request = self._ema_request
        if request is not None and self.trainer is not None:
            self._ema_request = None
            self._ema_copy = self._copy_ema()
            request.set()

    def _copy_ema(self) -> tuple[torch.nn.Module, int]:
        """(a private copy of the EMA, the step it is the average at)."""
        trainer = self.trainer
        step = trainer.step_count
        with torch.no_grad():
            model = copy.deepcopy(trainer.ema.module)
        return model.eval().requires_grad_(False), step

    def ema_snapshot(self) -> tuple[torch.nn.Module, int]:
        """A private copy of the current EMA and its step, taken between two training steps when
        training runs (so that the step is the copy's, never a later one)."""
        if self._stepping and self.thread is not None and self.thread.is_alive():
            request = self._ema_request or threading.Event()  # a second sampler shares the wait
            self._ema_request = request
            if request.wait(timeout=30.0) and self._ema_copy is not None:
                snapshot, self._ema_copy = self._ema_copy, None
                return snapshot
            self._ema_request = None
        return self._copy_ema()  # paused or stopped: the EMA is not changing

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop training (the thread saves a checkpoint), wait for it, let go of the run. Idempotent."""
        with self._lock:
            self.closing = True
            thread = self.thread
        if thread is not None:
            request = self._ema_request
            if request is not None:  # never leave a sampler preparer waiting
                request.set()
            thread.stop(timeout=timeout)
        for drawing in self.timelapses:  # a frame being drawn is drawn again when training resumes
            drawing.close(timeout=0)
        if self.run is not None and (thread is None or not thread.is_alive()):
            self.run.close()

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

