"""Events that the background threads emit to their subscribers (a UI, a CLI, a test).

Subscribers are plain callables invoked on the emitting thread; a UI must hand the event over
to its own thread (Textual: `App.call_from_thread` or `post_message`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class TrainingStarted:
    step: int
    num_images: int
    losses: tuple[float, ...]  # history so far, so a resumed run redraws its curve


@dataclass(frozen=True)
class TrainingStep:
    step: int
    loss: float
    lr: float
    epoch: float
    images_per_second: float
    elapsed: float  # seconds of training in this session


@dataclass(frozen=True)
class StepSkipped:
    step: int
    reason: str
    total_skipped: int


@dataclass(frozen=True)
class RolledBack:
    """Repeated non-finite steps: training went back to the last good checkpoint with a lower rate."""

    step: int  # the step training continues from (the checkpoint's)
    from_step: int  # the step it was at when it gave up on the current weights
    lr: float  # the new peak learning rate
    reason: str


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path
    step: int


@dataclass(frozen=True)
class TrainingPaused:
    step: int


@dataclass(frozen=True)
class TrainingResumed:
    step: int


@dataclass(frozen=True)
class TrainingFinished:
    step: int
    reason: str  # "budget", "stopped"


@dataclass(frozen=True)
class SamplingStep:
    step: int
    total: int
    x_t: torch.Tensor  # (B, 3, H, W) float in about [-1, 1], on the CPU
    x0: torch.Tensor


@dataclass(frozen=True)
class SamplingFinished:
    images: torch.Tensor  # (B, 3, H, W) uint8
    seeds: tuple[int, ...]
    sampler: str
    steps: int
    model_sha256: str
    seconds: float


@dataclass(frozen=True)
class SamplingCancelled:
    step: int


@dataclass(frozen=True)
class TimelapseFrame:
    """The timelapse seeds drawn by the EMA of `step`, kept at `path` (see `engine.timelapse`)."""

    step: int
    images: torch.Tensor  # (B, 3, H, W) uint8, one image per seed
    path: Path


@dataclass(frozen=True)
class EngineError:
    source: str  # "training", "sampling" or "timelapse"
    message: str


Event = object
Subscriber = Callable[[Event], None]


class EventEmitter:
    """A thread-safe list of subscribers; `emit` calls each in turn."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber(event)
