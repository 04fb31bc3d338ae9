"""Textual messages that carry the engine's events (and the session's own) to the UI thread.

Engine threads never touch widgets: the session posts one of these with the thread-safe
`App.post_message`, and the app's handlers update the screen. Frequent events are coalesced by
the session: `TrainingTick` and `PreviewTick` say "new data is waiting" and are posted at most
once until the UI has taken the data, so a slow UI never builds a queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from textual.message import Message


@dataclass
class PreviewFrame:
    """One sampler step, already converted to (B, H, W, 3) uint8 on the engine thread."""

    step: int
    total: int
    x_t: np.ndarray
    x0: np.ndarray
    final: bool = False
    seeds: tuple[int, ...] = ()


class EngineMessage(Message):
    """Base class for messages wrapping one engine event (`event`)."""

    def __init__(self, event: object = None) -> None:
        super().__init__()
        self.event = event


# ------------------------------------------------------------------ data and trainer set-up


class DataProgress(Message):
    def __init__(self, done: int, total: int) -> None:
        super().__init__()
        self.done = done
        self.total = total


class TrainerReady(Message):
    """Images are loaded and the trainer built (resumed from its checkpoint when one existed)."""

    def __init__(self, step: int, num_images: int, skipped: int, resumed: bool, note: str = "") -> None:
        super().__init__()
        self.step = step
        self.num_images = num_images
        self.skipped = skipped
        self.resumed = resumed
        self.note = note


class SessionError(Message):
    """Something the user must know about (no data folder, empty folder, bad checkpoint …)."""

    def __init__(self, text: str, level: str = "error") -> None:
        super().__init__()
        self.text = text
        self.level = level


class SessionInfo(SessionError):
    def __init__(self, text: str) -> None:
        super().__init__(text, level="info")


class HistoryLoaded(Message):
    """The saved loss history of the run, read when the app opens, before any training."""

    def __init__(self, losses: list[float], step: int, saved_at: str, epoch: float = 0.0) -> None:
        super().__init__()
        self.losses = losses
        self.step = step
        self.saved_at = saved_at
        self.epoch = epoch


# ------------------------------------------------------------------ training


class TrainingTick(Message):
    """New training steps are waiting in the session (coalesced)."""


class TrainingStarted(EngineMessage):
    pass


class TrainingPaused(EngineMessage):
    pass


class TrainingResumed(EngineMessage):
    pass


class TrainingFinished(EngineMessage):
    pass


class CheckpointSaved(EngineMessage):
    pass


class StepSkipped(EngineMessage):
    pass


class EngineError(EngineMessage):
    pass


class RolledBack(EngineMessage):
    """Repeated NaN steps: the trainer went back to its last checkpoint with a lower learning rate."""


# ------------------------------------------------------------------ sampling


class SamplingStarted(Message):
    def __init__(self, seeds: tuple[int, ...], total: int, model: str, generation: int = 0) -> None:
        super().__init__()
        self.seeds = seeds
        self.total = total
        self.model = model
        self.generation = generation  # stale when the session has moved on (cancelled or replaced)


class PreviewTick(Message):
    """A new preview frame is waiting in the session's slot (coalesced)."""


class SamplingFinished(EngineMessage):
    pass


class SamplingCancelled(EngineMessage):
    pass


@dataclass
class Batch:
    """The cats of a finished sampling run, ready to keep."""

    images: np.ndarray  # (B, 3, H, W) uint8
    seeds: tuple[int, ...]
    sampler: str
    steps: int
    model_sha256: str
    model: str
    kept: set[int] = field(default_factory=set)


def wrap(event: object) -> Message | None:
    """The message class for an engine event (None for events the session handles itself)."""
    from engine import events

    table = {
        events.TrainingStarted: TrainingStarted,
        events.TrainingPaused: TrainingPaused,
        events.TrainingResumed: TrainingResumed,
        events.TrainingFinished: TrainingFinished,
        events.CheckpointSaved: CheckpointSaved,
        events.StepSkipped: StepSkipped,
        events.EngineError: EngineError,
        events.SamplingFinished: SamplingFinished,
        events.SamplingCancelled: SamplingCancelled,
    }
    rolled_back = getattr(events, "RolledBack", None)  # newer engines roll back after repeated NaNs
    if rolled_back is not None:
        table[rolled_back] = RolledBack
    cls = table.get(type(event))
    return cls(event) if cls else None
