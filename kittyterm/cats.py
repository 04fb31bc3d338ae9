"""Cat images on disk: PNGs that carry how they were made, written without overwriting."""

from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

METADATA_KEY = "kittyterm"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


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


def _png_info(info: CatInfo | None) -> PngImagePlugin.PngInfo:
    png = PngImagePlugin.PngInfo()
    if info is not None:
        png.add_text(METADATA_KEY, info.to_json())
        png.add_text("Software", "kittyterm")
    return png


def write_png_exclusive(image: Image.Image, path: Path, info: CatInfo | None = None) -> None:
    """Write `image` to `path`, failing with FileExistsError rather than replacing a file.

    The bytes go to a temporary name first, then are hard-linked into place: `os.link` refuses to
    overwrite, and a crash never leaves a half-written PNG under the final name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG", pnginfo=_png_info(info))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except OSError as error:
            if isinstance(error, FileExistsError) or error.errno not in _NO_HARD_LINKS:
                raise
            # FAT, exFAT and some network file systems have no hard links: claim the name with
            # O_EXCL (still never overwriting), then move the finished file over our empty claim.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            try:
                os.replace(tmp, path)
            except BaseException:
                path.unlink(missing_ok=True)  # our own empty claim: never leave it behind
                raise
    except OSError as error:
        if isinstance(error, FileExistsError) or not error.errno:
            raise
        # Name the cat's file: a full disk fails in write() or fsync(), which name no file, and
        # other calls name the temporary, which means nothing to the user.
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def save_cat(folder: Path, image_chw: np.ndarray, info: CatInfo, stem: str | None = None) -> Path:
    """Save one cat as `<stem>.png` (default `cat-<seed>`), adding -2, -3 … if the name is taken."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = stem or f"cat-{info.seed}"
    image = to_pil(image_chw)
    for attempt in range(1, 10_000):
        path = folder / (f"{base}.png" if attempt == 1 else f"{base}-{attempt}.png")
        if os.path.lexists(path):
            continue  # taken (the link below still guards against a race)
        try:
            write_png_exclusive(image, path, info)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free file name for {base}.png in {folder}")


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
