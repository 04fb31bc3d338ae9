"""The numbers of a training run: state, step, epoch, loss, lr, speed, ETA and last checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import Static

from ..session.state import TrainingState


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@dataclass
class TrainingStats:
    state: TrainingState = TrainingState.IDLE
    run: str = ""
    step: int = 0
    epoch: float = 0.0
    loss: float | None = None
    smoothed: float | None = None
    lr: float | None = None
    images_per_second: float | None = None
    batch_size: int | None = None
    elapsed: float = 0.0
    budget: tuple[str, int] = ("none", 0)
    budget_text: str = "none"
    checkpoint: str = ""  # e.g. "14:03:12 (step 1,200)"
    loading: tuple[int, int] | None = None
    images: int | None = None
    skipped_steps: int = 0
    extra: dict = field(default_factory=dict)

    def eta_seconds(self) -> float | None:
        """Seconds until the budget runs out; None without a budget, before a speed is known, and
        after a cool-down, which ended the run before its budget."""
        kind, amount = self.budget
        if self.state == TrainingState.COOLED_DOWN:
            return None
        if kind == "steps":
            if self.step >= amount:
                return 0.0
            if not self.images_per_second or not self.batch_size:
                return None
            return (amount - self.step) * self.batch_size / self.images_per_second
        if kind == "minutes":
            return max(0.0, amount * 60 - self.elapsed)
        return None


STATE_LABELS = {
    TrainingState.IDLE: ("○ idle", "dim"),
    TrainingState.LOADING: ("◌ loading images", "yellow"),
    TrainingState.READY: ("○ ready", "cyan"),
    TrainingState.RUNNING: ("● training", "bold green"),
    TrainingState.PAUSED: ("‖ paused", "bold yellow"),
    TrainingState.FINISHED: ("■ budget reached", "bold cyan"),
    TrainingState.COOLED_DOWN: ("■ cooled down", "bold cyan"),
    TrainingState.STOPPING: ("… saving", "bold yellow"),
}


class StatsPanel(Static):
    """Renders a `TrainingStats`; call `show(stats)` after changing it."""

    DEFAULT_CSS = """
    StatsPanel {
        height: auto;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.stats = TrainingStats()

    def on_mount(self) -> None:
        self.show()

    def show(self, stats: TrainingStats | None = None) -> None:
        if stats is not None:
            self.stats = stats
        self.update(self.render_stats(self.stats))

    @staticmethod
    def render_stats(s: TrainingStats) -> Text:
        label, style = STATE_LABELS[TrainingState(s.state)]
        text = Text()
        text.append(label, style)
        if s.state == TrainingState.LOADING and s.loading:
            done, total = s.loading
            text.append(f" {done:,}/{total:,}", "yellow")
        else:
            text.append(f"  step {s.step:,}", "bold")
            text.append(f"  epoch {s.epoch:.1f}")
        text.append("\nloss ")
        text.append(f"{s.loss:.4f}" if s.loss is not None else "—", "bold")
        text.append("  avg ")
        text.append(f"{s.smoothed:.4f}" if s.smoothed is not None else "—", "bold rgb(255,176,0)")
        text.append("\nlr ")
        text.append(f"{s.lr:.1e}" if s.lr is not None else "—")
        text.append("  speed ")
        text.append(f"{s.images_per_second:,.0f} img/s" if s.images_per_second else "—")
        text.append("\nETA ")
        text.append(format_duration(s.eta_seconds()) if s.budget[0] != "none" else "—", "bold")
        text.append(f"  budget {s.budget_text} (b)", "dim")
        text.append("\nsaved ")
        text.append(s.checkpoint or "not yet", "" if s.checkpoint else "dim")
        if s.skipped_steps:
            text.append(f"\n{s.skipped_steps} NaN steps skipped", "bold red")
        return text
