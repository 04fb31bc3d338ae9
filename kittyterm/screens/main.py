"""The main screen: denoising preview on the left; training stats, loss curve and the learning
timelapse on the right."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine import events
from engine.samplers import DEFAULT_STEPS

from .. import messages, settings
from ..jobs.animation import MORPH_FRAME_MS
from ..session import Session, Toggle, TrainingState
from ..widgets.loss_plot import LossPlot
from ..widgets.preview import CatGrid
from ..widgets.stats import StatsPanel, TrainingStats
from ..widgets.status import StatusLine
from ..widgets.timelapse import TimelapseStrip
from ..wording import counted
from .generator import GeneratorScreen, model_label

WELCOME_TRAIN = "Press space to train on {folder} · s samples cats · g opens the gallery · ? help"
PREVIEW_HINT = "Press s to watch cats appear out of noise, one denoising step at a time; o chooses the model, sampler, seed and how many."
SPACE = "Start, pause or resume training (pausing saves a checkpoint)"
CHOOSE = "Choose a cat of the finished batch"
PICK = "Choose cat 1 to 9"
FRESH = "Move this run aside (kept, never deleted) and start a new one; asks first"
MORPH_FRAME_SECONDS = MORPH_FRAME_MS / 1000
WELCOME_NO_DATA = "No data folder: s samples from the saved model · start with kittyterm --data DIR to train · ? help"


def short_time(stamp: str) -> str:
    """'2026-01-02T13:14:15+0000' → '13:14:15' when that is today, else 'Jan 02 13:14'."""
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").astimezone()
    except ValueError:
        return stamp[:19].replace("T", " ")
    return when.strftime("%H:%M:%S") if when.date() == datetime.now().astimezone().date() else when.strftime("%b %d %H:%M")


class MainScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]

    BINDINGS = [
        Binding("space", "toggle_training('train')", "Train", tooltip=SPACE),
        Binding("space", "toggle_training('pause')", "Pause", tooltip=SPACE),
        Binding("space", "toggle_training('resume')", "Resume", tooltip=SPACE),
        Binding("s", "sample", "Sample", tooltip="Sample cats with the generator settings"),
        Binding("r", "reroll", "Re-roll", show=False, tooltip="Sample again with the same settings and a new seed"),
        Binding("o", "generator", "Generator", tooltip="Generator settings: model, sampler, steps, seed, how many cats, view"),
        Binding("x", "toggle_x0", "x₀/xₜ", show=False, tooltip="Show the predicted clean image x₀ or the noisy xₜ"),
        Binding("k", "keep", "Keep", show=False, tooltip="Keep the selected cat in the gallery"),
        Binding("a", "save_animation", "Save GIF", show=False, tooltip="Save the selected cat's denoising (xₜ or x₀, as shown) as a GIF"),
        Binding("K", "keep_all", "Keep all", show=False, tooltip="Keep every cat of the batch"),
        Binding("left", "select(-1)", "Previous cat", show=False, tooltip=CHOOSE),
        Binding("right", "select(1)", "Next cat", show=False, tooltip=CHOOSE),
        Binding("up", "select(-2)", "Cat above", show=False, tooltip=CHOOSE),
        Binding("down", "select(2)", "Cat below", show=False, tooltip=CHOOSE),
        Binding("1", "select_cat(0)", "Cat 1", show=False, tooltip=PICK),
        Binding("2", "select_cat(1)", "Cat 2", show=False, tooltip=PICK),
        Binding("3", "select_cat(2)", "Cat 3", show=False, tooltip=PICK),
        Binding("4", "select_cat(3)", "Cat 4", show=False, tooltip=PICK),
        Binding("5", "select_cat(4)", "Cat 5", show=False, tooltip=PICK),
        Binding("6", "select_cat(5)", "Cat 6", show=False, tooltip=PICK),
        Binding("7", "select_cat(6)", "Cat 7", show=False, tooltip=PICK),
        Binding("8", "select_cat(7)", "Cat 8", show=False, tooltip=PICK),
        Binding("9", "select_cat(8)", "Cat 9", show=False, tooltip=PICK),
        Binding("b", "cycle_budget", "Budget", show=False, tooltip="Cycle the training budget (steps or minutes): the learning rate decays to its floor as it ends"),
        Binding("c", "cool_down", "Cool down", show=False, tooltip="Decay the learning rate to its floor over the next quarter of the steps so far, then stop"),
        Binding("escape", "cancel_sampling", "Cancel sampling", show=False, tooltip="Cancel sampling"),
        Binding("F", "start_fresh", "Start afresh", show=False, tooltip=FRESH),
        Binding("g", "gallery", "Gallery", tooltip="Browse the cats you kept"),
    ]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.training = session.training
        self.sampling = session.sampling
        self.stats = TrainingStats(run=self.training.run_name or "", budget=self.training.budget)
        self.stats.budget_text = settings.budget_label(self.training.budget)
        self.frame: messages.PreviewFrame | None = None
        self.ready_note = ""  # what opening the run said, kept for the status when training starts at once
        self.selected: int | None = None
        self.sampling_total = 0
        self.sampling_model = ""
        self.sampling_began = 0.0
        self.morph_frame = 0  # the frame of a finished morph that the preview shows now
        self.morph_ticks = 0
        self.morph_player = None  # the timer that plays it

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="panels"):
            with Vertical(id="preview-panel"):
                yield Static(id="preview-caption")
                yield CatGrid(id="preview")
                yield Static(PREVIEW_HINT, id="preview-empty")
            with Vertical(id="training-panel"):
                yield Static(id="training-caption")
                yield StatsPanel(id="stats")
                yield LossPlot(id="loss")
                yield Static(id="timelapse-caption")
                yield TimelapseStrip(id="timelapse")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#preview-panel").border_title = "Denoising preview"
        self.query_one("#training-panel").border_title = "Training"
        self.update_training_caption()
        self.show_timelapse()
        self.show_frame()
        self.show_stats()
        folder = self.training.data_folder
        if folder is None:
            self.set_status(WELCOME_NO_DATA)
        else:
            self.set_status(WELCOME_TRAIN.format(folder="/".join(folder.parts[-2:]) if folder.name in ("train", "images", "data") else folder.name))

    # ------------------------------------------------------------------ helpers

    @property
    def status(self) -> StatusLine:
        return self.query_one("#status", StatusLine)

    def set_status(self, text: str, level: str = "info") -> None:
        self.status.set(text, level)

    def show_stats(self) -> None:
        self.stats.smoothed = self.query_one(LossPlot).smoothed_loss
        trainer = self.training.trainer
        if trainer is not None:
            self.stats.batch_size = trainer.config.batch_size
        self.query_one(StatsPanel).show(self.stats)
        self.update_training_caption()

    def update_training_caption(self) -> None:
        run = self.training.run_name or "no data folder"
        text = Text.assemble(("Training ", "bold"), (f"· {run}", "dim"))
        self.query_one("#training-caption", Static).update(text)

    @property
    def show_x0(self) -> bool:
        return self.sampling.generator.view == "x0"

    def generator_summary(self) -> str:
        """The generator settings in a few words, the model first (a narrow caption cuts the end):
        model, sampler and steps, cats, seed."""
        g = self.sampling.generator
        seed = f"seed {g.seed} locked" if g.locked else "random seed"
        steps = g.steps or DEFAULT_STEPS[g.sampler]
        return f"{model_label(g.model)} · {g.sampler} {steps} steps · {counted(g.count, 'cat')} · {seed} (o)"

    def update_preview_caption(self) -> None:
        frame = self.frame
        text = Text(no_wrap=not self.has_class("-tall"), overflow="ellipsis")
        text.append("Preview ", "bold")
        if frame is None:
            text.append("· ", "dim")
        elif not frame.final:
            text.append(f"· step {frame.step}/{frame.total} · ", "")
            text.append("predicted x₀" if self.show_x0 else "noisy xₜ", "bold cyan")
            text.append(" (x) · ", "dim")
        else:
            batch = self.sampling.batch
            index = self.selected if self.selected is not None else 0
            text.append("· done ", "bold green")
            if batch is not None and batch.is_morph:
                text.append(f"· {batch.label(0)} · frame {self.morph_frame + 1}/{len(batch)}", "")
            elif batch is not None and index < len(batch):
                text.append(f"· {batch.label(index)}", "")
                if index in batch.kept:
                    text.append(" ✓ kept", "bold green")
                else:
                    text.append("  (k keeps)", "dim")
            text.append(" · ", "dim")
        text.append(self.generator_summary(), "dim")
        self.query_one("#preview-caption", Static).update(text)

    def forget_shown_run(self) -> None:
        """Clear the curve, the figures and the film strip of a run being moved aside, so that
        nothing of it shows beside the new run while that one loads."""
        stats = self.stats
        self.stats = TrainingStats(run=stats.run, budget=stats.budget, budget_text=stats.budget_text)
        self.query_one(LossPlot).set_losses([])
        self.query_one(TimelapseStrip).set_frames([])
        self.show_timelapse()
        self.show_stats()

    def show_timelapse(self) -> None:
        """The strip and its caption, shown once the run has frames."""
        strip = self.query_one(TimelapseStrip)
        caption = self.query_one("#timelapse-caption", Static)
        strip.display = caption.display = bool(strip.steps)
        if strip.steps:
            count = len(strip.steps)
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append("Learning ", "bold")
            text.append(f"· step {strip.steps[0]:,} → {strip.steps[-1]:,} · {counted(count, 'frame')}", "dim")
            caption.update(text)

    def show_frame(self) -> None:
        frame = self.frame
        grid = self.query_one(CatGrid)
        grid.display = frame is not None
        self.query_one("#preview-empty").display = frame is None
        if frame is None:
            grid.set_cats(None)
        else:
            images = frame.x0 if (self.show_x0 and not frame.final) else frame.x_t
            batch = self.sampling.batch if frame.final else None
            if batch is not None and batch.is_morph:
                grid.set_cats(images[self.morph_frame : self.morph_frame + 1])
            else:
                grid.set_cats(images, self.selected if frame.final else None, batch.kept if batch else None)
        self.update_preview_caption()

    def play_morph(self) -> None:
        """Show the next frame of the finished morph: there and back, over and over."""
        batch = self.sampling.batch
        if batch is None or not batch.is_morph or self.frame is None or not self.frame.final:
            self.stop_morph()
            return
        self.morph_ticks += 1
        loop = 2 * len(batch) - 2
        position = self.morph_ticks % loop
        self.morph_frame = position if position < len(batch) else loop - position
        self.show_frame()

    def stop_morph(self) -> None:
        if self.morph_player is not None:
            self.morph_player.stop()
            self.morph_player = None
        self.morph_frame = self.morph_ticks = 0

    def sync_state(self) -> None:
        """Mirror the session's state in the stats panel and the footer."""
        self.stats.state = self.training.state
        if self.stats.state != TrainingState.LOADING:
            self.stats.loading = None
        self.show_stats()
        self.refresh_bindings()

    # ------------------------------------------------------------------ actions

    def space_meaning(self) -> str:
        state = self.training.state
        return "pause" if state == TrainingState.RUNNING else "resume" if state == TrainingState.PAUSED else "train"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Space shows (and is) Train, Pause or Resume, whichever applies now."""
        if action == "toggle_training" and parameters:
            return parameters[0] == self.space_meaning()
        return True

    def action_toggle_training(self, meaning: str | None = None) -> None:
        outcome = self.training.toggle()
        if outcome == Toggle.NO_DATA:
            self.set_status("No data folder: start kittyterm with --data DIR to train", "error")
        elif outcome == Toggle.CHOOSE_START:
            self.ask_how_to_start()
        elif outcome == Toggle.LOADING:
            self.set_status(f"Loading images from {self.training.data_folder}…")
        elif outcome in (Toggle.START_AFTER_LOADING, Toggle.STAY_AFTER_LOADING):
            then = "training starts when they are loaded" if outcome == Toggle.START_AFTER_LOADING else "training will not start after loading"
            self.set_status(f"Loading images: {then} (space toggles)")
        elif outcome == Toggle.BUDGET_REACHED:
            self.set_status(f"Budget of {settings.budget_label(self.training.budget)} reached: press b to raise it", "warning")
        elif outcome == Toggle.PAUSING:
            self.set_status("Pausing: saving a checkpoint…")
        elif outcome == Toggle.RESUMED:
            self.set_status("Training resumed")
        self.sync_state()

    def ask_how_to_start(self) -> None:
        """A new run on this folder: fine-tune the shipped model or start from scratch (remembered with the run)."""
        from .start_from import StartFromScreen

        def answered(choice: str | None) -> None:
            if choice and self.training.choose_start(choice):
                how = "fine-tuning the shipped cat model" if choice == "fine-tune" else f"{choice} from scratch"
                self.set_status(f"New run, {how}: loading images from {self.training.data_folder}…")
            self.sync_state()

        self.app.push_screen(StartFromScreen(self.training.data_folder.name), answered)

    def action_start_fresh(self) -> None:
        if self.training.options is None:
            self.set_status("No data folder: start kittyterm with --data DIR to train", "error")
            return
        if self.training.state != TrainingState.IDLE:
            self.set_status("F starts a run afresh before training begins: quit and reopen to start one", "warning")
            return

        def answered(yes: bool | None) -> None:
            if yes and self.training.start_fresh():
                self.forget_shown_run()
                self.set_status(f"Starting {self.training.run_name} afresh: loading images from {self.training.data_folder}…")
                self.sync_state()

        from .confirm import ConfirmScreen

        self.app.push_screen(ConfirmScreen(f"Move run {self.training.run_name} aside and start a new one? The old run is kept."), answered)

    def action_sample(self, new_seed: bool = False) -> None:
        generator = self.sampling.sample(new_seed)
        settings.update(generator=generator)
        self.set_status(f"Preparing to sample from seed {generator.seed}…")
        self.update_preview_caption()

    def action_reroll(self) -> None:
        self.action_sample(new_seed=True)

    def action_generator(self) -> None:
        from ..jobs.models import active_runs

        def chosen(generator: settings.Generator | None) -> None:
            if generator is None:
                return
            self.sampling.generator = generator
            settings.update(generator=generator)
            self.set_status(f"Generator: {self.generator_summary()} · s samples")
            self.show_frame()

        self.app.push_screen(GeneratorScreen(self.sampling.generator, active_runs()), chosen)

    def action_toggle_x0(self) -> None:
        view = "x_t" if self.show_x0 else "x0"
        self.sampling.generator = dataclasses.replace(self.sampling.generator, view=view)
        settings.update(generator=self.sampling.generator)
        self.set_status("Showing the predicted clean image x₀" if self.show_x0 else "Showing the noisy image xₜ")
        self.show_frame()

    def finished_batch(self, what: str):
        """The finished batch whose images `k` and `a` use, or None (saying why in the status)."""
        batch = self.sampling.batch
        if batch is None or self.frame is None or not self.frame.final:
            self.set_status(f"Nothing to {what} yet: press s and wait for the cats to finish", "warning")
            return None
        return batch

    def action_keep(self) -> None:
        batch = self.finished_batch("keep")
        if batch is not None and batch.is_morph:
            self.set_status(f"A morph is not kept frame by frame: its GIF is {batch.animation or 'not saved'}", "warning")
        elif batch is not None:
            self._keep([self.selected or 0])

    def action_keep_all(self) -> None:
        batch = self.finished_batch("keep")
        if batch is not None and batch.is_morph:
            self.action_keep()
        elif batch is not None:
            self._keep([i for i in range(len(batch)) if i not in batch.kept])

    def action_save_animation(self) -> None:
        batch = self.finished_batch("save")
        if batch is None:
            return
        index = self.selected or 0
        try:
            path = self.sampling.save_animation(index, self.show_x0)
        except (LookupError, OSError) as error:
            self.set_status(f"Could not save the GIF: {getattr(error, 'strerror', None) or error}", "error")
            return
        if batch.is_morph:
            self.set_status(f"The morph's GIF is {path}", "success")
        else:
            shown = "x₀" if self.show_x0 else "xₜ"
            self.set_status(f"Saved the denoising ({shown}) of {batch.label(index)} to {path}", "success")

    def _keep(self, indices: list[int]) -> None:
        saved = []
        try:
            for index in indices:
                saved.append(self.sampling.keep(index))
        except (LookupError, OSError) as error:
            self.set_status(f"Could not keep the cat: {error}", "error")
            return
        if not saved:
            self.set_status("All these cats are already in the gallery", "warning")
        elif len(saved) == 1:
            self.set_status(f"Kept {saved[0].name} in the gallery (g to browse)", "success")
        else:
            self.set_status(f"Kept {counted(len(saved), 'cat')} in the gallery (g to browse)", "success")
        self.show_frame()

    def action_select(self, delta: int) -> None:
        """Move the selection: ±1 along a row, ±2 a row up or down (in the grid's columns)."""
        batch = self.sampling.batch
        if batch is None or batch.is_morph or self.frame is None or not self.frame.final:
            return
        current = self.selected or 0
        target = current + (delta if abs(delta) == 1 else (delta // 2) * self.query_one(CatGrid).columns)
        if 0 <= target < len(batch):
            self.selected = target
            self.show_frame()

    def action_select_cat(self, index: int) -> None:
        batch = self.sampling.batch
        if batch is not None and not batch.is_morph and self.frame is not None and self.frame.final and index < len(batch):
            self.selected = index
            self.show_frame()

    def action_cycle_budget(self) -> None:
        budgets = settings.BUDGETS
        current = tuple(self.training.budget)
        index = (budgets.index(current) + 1) % len(budgets) if current in budgets else 0
        budget = budgets[index]
        self.training.set_budget(budget)
        settings.update(budget=budget)
        self.stats.budget = budget
        self.stats.budget_text = settings.budget_label(budget)
        self.set_status(f"Training budget: {self.stats.budget_text} (b changes it)")
        self.show_stats()

    def action_cool_down(self) -> None:
        end = self.training.cool_down()
        if end is None:
            self.set_status("c cools down a training that runs: press space first", "warning")
        else:
            self.set_status(f"Cooling down: the learning rate decays to its floor by about step {end:,}, then training stops")

    def action_cancel_sampling(self) -> None:
        if self.sampling.cancel():
            self.set_status("Sampling cancelled")
            self.update_preview_caption()

    def action_gallery(self) -> None:
        self.app.action_gallery()

    # ------------------------------------------------------------------ session messages

    def on_data_progress(self, message: messages.DataProgress) -> None:
        self.stats.loading = (message.done, message.total)
        self.sync_state()

    def on_trainer_ready(self, message: messages.TrainerReady) -> None:
        self.stats.loading = None
        self.stats.images = message.num_images
        self.stats.step = message.step
        run = self.training.run_name
        self.ready_note = message.note
        if message.note:
            self.set_status(message.note, "warning")
        elif message.resumed:
            self.set_status(f"Resumed {run} at step {message.step:,} on {message.num_images:,} images")
        else:
            self.set_status(f"New run {run} on {message.num_images:,} images")
        if message.skipped and not message.note:
            self.set_status(f"{self.status.text} ({counted(message.skipped, 'unreadable file')} skipped)", "warning")
        self.sync_state()

    def on_history_loaded(self, message: messages.HistoryLoaded) -> None:
        if self.training.trainer is not None:
            return
        self.query_one(LossPlot).set_losses(message.losses)
        self.stats.step = message.step
        self.stats.epoch = message.epoch
        saved = short_time(message.saved_at)
        self.stats.checkpoint = f"{saved} (step {message.step:,})" if saved else f"step {message.step:,}"
        self.set_status(f"Run {self.training.run_name} was saved at step {message.step:,}: press space to resume it")
        self.show_stats()

    def on_session_error(self, message: messages.SessionError) -> None:
        self.set_status(message.text, message.level)
        self.sync_state()

    def on_training_started(self, message: messages.TrainingStarted) -> None:
        event = message.event
        self.query_one(LossPlot).set_losses(event.losses)
        self.stats.step = event.step
        self.stats.images = event.num_images
        training = f"Training on {event.num_images:,} images from step {event.step:,} (space pauses)"
        if self.ready_note:  # else it is gone before it can be read
            self.set_status(f"{self.ready_note} · {training}", "warning")
            self.ready_note = ""
        else:
            self.set_status(training)
        self.sync_state()

    def on_training_tick(self, message: messages.TrainingTick) -> None:
        """Steps and rollbacks, in the order they happened; a rollback cuts the curve."""
        plot = self.query_one(LossPlot)
        fresh: list[float] = []
        expected = len(plot.losses) + 1
        latest = None
        for event in self.training.take_updates():
            if isinstance(event, events.RolledBack):
                plot.extend(fresh)
                fresh = []
                plot.set_losses(plot.losses[: event.step])
                self.query_one(TimelapseStrip).drop_after(event.step)
                self.show_timelapse()
                expected = len(plot.losses) + 1
                self.stats.step = event.step
                self.set_status(
                    f"NaN losses: went back from step {event.from_step:,} to {event.step:,} with lr {event.lr:.1e} ({event.reason})",
                    "warning",
                )
            elif event.step >= expected:
                fresh.append(event.loss)
                expected = event.step + 1
                latest = event
        if fresh:
            plot.extend(fresh)
        if latest is not None:
            s = self.stats
            s.step, s.loss, s.lr, s.epoch = latest.step, latest.loss, latest.lr, latest.epoch
            s.images_per_second, s.elapsed = latest.images_per_second, latest.elapsed
        self.stats.state = self.training.state
        self.show_stats()

    def on_training_paused(self, message: messages.TrainingPaused) -> None:
        self.set_status(f"Paused at step {message.event.step:,}, checkpoint saved: space resumes")
        self.sync_state()

    def on_training_resumed(self, message: messages.TrainingResumed) -> None:
        self.sync_state()

    def on_training_finished(self, message: messages.TrainingFinished) -> None:
        event = message.event
        if self.training.state == TrainingState.COOLED_DOWN:
            self.set_status(f"Cooled down at step {event.step:,}, checkpoint saved: space trains on (at the full learning rate again)", "success")
        elif event.reason == "budget":
            self.set_status(f"Budget reached at step {event.step:,}: press b to raise it, then space", "success")
        self.sync_state()

    def on_checkpoint_saved(self, message: messages.CheckpointSaved) -> None:
        event = message.event
        self.stats.checkpoint = f"{time.strftime('%H:%M:%S')} (step {event.step:,})"
        self.show_stats()

    def on_step_skipped(self, message: messages.StepSkipped) -> None:
        event = message.event
        self.stats.skipped_steps = event.total_skipped
        self.set_status(f"NaN loss at step {event.step:,}: update skipped ({event.total_skipped} so far)", "warning")
        self.show_stats()

    def on_engine_error(self, message: messages.EngineError) -> None:
        event = message.event
        self.set_status(f"{event.source.capitalize()} failed: {event.message}", "error")
        self.sync_state()

    def on_sampling_started(self, message: messages.SamplingStarted) -> None:
        if message.generation != self.sampling.generation:
            return  # cancelled (or replaced) before this message arrived
        self.sampling_total = message.total
        self.sampling_model = message.model
        self.sampling_began = time.monotonic()
        self.selected = None
        self.stop_morph()
        self.set_status(f"Sampling {message.what} from {message.model} ({counted(message.total, 'step')}; esc cancels)")

    def on_preview_tick(self, message: messages.PreviewTick) -> None:
        frame = self.sampling.take_frame()
        if frame is None:
            return
        if frame.final and self.selected is None:
            self.selected = 0
        self.frame = frame
        self.show_frame()

    def on_sampling_finished(self, message: messages.SamplingFinished) -> None:
        event = message.event
        batch = self.sampling.batch
        if batch is not None and batch.is_morph:
            self.stop_morph()
            self.morph_player = self.set_interval(MORPH_FRAME_SECONDS, self.play_morph)
            if batch.animation is not None:
                self.set_status(f"{batch.drawing.summary.capitalize()} in {event.seconds:.1f} s, saved to {batch.animation}", "success")
            return
        what = batch.drawing.summary if batch is not None else "Cats"
        self.set_status(f"{what[0].upper()}{what[1:]} in {event.seconds:.1f} s: ←/→ choose, k keeps one, K keeps all, a saves its GIF", "success")

    def on_sampling_cancelled(self, message: messages.SamplingCancelled) -> None:
        self.update_preview_caption()

    def on_timelapse_loaded(self, message: messages.TimelapseLoaded) -> None:
        self.query_one(TimelapseStrip).set_frames([(frame.step, frame.images) for frame in message.frames])
        self.show_timelapse()

    def on_timelapse_frame(self, message: messages.TimelapseFrame) -> None:
        event = message.event
        self.query_one(TimelapseStrip).add(event.step, event.images.permute(0, 2, 3, 1).contiguous().numpy())
        self.show_timelapse()


__all__ = ["MainScreen"]
