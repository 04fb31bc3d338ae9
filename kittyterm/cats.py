"""Cat images on disk: PNGs (and GIFs) that carry how they were made, written without overwriting."""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from engine.files import write_new

METADATA_KEY = "kittyterm"
GIF_SIDE = 256  # GIF frames are enlarged by a whole factor to about this many pixels


@dataclass(frozen=True)
class CatInfo:
    """What made a cat: enough to make it again."""

    seed: int
    sampler: str
    steps: int
    model_sha256: str
    model: str = ""
    checkpoint: str = ""  # the model's file (`kittyterm sample --checkpoint`); "" for a copy of a training EMA

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def to_pil(image_chw: np.ndarray) -> Image.Image:
    """A (3, H, W) uint8 array (or tensor) as a PIL image."""
    array = np.asarray(image_chw, dtype=np.uint8)
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), "RGB")


def png_writer(image: Image.Image, info: CatInfo | dict | None = None):
    """A writer for `engine.files` that saves `image` as PNG with kittyterm's metadata (if any)."""
    png = PngImagePlugin.PngInfo()
    if info is not None:
        png.add_text(METADATA_KEY, info.to_json() if isinstance(info, CatInfo) else json.dumps(info, sort_keys=True))
        png.add_text("Software", "kittyterm")
    return lambda file: image.save(file, format="PNG", pnginfo=png)


def save_cat(folder: Path, image_chw: np.ndarray, info: CatInfo | dict, stem: str | None = None) -> Path:
    """Save one cat as `<stem>.png` (default `cat-<seed>`), adding -2, -3 … if the name is taken."""
    return write_new(folder, stem or f"cat-{info.seed}", ".png", png_writer(to_pil(image_chw), info))


def gif_frame(frame: np.ndarray, held: bool = False) -> Image.Image:
    """An (H, W, 3) uint8 frame in 256 colours, its own palette: octree (fast) for a passing
    frame, median cut refined by k-means for one that is `held` (shown longest)."""
    image = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    if held:
        return image.quantize(256, method=Image.Quantize.MEDIANCUT, kmeans=2, dither=Image.Dither.NONE)
    return image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def gif_writer(frames: Sequence[np.ndarray], durations: Sequence[int], info: dict | None = None):
    """A writer for `engine.files` that saves (H, W, 3) uint8 frames as a looping GIF, each shown
    for its duration (ms) and enlarged (nearest) by a whole factor to about `GIF_SIDE` pixels, with
    kittyterm's metadata as the GIF comment. The longest-shown frame is held (see `gif_frame`)."""
    scale = max(1, GIF_SIDE // max(frames[0].shape[:2]))
    held = int(np.argmax(durations))
    images = []
    for i, frame in enumerate(frames):
        image = gif_frame(frame, held=i == held)
        images.append(image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST))
    options = {"comment": json.dumps(info, sort_keys=True)} if info is not None else {}
    return lambda file: images[0].save(
        file, format="GIF", save_all=True, append_images=images[1:], duration=list(durations), loop=0, **options
    )


def read_metadata(path: Path) -> dict | None:
    """The kittyterm metadata of a PNG as written, or None for any other image."""
    try:
        with Image.open(path) as image:
            text = image.info.get(METADATA_KEY) if hasattr(image, "info") else None
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def several_cats_in(path: Path) -> str | None:
    """What a picture kittyterm wrote holds when it is several cats rather than one (a contact
    sheet records its columns, a timelapse sheet its steps, a timelapse strip its count of
    seeds); None for one cat and for any picture kittyterm did not write."""
    data = read_metadata(path) or {}
    if "columns" in data:
        return "a contact sheet"
    if "timelapse" in data:
        return "a timelapse sheet"
    if "count" in data:
        return "a timelapse strip"
    return None


def read_cat_info(path: Path) -> CatInfo | None:
    """How a cat was made, from its PNG's metadata; None for any other image."""
    data = read_metadata(path)
    if data is None:
        return None
    try:
        return CatInfo(**{k: data[k] for k in CatInfo.__dataclass_fields__ if k in data})
    except TypeError:
        return None


def contact_sheet(images: np.ndarray, columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile (N, 3, H, W) uint8 images into one grid image with a thin white border."""
    n, _, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (columns * (w + padding) + padding, rows * (h + padding) + padding), "white")
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(to_pil(image), (padding + c * (w + padding), padding + r * (h + padding)))
    return sheet


def animations_of(path: Path) -> list[Path]:
    """The denoising GIFs saved of the cat in the PNG at `path` (the app's `a`, `sample --gif`):
    beside it, named after it, and recording the same seed, sampler, steps and model."""
    cat = read_cat_info(path)
    if cat is None:
        return []
    found = []
    for gif in sorted(Path(path).parent.glob(f"{glob.escape(Path(path).stem)}*.gif")):
        try:
            with Image.open(gif) as image:
                data = json.loads(image.info.get("comment", b""))
        except (OSError, ValueError, TypeError):
            continue
        if isinstance(data, dict) and all(data.get(key) == getattr(cat, key) for key in ("seed", "sampler", "steps", "model_sha256")):
            found.append(gif)
    return found
