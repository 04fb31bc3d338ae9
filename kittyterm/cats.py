"""Cat images on disk: PNGs that carry how they were made, written without overwriting."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from engine.files import write_new

METADATA_KEY = "kittyterm"


@dataclass(frozen=True)
class CatInfo:
    """What made a cat: enough to make it again."""

    seed: int
    sampler: str
    steps: int
    model_sha256: str
    model: str = ""

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


def save_cat(folder: Path, image_chw: np.ndarray, info: CatInfo, stem: str | None = None) -> Path:
    """Save one cat as `<stem>.png` (default `cat-<seed>`), adding -2, -3 … if the name is taken."""
    return write_new(folder, stem or f"cat-{info.seed}", ".png", png_writer(to_pil(image_chw), info))


def read_cat_info(path: Path) -> CatInfo | None:
    """The kittyterm metadata of a PNG, or None for any other image."""
    try:
        with Image.open(path) as image:
            text = image.info.get(METADATA_KEY) if hasattr(image, "info") else None
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
        return CatInfo(**{k: data[k] for k in CatInfo.__dataclass_fields__ if k in data})
    except (ValueError, TypeError):
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
