"""Denoising animations: a batch's frames recorded step by step in bounded memory, and GIFs of
them (one per cat) and of morphs, written like the cats (never overwriting, never half-written)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from engine.files import write_new

from .. import cats

MAX_STEP_FRAMES = 100  # a longer sampling run (ddpm's 1000 steps) records every k-th step
FRAME_BUDGET = 256 * 2**20  # bytes of recorded frames per batch, at most
FRAME_MS = 80
HOLD_MS = 1000  # the finished cat, at the end of its animation
MORPH_FRAME_MS = 120
MORPH_HOLD_MS = 600  # each end of a morph


def frame_stride(total_steps: int) -> int:
    """Record every `frame_stride`-th step, so that no animation has over `MAX_STEP_FRAMES` steps."""
    return max(1, math.ceil(total_steps / MAX_STEP_FRAMES))


def recorded_frames(total_steps: int) -> int:
    """Frames a `FrameRecorder` keeps per cat: the start and the recorded steps."""
    stride = frame_stride(total_steps)
    return 1 + len([step for step in range(total_steps) if (step + 1) % stride == 0 or step == total_steps - 1])


def cats_at_once(batch_size: int, total_steps: int, shape: tuple[int, int, int]) -> int:
    """At most `batch_size` cats, and few enough that their frames fit `FRAME_BUDGET`."""
    per_cat = recorded_frames(total_steps) * math.prod(shape)
    return max(1, min(batch_size, FRAME_BUDGET // per_cat))


def hwc_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [−1, 1] (any device) → (B, H, W, 3) uint8 on the CPU."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class FrameRecorder:
    """The frames of one batch's denoising, each (B, H, W, 3) uint8: where sampling starts, then
    every `frame_stride`-th step and always the last."""

    def __init__(self, start: np.ndarray, total_steps: int) -> None:
        self.frames = [start]
        self.total_steps = total_steps
        self.stride = frame_stride(total_steps)

    def wants(self, step: int) -> bool:
        return (step + 1) % self.stride == 0 or step == self.total_steps - 1

    def add(self, step: int, images: np.ndarray) -> None:
        if self.wants(step):
            self.frames.append(images)

    def of(self, index: int) -> list[np.ndarray]:
        """Cat `index`'s frames, (H, W, 3) each."""
        return [frame[index] for frame in self.frames]


def save_denoising(folder: Path, stem: str, frames: list[np.ndarray], final: np.ndarray, info: dict) -> Path:
    """`<stem>.gif`: `frames` ((H, W, 3) uint8) at `FRAME_MS` each, ending on `final`, the finished
    cat, held `HOLD_MS` (the last step's frame is the finished cat, so it is the one held)."""
    frames = frames if np.array_equal(frames[-1], final) else [*frames, final]
    durations = [FRAME_MS] * (len(frames) - 1) + [HOLD_MS]
    return write_new(folder, stem, ".gif", cats.gif_writer(frames, durations, info))


def save_morph(folder: Path, stem: str, images: np.ndarray, info: dict) -> Path:
    """`<stem>.gif`: the morph's images ((N, 3, H, W) uint8) there and back, each end held."""
    frames = [np.ascontiguousarray(image.transpose(1, 2, 0)) for image in images]
    loop = frames + frames[-2:0:-1]
    durations = [MORPH_FRAME_MS] * len(loop)
    durations[0] = durations[len(frames) - 1] = MORPH_HOLD_MS
    return write_new(folder, stem, ".gif", cats.gif_writer(loop, durations, info))
