"""Variations of a picture (SDEdit, Meng et al. 2022) and morphs between two cats, into a folder
(`kittyterm vary`, `kittyterm morph`) or for the app's gallery (`v`, `m`).

A variation noises the picture (centre-cropped and resized to the model's size, decoded as
training images are) to the level its strength sets and denoises it again with each seed's
noise; its PNG records the picture's sha256 and the strength beside the seed. A morph draws its
frames from the two seeds' noise spherically interpolated (see `engine.generate.SlerpNoise`):
its first and last frames are the two seeds' cats.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data import BadImage, decode_image

from .. import cats
from ..errors import UserError
from . import animation, drawings
from .sampling import Progress

STRENGTH = 0.5
MORPH_FRAMES = 16


@dataclass(frozen=True)
class Picture:
    """A picture to vary: (3, S, S) uint8 at the model's size, with what identifies it."""

    image: np.ndarray
    name: str
    sha256: str


def read_picture(path: Path, size: int) -> Picture:
    """Decode `path` with the bounded decoder of training images (first frame, RGB, centre
    square, resized to `size`); a UserError saying why for anything that is not a usable picture."""
    path = Path(path).expanduser()
    try:
        image = decode_image(path, size)
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except BadImage as error:
        raise UserError(f"cannot use {path} as a picture: {error.reason}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    return Picture(np.ascontiguousarray(image.transpose(2, 0, 1)), path.name, digest)


def variations(model, schedule, picture: Picture, seeds: list[int], sampler: str, steps: int, strength: float) -> drawings.Drawing:
    """Variations of `picture`, recording its name, sha256 and the strength with each."""
    extra = {"source": picture.name, "source_sha256": picture.sha256, "strength": strength}
    return drawings.variations(model, schedule, picture.image, seeds, sampler, steps, strength, extra)


def draw_in_chunks(drawing: drawings.Drawing, loaded, device: str, batch_size: int, progress: Progress | None):
    """Yield (first index, images) of `drawing`, `batch_size` images at a time."""
    for begin in range(0, len(drawing), batch_size):
        part = drawing.part(begin, begin + batch_size)
        step = (lambda *_: progress(len(part))) if progress else None
        yield begin, drawings.draw(part, loaded.model, loaded.schedule, device, step)


def to_folder(loaded, out: Path, drawing: drawings.Drawing, device: str, batch_size: int, model_name: str,
              gif: bool = False, progress: Progress | None = None) -> Path | None:
    """Each image of `drawing` as a PNG named and described by the drawing (never overwriting);
    with `gif` (morphs), also `morph-A-B.gif`, its frames there and back: its path is returned."""
    drawing, kept = drawing.in_free_names(out), []
    for begin, images in draw_in_chunks(drawing, loaded, device, batch_size, progress):
        for offset, image in enumerate(images):
            cats.save_cat(out, image, drawing.info(begin + offset, loaded.sha256, model_name), drawing.stem(begin + offset))
        if gif:
            kept.append(images)
    if not gif:
        return None
    return animation.save_morph(out, drawing.morph_stem, np.concatenate(kept), drawing.info(None, loaded.sha256, model_name))


def morph_ends(path_a: Path, path_b: Path) -> tuple[cats.CatInfo, cats.CatInfo]:
    """The two kept cats a morph in the app runs between: a UserError unless both are cats drawn
    from a seed alone (a variation's seed is not the whole story; neither is a morph's), by one
    model (the morph draws both ends with the first cat's)."""
    ends = []
    for path in (path_a, path_b):
        info = cats.read_cat_info(path)
        if info is None:
            raise UserError(f"{Path(path).name} does not say which seed made it, so it cannot be morphed")
        if "source_sha256" in (cats.read_metadata(path) or {}):
            raise UserError(f"{Path(path).name} is a variation of a picture, not a cat of its seed alone, so it cannot be morphed")
        ends.append(info)
    a, b = ends
    if a.model_sha256 != b.model_sha256 or (not a.model_sha256 and a.model != b.model):  # no file: a training EMA at a step
        raise UserError(
            f"{Path(path_a).name} and {Path(path_b).name} were drawn by different models "
            f"({a.model or 'a training EMA'} and {b.model or 'a training EMA'}), so no morph runs between them"
        )
    return a, b
