"""The app's controller: a training part and a sampling part behind a small front.

Everything slow runs off the UI thread; the parts report back through `post` (the app's
thread-safe `post_message`). The UI thread calls the methods here; they return at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..jobs.sampling import random_seed
from ..jobs.training import TrainingOptions
from ..jobs.variations import MORPH_FRAMES
from ..settings import Generator
from .sampling import SamplingSession
from .state import Toggle, TrainingState
from .training import TrainingSession

__all__ = ["Session", "Toggle", "TrainingState"]


class Session:
    """`training` (space, the run, the EMA) and `sampling` (s, v, m, the preview, keeping cats)."""

    def __init__(
        self,
        post: Callable[[object], object],
        data_folder: Path | None,
        preset: str | None = None,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        generator: Generator | None = None,
        seed: Callable[[], int] = random_seed,
        frame_interval: float = 1 / 12,
        morph_frames: int = MORPH_FRAMES,
        checkpoint_every_seconds: float = 120.0,
        budget: tuple[str, int] = ("none", 0),
    ) -> None:
        options = None
        if data_folder is not None:
            options = TrainingOptions(Path(data_folder).expanduser(), preset, device=device, batch_size=batch_size)
        self.training = TrainingSession(post, options, checkpoint_every_seconds, budget)
        self.sampling = SamplingSession(post, self.training, generator, seed, frame_interval, morph_frames)

    @property
    def state(self) -> TrainingState:
        return self.training.state

    @property
    def trainer(self):
        return self.training.trainer

    @property
    def busy_threads(self) -> list[str]:
        return [name for name, part in (("training", self.training), ("sampling", self.sampling)) if part.busy]

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel sampling, stop training (saving a checkpoint), wait for both. Idempotent."""
        self.sampling.shutdown(timeout=min(timeout, 5.0))
        self.training.shutdown(timeout=timeout)
