"""The live training-loss curve: raw and smoothed loss on a log scale, drawn with textual-plot.

textual-plot has linear axes; the plot holds log10(loss) and `LogAxisFormatter` puts ticks at
1, 2 and 5 × 10^k labelled with the loss itself, which gives a true log-scale axis. Long runs are
thinned to a few points per character column, and redraws are throttled so that a fast trainer
never makes the UI busy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plot import AxisFormatter, HiResMode, NumericAxisFormatter, PlotWidget

SMOOTHING = 0.98  # EMA factor per step for the smoothed curve (bias-corrected)
FLAT = 1e-3  # log10 units (0.2 %): a curve this flat (one point) gets a band around it, ±FLAT_BAND
FLAT_BAND = 0.05


class LogAxisFormatter(AxisFormatter):
    """Ticks for an axis whose values are log10(x), labelled with x; at most one per `spacing`
    rows of `plot`, so that no label is drawn over another."""

    def __init__(self, plot: PlotWidget | None = None, spacing: int = 2) -> None:
        self.plot = plot
        self.spacing = spacing

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        if not (math.isfinite(min_) and math.isfinite(max_)) or max_ <= min_:
            return []
        if self.plot is not None and self.plot.size.height:
            rows = self.plot.size.height - self.plot.margin_top - self.plot.margin_bottom
            max_ticks = min(max_ticks, rows // self.spacing)
        max_ticks = max(2, max_ticks)

        def ticks_for(mantissas: Sequence[int]) -> list[float]:
            return [
                math.log10(m) + k
                for k in range(math.floor(min_) - 1, math.ceil(max_) + 1)
                for m in mantissas
                if min_ <= math.log10(m) + k <= max_
            ]

        decades = ticks_for((1,))
        if len(decades) > max_ticks:  # many decades: every n-th one
            return decades[:: math.ceil(len(decades) / max_ticks)]
        ticks = ticks_for((1, 2, 5))
        if len(ticks) > max_ticks:
            return decades if len(decades) >= 2 else ticks[:: math.ceil(len(ticks) / max_ticks)]
        if len(ticks) >= 3:
            return ticks
        every = ticks_for(range(1, 10))
        if 3 <= len(every) <= max_ticks:
            return every
        if len(every) > max_ticks:
            return ticks if len(ticks) >= 2 else every[:: math.ceil(len(every) / max_ticks)]
        # less than one 1…9 step in range: nice linear ticks in value space
        linear = [math.log10(v) for v in NumericAxisFormatter().get_ticks(10**min_, 10**max_, max_ticks) if v > 0]
        return linear[:: math.ceil(len(linear) / max_ticks)] if linear else linear

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        values = [10**t for t in ticks]
        for digits in range(2, 7):
            labels = [f"{v:.{digits}g}" for v in values]
            if len(set(labels)) == len(labels):
                return labels
        return labels


class StepAxisFormatter(AxisFormatter):
    """Whole-number ticks at 1-2-5 intervals, one per `spacing` columns of `plot` at most."""

    def __init__(self, plot: PlotWidget | None = None, spacing: int = 9) -> None:
        self.plot = plot
        self.spacing = spacing
        self.max_ticks = 5

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        if self.plot is not None and self.plot.size.width:
            self.max_ticks = max(2, (self.plot.size.width - self.plot.margin_left) // self.spacing)
        limit = max(2, min(max_ticks, self.max_ticks))
        span = max(max_ - min_, 1.0)
        interval = 1.0
        while span / interval > limit:
            for factor in (2.0, 2.5, 2.0):  # 1, 2, 5, 10, 20, 50 …
                interval *= factor
                if span / interval <= limit:
                    break
        first = math.ceil(min_ / interval) * interval
        return [float(v) for v in np.arange(first, max_ + interval / 2, interval) if min_ <= v <= max_ + 1e-9]

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [compact_number(t) for t in ticks]


def compact_number(value: float) -> str:
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return f"{value:.0f}"


def smooth(values: Sequence[float], factor: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    out = np.empty(len(values))
    average, weight = 0.0, 0.0
    for i, value in enumerate(values):
        average = factor * average + (1 - factor) * value
        weight = factor * weight + (1 - factor)
        out[i] = average / weight
    return out


def zero_phase_smooth(values: np.ndarray, factor: float) -> np.ndarray:
    """Forward then backward EMA: smooth without the lag of a one-sided average. The ends are
    padded with odd reflections (as scipy's filtfilt does) so that a trend carries on to the edges."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    pad = min(n - 1, max(1, int(3 / max(1e-6, 1 - factor))))
    if pad < 1:
        return values.copy()
    head = 2 * values[0] - values[pad:0:-1]
    tail = 2 * values[-1] - values[-2 : -pad - 2 : -1]
    padded = np.concatenate([head, values, tail])
    forward = smooth(padded, factor)
    both = smooth(forward[::-1], factor)[::-1]
    return both[pad : pad + n]


def binned_curves(log_losses: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, raw, smoothed) for a plot with room for `bins` points.

    Raw: every k-th loss (keeping the noise visible); smoothed: the mean of each bin, smoothed
    without lag with a time constant of ~1/30 of the run.
    """
    count = len(log_losses)
    steps = np.arange(1, count + 1, dtype=np.float64)
    stride = max(1, math.ceil(count / bins))
    x, raw = steps[::stride], log_losses[::stride]
    if x[-1] != count:
        x, raw = np.append(x, count), np.append(raw, log_losses[-1])
    edges = np.unique(np.linspace(0, count, min(count, bins) + 1).astype(np.int64))
    sums = np.add.reduceat(log_losses, edges[:-1])
    means = sums / np.diff(edges)
    centres = (edges[:-1] + edges[1:] + 1) / 2
    tau = max(1.0, len(means) / 30)
    smoothed = zero_phase_smooth(means, math.exp(-1 / tau)) if len(means) > 2 else means
    return x, raw, np.interp(x, centres, smoothed)


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
        plot.display = False
        yield plot
        yield Static("No training yet: the loss curve appears here.", id="loss-empty")

    def on_mount(self) -> None:
        plot = self.query_one(PlotWidget)
        plot.margin_top = 1
        plot.margin_bottom = 2
        plot.margin_left = 7
        plot.set_y_formatter(LogAxisFormatter(plot))
        plot.set_x_formatter(StepAxisFormatter(plot))

    def on_resize(self) -> None:
        """Redraw at once: the throttle is for a fast trainer, not for layout changes (a curve
        binned for the old width would otherwise show for up to `min_interval`)."""
        self._drawn_count = -1  # the number of points drawn depends on the width
        self.draw()

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
        width = max(plot.size.width - plot.margin_left, 30)
        log_losses = np.asarray(self._log_losses, dtype=np.float64)
        finite = np.isfinite(log_losses)
        if not finite.all():  # never plot NaN: carry the last finite value
            index = np.where(finite, np.arange(count), 0)
            np.maximum.accumulate(index, out=index)
            log_losses = log_losses[index]
        x, raw, smoothed = binned_curves(log_losses, 2 * width)
        low, high = float(raw.min()), float(raw.max())
        if high - low < FLAT:  # else the axis spans a rounding error and every label reads the same
            plot.set_ylimits(low - FLAT_BAND, high + FLAT_BAND)
        else:
            plot.set_ylimits(None, None)
        plot.plot(x, raw, line_style="rgb(95,105,135)", hires_mode=HiResMode.BRAILLE, label="loss")
        plot.plot(x, smoothed, line_style="bold rgb(255,176,0)", hires_mode=HiResMode.BRAILLE, label="smoothed")
