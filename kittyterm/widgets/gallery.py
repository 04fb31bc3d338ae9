"""Gallery widgets: a thumbnail grid (one half-block image) and a large view of one cat.

The large view uses textual-image (Kitty graphics protocol or Sixel, full resolution) when the app
detected such a terminal before it started, and half-blocks everywhere else.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from textual.app import ComposeResult
from textual.containers import Container

from engine.data import BadImage, read_rgb

from .halfblock import HalfBlockImage
from .preview import SELECTED


def load_rgb(path: Path) -> np.ndarray:
    """`path` as (H, W, 3) uint8, read as training images are (bounded before decoding,
    `engine.data.read_rgb`); `BadImage` says why a file cannot be shown."""
    return np.asarray(read_rgb(path))


def make_thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Fit `image` into size×size (box filter when shrinking, nearest when enlarging), centred on black."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST
    small = np.asarray(Image.fromarray(image).resize((tw, th), resample))
    out = np.zeros((size, size, 3), np.uint8)
    y, x = (size - th) // 2, (size - tw) // 2
    out[y : y + th, x : x + tw] = small
    return out


class ThumbGrid(HalfBlockImage):
    """Thumbnails of all cats in a grid that scrolls by rows to keep the selection visible."""

    GAP = 2

    def __init__(self, *, thumb_size: int | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, valign="top")
        self.fixed_size = thumb_size
        self.paths: list[Path] = []
        self.selected = 0
        self.first_row = 0
        self._thumbs: dict[tuple[Path, int], np.ndarray] = {}

    @property
    def thumb_size(self) -> int:
        """Pixels per thumbnail: fixed, or sized for three columns (10 to 32 px)."""
        if self.fixed_size:
            return self.fixed_size
        return max(10, min(32, (self.size.width + self.GAP - 2) // 3 - self.GAP))

    def set_paths(self, paths: list[Path], selected: int = 0) -> None:
        self.paths = list(paths)
        keep = set(self.paths)
        self._thumbs = {key: t for key, t in self._thumbs.items() if key[0] in keep}
        self.selected = min(max(0, selected), max(0, len(self.paths) - 1))
        self.invalidate()

    def invalidate(self) -> None:
        self._strips = None
        self.refresh()

    @property
    def columns(self) -> int:
        return max(1, (self.size.width - 2 + self.GAP) // (self.thumb_size + self.GAP))

    @property
    def visible_rows(self) -> int:
        return max(1, (2 * self.size.height - 2 + self.GAP) // (self.thumb_size + self.GAP))

    def move(self, delta: int) -> None:
        if self.paths:
            self.selected = min(max(0, self.selected + delta), len(self.paths) - 1)
            self.invalidate()

    def thumbnail(self, path: Path) -> np.ndarray:
        size = self.thumb_size
        thumb = self._thumbs.get((path, size))
        if thumb is None:
            try:
                thumb = make_thumbnail(load_rgb(path), size)
            except BadImage:
                thumb = np.full((size, size, 3), (90, 30, 30), np.uint8)
            self._thumbs[(path, size)] = thumb
        return thumb

    def _scaled(self) -> np.ndarray | None:
        if not self.paths or self.size.width < self.thumb_size + 2:
            return None
        columns, rows = self.columns, self.visible_rows
        row = self.selected // columns
        if row < self.first_row:
            self.first_row = row
        elif row >= self.first_row + rows:
            self.first_row = row - rows + 1
        total_rows = math.ceil(len(self.paths) / columns)
        rows = min(rows, total_rows - self.first_row)
        t, gap = self.thumb_size, self.GAP
        out = np.empty((2 + rows * t + (rows - 1) * gap, 2 + columns * t + (columns - 1) * gap, 3), np.uint8)
        out[:] = self.background_rgb()
        start = self.first_row * columns
        for i, path in enumerate(self.paths[start : start + rows * columns]):
            r, c = divmod(i, columns)
            y, x = 1 + r * (t + gap), 1 + c * (t + gap)
            if start + i == self.selected:
                out[y - 1 : y + t + 1, x - 1 : x + t + 1] = SELECTED
            out[y : y + t, x : x + t] = self.thumbnail(path)
        return out


class CatView(Container):
    """One cat, as large as fits: textual-image when the terminal has graphics, else half-blocks."""

    DEFAULT_CSS = """
    CatView {
        height: 1fr;
        width: 1fr;
        align: center middle;
    }
    CatView > HalfBlockImage { width: 1fr; height: 1fr; }
    """

    def __init__(self, graphics: bool = False, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.graphics = graphics
        self.path: Path | None = None
        self.problem: str | None = None  # why the shown file cannot be drawn

    def compose(self) -> ComposeResult:
        if self.graphics:
            from textual_image.widget import Image as GraphicsImage

            image = GraphicsImage(id="cat-graphics")
            image.styles.width = "auto"
            image.styles.height = "1fr"
            yield image
        else:
            yield HalfBlockImage(smooth=True, max_scale=8, id="cat-halfblock")

    def show(self, path: Path | None) -> None:
        self.path = path
        image, self.problem = None, None
        if path is not None:
            try:
                image = load_rgb(path)
            except BadImage as error:
                self.problem = error.reason
        if self.graphics:
            widget = self.query_one("#cat-graphics")
            widget.image = Image.fromarray(image) if image is not None else None
        else:
            self.query_one("#cat-halfblock", HalfBlockImage).set_image(image)
