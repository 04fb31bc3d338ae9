"""What one batch draws, for the CLI and the app alike: fresh cats (one seed each), SDEdit
variations of a picture (Meng et al. 2022) or a morph between two seeds (their noise slerped).

A `Drawing` names its images' seeds, the sampler and the grid it runs over, the clean image it
starts from (variations) and the fractions between two seeds (morphs); `draw` runs it. It also
names its images' files and says what their metadata records.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.files import free_names
from engine.generate import SeededNoise, SlerpNoise, generate, sdedit_grid, starting_latents
from engine.samplers import sampler_timesteps

from ..cats import CatInfo
from ..wording import counted

CATS, VARIATIONS, MORPH = "cats", "variations", "morph"
STEM_MAX = 100  # characters of a picture's name kept in its variations' file names


@dataclass(frozen=True, eq=False)
class Drawing:
    """One batch to draw (see the module docstring); `part` splits it into chunks."""

    kind: str
    seeds: tuple[int, ...]  # one per image; a morph's two ends
    sampler: str
    steps: int  # the sampler's steps (its grid); a variation runs the tail below its strength
    grid: tuple[int, ...]
    shape: tuple[int, int, int]  # (channels, size, size)
    start: torch.Tensor | None = None  # a variation's clean image, (1, 3, S, S) in [−1, 1]
    fractions: tuple[float, ...] = ()  # a morph's images, from seed A (0) to seed B (1)
    extra: dict = field(default_factory=dict)  # metadata beyond `cats.CatInfo` (a variation's source)

    def __len__(self) -> int:
        return len(self.fractions) if self.kind == MORPH else len(self.seeds)

    def noise(self) -> SeededNoise:
        """A fresh noise source for the images (each call starts the seeds' streams anew)."""
        if self.kind == MORPH:
            return SlerpNoise(*self.seeds, self.fractions, self.shape)
        return SeededNoise(self.seeds, self.shape)

    def part(self, begin: int, end: int) -> Drawing:
        """Images `begin` to `end` alone (drawing in chunks gives the same images)."""
        if self.kind == MORPH:
            return replace(self, fractions=self.fractions[begin:end])
        return replace(self, seeds=self.seeds[begin:end])

    def first_latents(self, schedule) -> torch.Tensor:
        """Where the sampler starts, (B, 3, S, S) on the CPU: noise, or the noised picture."""
        return starting_latents(self.noise(), schedule, list(self.grid), self.start)

    @property
    def summary(self) -> str:
        """`4 cats`, `4 variations of cat-7.png` or `a 16-frame morph from seed 3 to 9`."""
        if self.kind == MORPH:
            return f"a {len(self)}-frame morph from seed {self.seeds[0]} to {self.seeds[1]}"
        if self.kind == VARIATIONS:
            return f"{counted(len(self), 'variation')} of {self.extra['source']}"
        return counted(len(self), "cat")

    @property
    def morph_stem(self) -> str:
        """`morph-A-B`, or the stem `in_free_names` chose so that all its files are new."""
        return self.extra.get("stem", f"morph-{self.seeds[0]}-{self.seeds[1]}")

    def in_free_names(self, folder: Path) -> Drawing:
        """A morph whose GIF and frames all take one free stem in `folder` (`morph-A-B`, else
        `morph-A-B-2` …), so that a second morph of the same cats never mixes its frames' names
        with the first's; other drawings as they are (each image is named on its own)."""
        if self.kind != MORPH:
            return self
        for gif in free_names(folder, self.morph_stem, ".gif"):
            chosen = replace(self, extra={**self.extra, "stem": gif.stem})
            if not any(os.path.lexists(Path(folder) / f"{chosen.stem(index)}.png") for index in range(len(self))):
                return chosen
        raise FileExistsError(errno.EEXIST, f"no free file name for {self.morph_stem}.gif", str(folder))

    def stem(self, index: int) -> str:
        """Image `index`'s file name without suffix: `cat-SEED`, `<picture>-vary-SEED` or
        `morph-A-B-NN` (free names are found from it: `engine.files.write_new`)."""
        if self.kind == MORPH:
            return f"{self.morph_stem}-{index:0{max(2, len(str(len(self) - 1)))}d}"
        if self.kind == VARIATIONS:
            return f"{Path(self.extra['source']).stem[:STEM_MAX]}-vary-{self.seeds[index]}"
        return f"cat-{self.seeds[index]}"

    def info(self, index: int | None, model_sha256: str, model: str, checkpoint: str = "") -> dict:
        """What image `index`'s file records: its seed, sampler, steps and model (`CatInfo`, with
        the model's file when there is one) and a variation's picture and strength; for a morph
        both seeds and, with an index, the fraction."""
        if self.kind == MORPH:
            info = {"morph": list(self.seeds), "frames": len(self.fractions), "sampler": self.sampler,
                    "steps": self.steps, "model_sha256": model_sha256, "model": model}
            if index is not None:
                info.update(frame=index, fraction=self.fractions[index])
            return info
        return {**CatInfo(self.seeds[index], self.sampler, self.steps, model_sha256, model, checkpoint).__dict__, **self.extra}


def shape_of(model) -> tuple[int, int, int]:
    size = model.config.image_size
    return (model.config.in_channels, size, size)


def cats(model, schedule, seeds, sampler: str, steps: int) -> Drawing:
    return Drawing(CATS, tuple(seeds), sampler, steps, tuple(sampler_timesteps(sampler, schedule, steps)), shape_of(model))


def variations(model, schedule, image: np.ndarray, seeds, sampler: str, steps: int, strength: float, extra: dict) -> Drawing:
    """`image` ((3, S, S) uint8) noised to `strength` and denoised by each seed: the grid's
    timesteps below strength·T (`sdedit_grid`); 0 gives the image back, 1 a fresh cat. `extra`
    names the picture (`source`) and is recorded with each variation."""
    grid = sdedit_grid(sampler_timesteps(sampler, schedule, steps), strength, schedule.num_steps)
    start = torch.from_numpy(np.ascontiguousarray(image)).float().div(127.5).sub(1).unsqueeze(0)
    return Drawing(VARIATIONS, tuple(seeds), sampler, steps, tuple(grid), shape_of(model), start, extra=extra)


def morph(model, schedule, seed_a: int, seed_b: int, frames: int, sampler: str, steps: int) -> Drawing:
    """`frames` images from seed A's cat to seed B's, evenly spaced on the arc between their noise."""
    fractions = tuple(k / (frames - 1) for k in range(frames))
    grid = tuple(sampler_timesteps(sampler, schedule, steps))
    return Drawing(MORPH, (seed_a, seed_b), sampler, steps, grid, shape_of(model), fractions=fractions)


def draw(drawing: Drawing, model, schedule, device, callback=None) -> np.ndarray:
    """The drawing's images, (B, 3, S, S) uint8; `callback(step, x_t, x0)` after every step."""
    images = generate(model, schedule, drawing.noise(), drawing.sampler, device=device, callback=callback,
                      grid=list(drawing.grid), start=drawing.start)
    return images.numpy()
