"""The denoising preview: a grid of cats drawn with half-blocks, with a selection frame, laid
out in as many columns as make the cats largest."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .halfblock import HalfBlockImage

SELECTED = (255, 176, 0)
KEPT = (80, 200, 120)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour when enlarging (crisp pixels), box filter when shrinking."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if height >= h and width >= w:
        rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
        return image[rows[:, None], cols[None, :]]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def grid_cell_size(count: int, image_shape: tuple[int, int], area: tuple[int, int], columns: int = 2, gap: int = 2, margin: int = 1, max_scale: int = 4) -> tuple[int, int]:
    """(height, width) in pixels of each image so that the grid fits `area` (cols, rows of cells)."""
    h, w = image_shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    avail_w = area[0] - 2 * margin - (columns - 1) * gap
    avail_h = 2 * area[1] - 2 * margin - (rows - 1) * gap
    if avail_w < columns or avail_h < rows:
        return 0, 0
    scale = min(avail_w / (columns * w), avail_h / (rows * h), max_scale)
    if scale >= 1 and int(scale) / scale >= 0.8:
        scale = float(int(scale))  # a whole factor keeps every pixel the same size
    # else: enlarge by the fraction that fills the space (a whole factor would waste > 20 %)
    return max(1, int(h * scale)), max(1, int(w * scale))


def best_columns(count: int, image_shape: tuple[int, int], area: tuple[int, int], max_scale: int = 4) -> int:
    """The number of columns that draws `count` images largest in `area` (fewest on a tie)."""
    sizes = [(grid_cell_size(count, image_shape, area, columns, max_scale=max_scale)[0], -columns) for columns in range(1, count + 1)]
    return -max(sizes)[1]


def compose_grid(
    images: np.ndarray,
    cell: tuple[int, int],
    background: tuple[int, int, int],
    columns: int = 2,
    gap: int = 2,
    margin: int = 1,
    selected: int | None = None,
    kept: frozenset[int] | set[int] = frozenset(),
) -> np.ndarray:
    """Tile (B, H, W, 3) images resized to `cell`, with a 1-px frame around the selected (amber)
    and kept (green) ones drawn in the gaps."""
    count = len(images)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    ch, cw = cell
    height = 2 * margin + rows * ch + (rows - 1) * gap
    width = 2 * margin + columns * cw + (columns - 1) * gap
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = background
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        y, x = margin + r * (ch + gap), margin + c * (cw + gap)
        colour = SELECTED if i == selected else KEPT if i in kept else None
        if colour is not None:
            out[y - 1 : y + ch + 1, x - 1 : x + cw + 1] = colour
        out[y : y + ch, x : x + cw] = resize(image, ch, cw)
    return out


class CatGrid(HalfBlockImage):
    """Shows a batch of (B, H, W, 3) images (a morph's frames too) as a grid scaled to the widget,
    in the columns that draw them largest; `columns` is how many it was laid out in last."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.images: np.ndarray | None = None
        self.selected: int | None = None
        self.kept: set[int] = set()
        self.max_scale = 4
        self.columns = 2

    def set_cats(self, images: np.ndarray | None, selected: int | None = None, kept: set[int] | None = None) -> None:
        self.images = images
        self.selected = selected
        self.kept = set(kept or ())
        self._image = None
        self._strips = None
        self.refresh()

    def _scaled(self) -> np.ndarray | None:
        images = self.images
        if images is None or len(images) == 0:
            return None
        area = tuple(self.size)
        self.columns = best_columns(len(images), images.shape[1:3], area, self.max_scale)
        cell = grid_cell_size(len(images), images.shape[1:3], area, self.columns, max_scale=self.max_scale)
        if cell == (0, 0):
            return None
        self._image = compose_grid(images, cell, self.background_rgb(), self.columns, selected=self.selected, kept=self.kept)
        return self._image
