"""The learning timelapse as a film strip: the run's frames from step 0 on the left to the newest
on the right, as many as fit (spread evenly over the run), each the same seeds one above the
other, as many as fit."""

from __future__ import annotations

import bisect

import numpy as np

from ..jobs.timelapse import spread
from .halfblock import HalfBlockImage
from .preview import resize

GAP = 1  # pixels between thumbnails
MIN_SIZE = 8  # pixels: a thumbnail is never smaller
ENOUGH_FRAMES = 6  # thumbnails shrink (down to MIN_SIZE) until this many frames fit


def strip_layout(frames: int, seeds: int, image_size: int, area: tuple[int, int]) -> tuple[int, int, int]:
    """(thumbnail size in pixels, frames across, seeds down) for `area` (cols, rows of cells)."""
    width, height = area[0], 2 * area[1]

    def across(size: int) -> int:
        return (width + GAP) // (size + GAP)

    size = min(image_size, height)
    while size > MIN_SIZE and across(size) < min(frames, ENOUGH_FRAMES):
        size -= 1
    if size < 1 or across(size) < 1:
        return 0, 0, 0
    return size, min(frames, across(size)), max(1, min(seeds, (height + GAP) // (size + GAP)))


class TimelapseStrip(HalfBlockImage):
    """Frames (step, (B, H, W, 3) uint8) by step; `shown_steps` are those drawn now."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.steps: list[int] = []
        self.frames: list[np.ndarray] = []
        self.shown_steps: list[int] = []

    def set_frames(self, frames: list[tuple[int, np.ndarray]]) -> None:
        ordered = sorted(frames, key=lambda frame: frame[0])
        self.steps = [step for step, _ in ordered]
        self.frames = [images for _, images in ordered]
        self._changed()

    def add(self, step: int, images: np.ndarray) -> None:
        """Add the frame of `step`, replacing one of the same step."""
        index = bisect.bisect_left(self.steps, step)
        if index < len(self.steps) and self.steps[index] == step:
            self.frames[index] = images
        else:
            self.steps.insert(index, step)
            self.frames.insert(index, images)
        self._changed()

    def drop_after(self, step: int) -> None:
        keep = bisect.bisect_right(self.steps, step)
        del self.steps[keep:], self.frames[keep:]
        self._changed()

    def _changed(self) -> None:
        self._image = None
        self._strips = None
        self.refresh()

    def _scaled(self) -> np.ndarray | None:
        self.shown_steps = []
        if not self.frames:
            return None
        seeds, image_size = self.frames[-1].shape[:2]
        size, across, down = strip_layout(len(self.frames), seeds, image_size, tuple(self.size))
        if size == 0:
            return None
        chosen = spread(len(self.frames), across)
        self.shown_steps = [self.steps[i] for i in chosen]
        out = np.empty((down * (size + GAP) - GAP, across * (size + GAP) - GAP, 3), np.uint8)
        out[:] = self.background_rgb()
        for column, index in enumerate(chosen):
            for row, image in enumerate(self.frames[index][:down]):
                y, x = row * (size + GAP), column * (size + GAP)
                out[y : y + size, x : x + size] = resize(image, size, size)
        self._image = out
        return out
