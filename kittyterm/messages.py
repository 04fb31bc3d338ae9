"""Textual messages: every engine event as it is, plus the session's own small messages.

Engine threads never touch widgets. Each event class of `engine.events` has a message class of
the same name here, generated from it, that carries the event unchanged in `.event`; a screen
handles `events.TrainingPaused` in `on_training_paused`. Frequent events are not posted one by
one: the session coalesces them, and `TrainingTick` and `PreviewTick` say "new data is waiting"
at most once until the UI has taken it, so a slow UI never builds a queue.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from textual.message import Message

from engine import events as engine_events

from .jobs.animation import FrameRecorder
from .jobs.drawings import MORPH, VARIATIONS, Drawing


class EngineMessage(Message):
    """A message carrying one `engine.events` event unchanged."""

    def __init__(self, event: object) -> None:
        super().__init__()
        self.event = event


def _message_for(event_class: type) -> type[EngineMessage]:
    name = event_class.__name__
    return type(name, (EngineMessage,), {"__qualname__": name, "__module__": __name__, "__doc__": f"Carries `engine.events.{name}`."})


ENGINE_MESSAGES: dict[type, type[EngineMessage]] = {
    cls: _message_for(cls)
    for cls in vars(engine_events).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == engine_events.__name__
}
globals().update({message.__name__: message for message in ENGINE_MESSAGES.values()})


def for_event(event: object) -> EngineMessage:
    """The message that carries `event`."""
    return ENGINE_MESSAGES[type(event)](event)


class SessionMessage(Message):
    """Base of the session's own messages, which are small dataclasses (Textual's `Message`
    finishes its own set-up in `__post_init__`, which the dataclass `__init__` calls)."""


@dataclass
class DataProgress(SessionMessage):
    done: int
    total: int


@dataclass
class TrainerReady(SessionMessage):
    """Images are loaded and the run opened (resumed from its checkpoint when one existed)."""

    step: int
    num_images: int
    skipped: int
    resumed: bool
    note: str = ""


@dataclass
class SessionError(SessionMessage):
    """Something the user must know about (no data folder, a busy run, a bad checkpoint …)."""

    text: str
    level: str = "error"


@dataclass
class HistoryLoaded(SessionMessage):
    """The saved loss history of the run, read when the app opens, before any training."""

    losses: list[float]
    step: int
    saved_at: str
    epoch: float = 0.0


@dataclass
class TimelapseLoaded(SessionMessage):
    """The run's timelapse frames so far (`kittyterm.jobs.timelapse.Frame`), read when it opens."""

    frames: list


@dataclass
class TrainingTick(SessionMessage):
    """New training steps (or a rollback) are waiting in the session (coalesced)."""


@dataclass
class PreviewTick(SessionMessage):
    """A new preview frame is waiting in the session's slot (coalesced)."""


@dataclass
class SamplingStarted(SessionMessage):
    seeds: tuple[int, ...]
    total: int
    model: str
    what: str  # `Drawing.summary`: "4 cats", "4 variations of cat-7.png" …
    generation: int = 0  # stale when the session has moved on (cancelled or replaced)


@dataclass
class PreviewFrame:
    """One sampler step, already converted to (B, H, W, 3) uint8 on the engine thread."""

    step: int
    total: int
    x_t: np.ndarray
    x0: np.ndarray
    final: bool = False
    seeds: tuple[int, ...] = ()


@dataclass
class Batch:
    """The images of a finished sampling run (cats, variations of a picture or a morph), with
    their denoising frames (x_t and x̂0), ready to keep."""

    images: np.ndarray  # (B, 3, H, W) uint8
    drawing: Drawing
    model_sha256: str
    model: str
    frames: dict[str, FrameRecorder]  # "x_t" and "x0"
    file: str = ""  # the model's file; "" for a copy of the training EMA
    kept: set[int] = field(default_factory=set)
    animation: Path | None = None  # a morph's GIF, saved when it finished

    def __len__(self) -> int:
        return len(self.images)

    @property
    def is_morph(self) -> bool:
        return self.drawing.kind == MORPH

    def label(self, index: int) -> str:
        """`cat 2/4 seed 7`, `variation 2/4 seed 7` or `morph 3 → 9`."""
        drawing = self.drawing
        if self.is_morph:
            return f"morph {drawing.seeds[0]} → {drawing.seeds[1]}"
        what = "variation" if drawing.kind == VARIATIONS else "cat"
        return f"{what} {index + 1}/{len(self)} seed {drawing.seeds[index]}"
