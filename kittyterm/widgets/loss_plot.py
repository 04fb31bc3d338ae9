"""The live training-loss curve: raw and smoothed loss on a log scale, drawn with textual-plot.

textual-plot has linear axes; the plot holds log10(loss) and `LogAxisFormatter` puts ticks at
1, 2 and 5 × 10^k labelled with the loss itself, which gives a true log-scale axis. Long runs are
thinned to a few points per character column, and redraws are throttled so that a fast trainer
never makes the UI busy.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plot import AxisFormatter, HiResMode, NumericAxisFormatter, PlotWidget

SMOOTHING = 0.98  # EMA factor per step for the smoothed curve (bias-corrected)


class LogAxisFormatter(AxisFormatter):
    """Ticks for an axis whose values are log10(x), labelled with x."""

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        if not (math.isfinite(min_) and math.isfinite(max_)) or max_ <= min_:
            return []
        max_ticks = max(2, max_ticks)
        for mantissas in ((1, 2, 5), (1, 3), (1,)):
            ticks = [
                math.log10(m) + k
                for k in range(math.floor(min_) - 1, math.ceil(max_) + 1)
                for m in mantissas
                if min_ <= math.log10(m) + k <= max_
            ]
            if 2 <= len(ticks) <= max_ticks:
                return ticks
            if len(ticks) > max_ticks:
                continue
            break
        if len(ticks) > max_ticks:  # many decades: every n-th one
            stride = math.ceil(len(ticks) / max_ticks)
            return ticks[::stride]
        # less than a 1-2-5 step in range: nice linear ticks in value space
        linear = NumericAxisFormatter().get_ticks(10**min_, 10**max_, max_ticks)
        return [math.log10(v) for v in linear if v > 0]

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [f"{10**t:.3g}" for t in ticks]


def smooth(values: Sequence[float], factor: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    out = np.empty(len(values))
    average, weight = 0.0, 0.0
    for i, value in enumerate(values):
        average = factor * average + (1 - factor) * value
        weight = factor * weight + (1 - factor)
        out[i] = average / weight
    return out


class LossPlot(Vertical):
    """Loss against step; `set_losses` replaces the history, `extend` appends to it."""

    DEFAULT_CSS = """
    LossPlot {
        height: 1fr;
    }
    LossPlot > PlotWidget {
        height: 1fr;
    }
    LossPlot > #loss-empty {
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    """

    def __init__(self, *, min_interval: float = 0.5, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.min_interval = min_interval
        self.losses: list[float] = []
        self._log_losses: list[float] = []
        self._smoothed: list[float] = []
        self._ema = (0.0, 0.0)
        self._drawn_at = 0.0
        self._drawn_count = -1
        self._timer = None

    def compose(self) -> ComposeResult:
        plot = PlotWidget(allow_pan_and_zoom=False, id="loss-plot")
        plot.can_focus = False
        plot.margin_top = 1
        plot.margin_bottom = 2
        plot.margin_left = 7
        plot.display = False
        yield plot
        yield Static("No training yet: the loss curve appears here.", id="loss-empty")

    def on_mount(self) -> None:
        plot = self.query_one(PlotWidget)
        plot.set_y_formatter(LogAxisFormatter())
        plot.set_xlabel("step")

    # ------------------------------------------------------------------ data

    def set_losses(self, losses: Sequence[float]) -> None:
        self.losses = []
        self._log_losses = []
        self._smoothed = []
        self._ema = (0.0, 0.0)
        self.extend(losses)

    def extend(self, losses: Sequence[float]) -> None:
        average, weight = self._ema
        for loss in losses:
            self.losses.append(float(loss))
            value = math.log10(loss) if loss > 0 and math.isfinite(loss) else math.nan
            self._log_losses.append(value)
            if math.isfinite(value):
                average = SMOOTHING * average + (1 - SMOOTHING) * value
                weight = SMOOTHING * weight + (1 - SMOOTHING)
            self._smoothed.append(average / weight if weight else math.nan)
        self._ema = (average, weight)
        self._schedule_draw()

    @property
    def smoothed_loss(self) -> float | None:
        if not self._smoothed or not math.isfinite(self._smoothed[-1]):
            return None
        return 10 ** self._smoothed[-1]

    # ------------------------------------------------------------------ drawing

    def _schedule_draw(self) -> None:
        if self._timer is not None:
            return
        wait = self.min_interval - (time.monotonic() - self._drawn_at)
        if wait <= 0 or not self.is_mounted:
            self.draw()
        else:
            self._timer = self.set_timer(wait, self._timed_draw)

    def _timed_draw(self) -> None:
        self._timer = None
        self.draw()

    def draw(self) -> None:
        """Redraw now (normally called through the throttle)."""
        if not self.is_mounted:
            return
        self._drawn_at = time.monotonic()
        count = len(self.losses)
        if count == self._drawn_count:
            return
        self._drawn_count = count
        plot = self.query_one(PlotWidget)
        empty = self.query_one("#loss-empty", Static)
        plot.display = count > 0
        empty.display = count == 0
        plot.clear()
        if count == 0:
            return
        width = max(plot.size.width, 40)
        stride = max(1, math.ceil(count / (4 * width)))
        steps = np.arange(1, count + 1, dtype=np.float64)
        raw = np.asarray(self._log_losses, dtype=np.float64)
        smoothed = np.asarray(self._smoothed, dtype=np.float64)
        keep = slice(None, None, stride)
        x = steps[keep]
        if stride > 1 and x[-1] != count:
            x = np.append(x, count)
            raw_y, smooth_y = np.append(raw[keep], raw[-1]), np.append(smoothed[keep], smoothed[-1])
        else:
            raw_y, smooth_y = raw[keep], smoothed[keep]
        plot.plot(x, raw_y, line_style="rgb(95,105,135)", hires_mode=HiResMode.BRAILLE, label="loss")
        plot.plot(x, smooth_y, line_style="bold rgb(255,176,0)", hires_mode=HiResMode.BRAILLE, label="smoothed")
