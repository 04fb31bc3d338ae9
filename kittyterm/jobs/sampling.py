"""Drawing cats into a folder: the seeds, the output folder, the PNGs and the contact sheet."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.files import IMAGE_EXTENSIONS, remove_stale_temporaries, write_new

from .. import cats
from ..errors import UserError
from . import animation, drawings

GRID_MAX = 1024  # cats on a contact sheet, at most (memory stays constant for any number of cats)
Progress = Callable[[int], None]  # advance(frames done)


def random_seed() -> int:
    return secrets.randbelow(2**31)


def batch_seeds(first: int, count: int) -> list[int]:
    """The seeds of a batch: `first` and those after it, so one seed names the whole batch."""
    return [first + i for i in range(count)]


def sampler_steps(sampler: str, steps: int | None, schedule) -> int:
    """The steps to sample with: `steps`, or the sampler's default, at most the schedule's."""
    from engine.samplers import DEFAULT_STEPS

    return min(steps or DEFAULT_STEPS[sampler], schedule.num_steps)


@contextmanager
def output_folder(out: Path, what: str = "output folder") -> Iterator[Path]:
    """Check `out` can hold the cats and create it; refuse a file name given as the folder. A
    folder created here is removed again if the work in the `with` block fails or is interrupted
    before anything was written into it."""
    out = Path(out).expanduser()
    if out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
        raise UserError(f"--out names the folder for the cats, and {out} looks like a file name; try --out {out.parent}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise UserError(f"cannot create {what} {out}: {getattr(error, 'strerror', None) or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out} is not writable")
    for pattern in ("cat-*.png", "cat-*.gif", "grid-*.png", "*-vary-*.png", "morph-*.png", "morph-*.gif"):  # left by a killed writer
        remove_stale_temporaries(out, pattern)
    try:
        yield out
    except BaseException:
        if created:
            with suppress(OSError):  # not empty: keep what was written
                out.rmdir()
        raise


@dataclass
class Drawn:
    paths: list[Path] = field(default_factory=list)
    grid: Path | None = None
    animations: list[Path] = field(default_factory=list)


def draw_to_folder(
    loaded,
    out: Path,
    seeds: list[int],
    sampler: str,
    steps: int,
    grid: list[int],
    device: str,
    batch_size: int,
    contact_sheet: bool = False,
    model_name: str = "",
    model_file: Path | None = None,
    progress: Progress | None = None,
    animate: str | None = None,
    drawn: Drawn | None = None,
) -> Drawn:
    """Sample one cat per seed with `sampler` over `grid` (its grid for `steps`), `batch_size` at a
    time, into `out` as `cat-SEED.png` (never overwriting: `-2` is added instead), each PNG
    recording its seed, sampler, steps and model (and the model's file);
    with `contact_sheet`, also one sheet of the first `GRID_MAX` cats that records the same;
    with `animate` ("x_t" or "x0"), also each cat's denoising as a GIF named after its PNG
    (`-x0` added for x̂0), fewer cats at a time where their frames would not fit `FRAME_BUDGET`.
    Each file is added to `drawn` (a new `Drawn` by default) as it is written, so a caller that
    passes its own knows what was written when the drawing is interrupted."""
    from engine.generate import generate, starting_noise

    drawn = drawn if drawn is not None else Drawn()
    kept: list[np.ndarray] = []
    checkpoint = str(Path(model_file).resolve()) if model_file else ""
    channels, size, _ = shape = drawings.shape_of(loaded.model)
    if animate is not None:
        batch_size = animation.cats_at_once(batch_size, len(grid), shape)
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        recorder = None
        if animate is not None:
            recorder = animation.FrameRecorder(animation.hwc_uint8(starting_noise(chunk, size, channels)), len(grid))

        def step(i, x_t, x0):
            if recorder is not None and recorder.wants(i):
                recorder.add(i, animation.hwc_uint8(x0 if animate == "x0" else x_t))
            if progress:
                progress(len(chunk))

        images = generate(loaded.model, loaded.schedule, chunk, sampler, device=device, callback=step, grid=grid).numpy()
        for j, (seed, image) in enumerate(zip(chunk, images)):
            info = cats.CatInfo(seed, sampler, steps, loaded.sha256, model_name, checkpoint)
            path = cats.save_cat(out, image, info)
            drawn.paths.append(path)
            if recorder is not None:
                stem = path.stem + ("-x0" if animate == "x0" else "")
                final = np.ascontiguousarray(image.transpose(1, 2, 0))
                drawn.animations.append(animation.save_denoising(out, stem, recorder.of(j), final, {**info.__dict__, "shows": animate}))
        room = GRID_MAX - sum(map(len, kept))
        if contact_sheet and room > 0:
            kept.append(images[:room].copy())
    if contact_sheet:
        images = np.concatenate(kept)
        columns = math.ceil(math.sqrt(len(images)))
        info = {"seeds": seeds[: len(images)], "columns": columns, "sampler": sampler, "steps": steps,
                "model_sha256": loaded.sha256, "model": model_name, "checkpoint": checkpoint}
        drawn.grid = write_new(out, f"grid-{seeds[0]}", ".png", cats.png_writer(cats.contact_sheet(images, columns), info))
    return drawn
