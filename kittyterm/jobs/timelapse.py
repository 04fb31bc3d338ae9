"""A run's learning timelapse: where its frames live, the one way both `kittyterm train` and the
app draw them while training, and the GIF and sheet `kittyterm timelapse` makes of them.

Each frame is one PNG strip in `<run>/timelapse/`, `step-000500.png`: the timelapse seeds side by
side, as the EMA of that step draws them, with the step, seeds, sampler and steps in its
metadata. A frame is written whole or not at all (`engine.files.atomic_write`), so a killed run
keeps every frame written before the kill and never a partial one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.files import atomic_write, remove_stale_temporaries, write_exclusive

from .. import cats, locations, runs
from ..errors import UserError, new_file

FOLDER = "timelapse"
FRAME_NAME = re.compile(r"step-(\d+)\.png")
GIF_COLUMNS = 4  # cats per row of a GIF frame
PADDING = 2
LABEL_HEIGHT = 14  # the band under a GIF frame that names its step
SHEET_LABEL_WIDTH = 64  # the column left of a sheet's rows that names their steps
SHEET_MAX_ROWS = 64
BACKGROUND = (24, 24, 24)
INK = (235, 235, 235)
FRAME_MS = 150
LAST_FRAME_MS = 1500


@dataclass
class Frame:
    step: int
    images: np.ndarray  # (B, H, W, 3) uint8, one image per seed
    path: Path


def frames_dir(run: str) -> Path:
    return runs.run_dir(run) / FOLDER


def frame_name(step: int) -> str:
    return f"step-{step:06d}.png"


class RunFrames:
    """The frames of one run on disk (an `engine.timelapse.FrameStore`)."""

    def __init__(self, folder: Path, sampler: str = "", steps: int = 0) -> None:
        self.folder = Path(folder)
        self.sampler = sampler
        self.steps_taken = steps
        remove_stale_temporaries(self.folder, "step-*.png")  # a killed run's frame in writing

    def steps(self) -> set[int]:
        return {step for step, _ in frame_paths(self.folder)}

    def write(self, step: int, images) -> Path:
        """Keep the frame of `step`, (B, 3, H, W) uint8, replacing an older frame of that step."""
        array = np.asarray(images, dtype=np.uint8)
        strip = Image.fromarray(np.ascontiguousarray(np.concatenate(list(array.transpose(0, 2, 3, 1)), axis=1)), "RGB")
        info = {"step": step, "count": len(array), "sampler": self.sampler, "steps": self.steps_taken}
        path = self.folder / frame_name(step)
        atomic_write(path, cats.png_writer(strip, info))
        return path

    def drop_after(self, step: int) -> None:
        for later, path in frame_paths(self.folder):
            if later > step:
                path.unlink(missing_ok=True)


def frame_paths(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the frames in `folder`, by step."""
    try:
        found = [(int(match[1]), path) for path in Path(folder).iterdir() if (match := FRAME_NAME.fullmatch(path.name))]
    except OSError:
        return []
    return sorted(found)


def read_frame(step: int, path: Path) -> Frame | None:
    """The frame at `path`, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            strip = np.asarray(image.convert("RGB"))
            info = json.loads(image.info.get(cats.METADATA_KEY) or "{}")
    except (OSError, ValueError):
        return None
    count = info.get("count") if isinstance(info, dict) else None
    height, width = strip.shape[:2]
    if not isinstance(count, int) or count < 1 or width != count * height:
        count = max(1, width // max(height, 1))
    size = width // count
    return Frame(step, np.stack([strip[:, i * size : (i + 1) * size] for i in range(count)]), path)


def read_frames(folder: Path) -> list[Frame]:
    """The readable frames in `folder`, by step."""
    return [frame for step, path in frame_paths(folder) if (frame := read_frame(step, path)) is not None]


def start_timelapse(run, training, every_steps: int | None = None):
    """Draw `run`'s timelapse while `training` (its `TrainingThread`, not yet started) trains:
    the same policy for `kittyterm train` and the app (see `engine.timelapse`)."""
    from engine.samplers import DEFAULT_SAMPLER
    from engine.timelapse import STEPS, TimelapseThread

    store = RunFrames(frames_dir(run.name), DEFAULT_SAMPLER, STEPS)
    thread = TimelapseThread(store, sampler=DEFAULT_SAMPLER, steps=STEPS, every_steps=every_steps)
    thread.attach(training)
    return thread


# ---------------------------------------------------------------- kittyterm timelapse


def run_folder(run: str | None) -> Path:
    """The folder of run `run` (a name, or a run folder's path); by default the run `kittyterm
    sample` would use, the most recently trained."""
    if run is None:
        latest = runs.latest_checkpoint()
        if latest is None:
            raise UserError("no training run yet: `kittyterm train --data DIR` draws a timelapse while it trains")
        return latest.parent
    path = Path(run).expanduser()
    folder = path if ("/" in run or run in (".", "..")) else runs.run_dir(run)
    if not folder.is_dir():
        root = locations.runs_dir()
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        listed = f" (runs: {', '.join(known)})" if known else ""
        raise UserError(f"no run {run!r}{listed}")
    return folder


def spread(count: int, room: int) -> list[int]:
    """`room` indices (at most `count`) spread evenly over 0 … count − 1, the first and last included."""
    if room >= count:
        return list(range(count))
    if room <= 1:
        return [count - 1][:room]
    return sorted({round(i * (count - 1) / (room - 1)) for i in range(room)})


def label(image: Image.Image, xy: tuple[int, int], text: str) -> None:
    ImageDraw.Draw(image).text(xy, text, fill=INK)


def tile(images: np.ndarray, columns: int, scale: int) -> Image.Image:
    """(B, H, W, 3) images `scale` times enlarged in rows of `columns`, `PADDING` apart and around."""
    count, height, width = images.shape[:3]
    rows = math.ceil(count / columns)
    h, w = height * scale, width * scale
    out = Image.new("RGB", (columns * (w + PADDING) + PADDING, rows * (h + PADDING) + PADDING), BACKGROUND)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        cat = Image.fromarray(image).resize((w, h), Image.Resampling.NEAREST)
        out.paste(cat, (PADDING + c * (w + PADDING), PADDING + r * (h + PADDING)))
    return out


def gif_scale(frames: Sequence[Frame]) -> int:
    """Cats are shown at least 64 px tall (the tiny preset's 32 px twice as large)."""
    return max(1, 64 // frames[0].images.shape[1])


def labelled_frame(frame: Frame, scale: int) -> Image.Image:
    """The seeds of `frame` in rows of `GIF_COLUMNS`, with its step written under them."""
    cats_image = tile(frame.images, min(GIF_COLUMNS, len(frame.images)), scale)
    out = Image.new("RGB", (cats_image.width, cats_image.height + LABEL_HEIGHT), BACKGROUND)
    out.paste(cats_image, (0, 0))
    label(out, (PADDING + 1, cats_image.height), f"step {frame.step:,}")
    return out


def sheet(frames: Sequence[Frame], scale: int) -> Image.Image:
    """One row per frame (at most `SHEET_MAX_ROWS`, spread over the run), its step on the left."""
    rows = [frames[i] for i in spread(len(frames), SHEET_MAX_ROWS)]
    strips = [tile(frame.images, len(frame.images), scale) for frame in rows]
    width = SHEET_LABEL_WIDTH + max(strip.width for strip in strips)
    out = Image.new("RGB", (width, sum(strip.height - PADDING for strip in strips) + PADDING), BACKGROUND)
    y = 0
    for frame, strip in zip(rows, strips):
        out.paste(strip, (SHEET_LABEL_WIDTH, y))
        label(out, (PADDING + 1, y + strip.height // 2 - 6), f"step {frame.step:,}")
        y += strip.height - PADDING
    return out


@dataclass
class Written:
    gif: Path
    frames: int
    sheet: Path | None = None


def write_timelapse(folder: Path, out: Path, with_sheet: bool = False) -> Written:
    """Write the frames of the run in `folder` as an animated GIF at `out` (one frame per kept
    step, the last one held; its comment names the run and the steps, `cats.gif_writer`) and,
    with `with_sheet`, a PNG sheet beside it (`out` as .png); neither file may exist."""
    out = Path(out).expanduser()
    if out.is_dir():
        new_file(out)  # says it is a folder, and that --out names the file
    if out.suffix.lower() != ".gif":
        raise UserError(f"--out names the GIF to write, and {out} does not end in .gif")
    for target in [out, out.with_suffix(".png")] if with_sheet else [out]:
        new_file(target)
    frames = read_frames(folder / FOLDER)
    if not frames:
        raise UserError(f"run {folder.name} has no timelapse frames yet (they are drawn while it trains)")
    sizes = {frame.images.shape for frame in frames}
    if len(sizes) > 1:
        raise UserError(f"the timelapse frames of run {folder.name} differ in size ({len(sizes)} sizes)")
    scale = gif_scale(frames)
    pictures = [np.asarray(labelled_frame(frame, scale)) for frame in frames]
    durations = [FRAME_MS] * (len(pictures) - 1) + [LAST_FRAME_MS]
    info = {"run": folder.name, "timelapse": [frame.step for frame in frames], "count": len(frames[0].images)}
    write_exclusive(out, cats.gif_writer(pictures, durations, info))
    written = Written(out, len(pictures))
    if with_sheet:
        written.sheet = out.with_suffix(".png")
        rows = [frames[i].step for i in spread(len(frames), SHEET_MAX_ROWS)]
        write_exclusive(written.sheet, cats.png_writer(sheet(frames, scale), {**info, "timelapse": rows}))
    return written
