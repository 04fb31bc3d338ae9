"""kittyterm's widgets: half-block images, the loss plot, training stats and the status line."""

from .halfblock import HalfBlockImage
from .loss_plot import LossPlot
from .preview import CatGrid
from .stats import StatsPanel, TrainingStats
from .status import StatusLine

__all__ = ["CatGrid", "HalfBlockImage", "LossPlot", "StatsPanel", "StatusLine", "TrainingStats"]
