"""The states of the app's training, shared by the session and the widgets that show it."""

from __future__ import annotations

import enum


class TrainingState(str, enum.Enum):
    """Where training stands; the value is what tests and logs compare against."""

    IDLE = "idle"  # nothing loaded yet (or loading failed)
    LOADING = "loading"  # decoding images and opening the run
    READY = "ready"  # the trainer is built; space starts it
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"  # the budget was reached
    COOLED_DOWN = "cooled down"  # a cool-down (c) brought the learning rate to its floor; space trains on
    STOPPING = "stopping"  # quitting: saving the last checkpoint

    def __str__(self) -> str:
        return self.value


class Toggle(enum.Enum):
    """What pressing space did, so the screen can say so without guessing."""

    NO_DATA = "no data folder"
    CLOSING = "closing"
    CHOOSE_START = "choose how to start"  # a new run: fine-tune the shipped model or start from scratch?
    LOADING = "loading"  # started loading; training starts when it is done
    START_AFTER_LOADING = "start after loading"
    STAY_AFTER_LOADING = "do not start after loading"
    BUDGET_REACHED = "budget reached"
    STARTED = "started"
    PAUSING = "pausing"
    RESUMED = "resumed"
