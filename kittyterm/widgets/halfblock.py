"""Truecolour half-block images: two pixels per terminal cell.

Each cell shows "▀" with the top pixel as its foreground colour and the bottom pixel as its
background colour. Building a frame is vectorised: numpy packs every cell's two colours into one
integer key and finds runs of equal keys; the only Python loop is over runs, and each distinct
key's `rich.style.Style` is built once and cached. An image with an odd number of rows gets an
empty (terminal-background) bottom half in its last row.

The pure functions (`fit_size`, `resize_nearest`, `halfblock_keys`, `halfblock_cells`,
`render_strips`) are what the tests check pixel by pixel; `HalfBlockImage` is the widget.
"""

from __future__ import annotations

import numpy as np
from rich.color import Color, ColorType
from rich.color_triplet import ColorTriplet
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

HALF_BLOCK = "▀"
NO_COLOR = 1 << 24  # a packed "colour" meaning: leave the terminal background
_KEY_SHIFT = 25

RGB = tuple[int, int, int]
_new_tuple = tuple.__new__
_TRUECOLOR = ColorType.TRUECOLOR


def as_rgb_image(image: np.ndarray) -> np.ndarray:
    """Check and return a (H, W, 3) uint8 array."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a (H, W, 3) uint8 image, got {array.dtype} {array.shape}")
    return array


def pack_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) int64 of 0xRRGGBB."""
    rgb = image.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def halfblock_keys(image: np.ndarray) -> np.ndarray:
    """One int64 key per cell, (ceil(H/2), W): top colour << 25 | bottom colour.

    The bottom colour of the last row of an odd-height image is `NO_COLOR`.
    """
    packed = pack_rgb(as_rgb_image(image))
    top = packed[0::2]
    bottom = packed[1::2]
    if bottom.shape[0] < top.shape[0]:
        bottom = np.concatenate([bottom, np.full((1, packed.shape[1]), NO_COLOR, np.int64)])
    return (top << _KEY_SHIFT) | bottom


def _unpack(colour: int) -> RGB | None:
    if colour == NO_COLOR:
        return None
    return (colour >> 16) & 255, (colour >> 8) & 255, colour & 255


def halfblock_cells(image: np.ndarray) -> list[list[tuple[str, RGB, RGB | None]]]:
    """The cells of `image` as rows of (character, foreground rgb, background rgb or None)."""
    mask = (1 << _KEY_SHIFT) - 1
    return [
        [(HALF_BLOCK, _unpack(key >> _KEY_SHIFT), _unpack(key & mask)) for key in row]
        for row in halfblock_keys(image).tolist()
    ]


def fit_size(source: tuple[int, int], area: tuple[int, int], integer_upscale: bool = True, max_scale: float | None = None) -> tuple[int, int]:
    """The (height, width) in pixels to draw a `source` (h, w) image in an `area` of (cols, rows) cells.

    The aspect ratio is kept. With `integer_upscale`, enlarging uses a whole factor (every pixel the
    same size) unless that would leave more than a fifth of the space unused; shrinking uses
    whatever factor fits.
    """
    h, w = source
    cols, rows = area
    if h <= 0 or w <= 0 or cols <= 0 or rows <= 0:
        return 0, 0
    scale = min(cols / w, 2 * rows / h)
    if max_scale is not None:
        scale = min(scale, max_scale)
    if scale >= 1 and integer_upscale and int(scale) / scale >= 0.8:
        scale = float(int(scale))  # else a whole factor would waste over 20 % of the space
    return max(1, min(2 * rows, int(h * scale))), max(1, min(cols, int(w * scale)))


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize sampling pixel centres (an integer factor repeats each pixel)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return image[rows[:, None], cols[None, :]]


class StyleCache:
    """`Style` objects for packed (top, bottom) keys, built once each; cleared when it grows past `limit`.

    With `truecolor_ansi`, each new style also gets its SGR codes ("38;2;r;g;b;48;2;r;g;b") written
    into Rich's per-style cache (`Style._ansi`), which Rich and Textual use as is when they encode
    a frame: formatting eight numbers is much cheaper than Rich deriving the codes from the colours,
    and a frame of photos has thousands of new styles. Only valid for a truecolor terminal (the
    codes are never downgraded), so the widget turns it on only then.
    """

    def __init__(self, limit: int = 200_000, truecolor_ansi: bool = False) -> None:
        self.limit = limit
        self.truecolor_ansi = truecolor_ansi
        self._styles: dict[int, Style] = {}

    def __len__(self) -> int:
        return len(self._styles)

    def styles(self, keys: list[int]) -> list[Style]:
        """The style for each key (keys should be distinct for speed, but need not be)."""
        cache = self._styles
        if len(cache) + len(keys) > self.limit:
            cache.clear()
        mask = (1 << _KEY_SHIFT) - 1
        get, new, from_color, truecolor = cache.get, _new_tuple, Style.from_color, _TRUECOLOR
        ansi = self.truecolor_ansi
        out = []
        for key in keys:
            style = get(key)
            if style is None:
                # tuple.__new__ skips the namedtuple constructors' Python frames; colours are not
                # cached on their own, as a frame of photos hardly repeats one.
                top, bottom = key >> _KEY_SHIFT, key & mask
                r, g, b = top >> 16, (top >> 8) & 255, top & 255
                fg = new(Color, ("", truecolor, None, new(ColorTriplet, (r, g, b))))
                if bottom == NO_COLOR:
                    style = from_color(fg, None)
                    if ansi:
                        style._ansi = f"38;2;{r};{g};{b}"
                else:
                    br, bg_, bb = bottom >> 16, (bottom >> 8) & 255, bottom & 255
                    style = from_color(fg, new(Color, ("", truecolor, None, new(ColorTriplet, (br, bg_, bb)))))
                    if ansi:
                        style._ansi = f"38;2;{r};{g};{b};48;2;{br};{bg_};{bb}"
                cache[key] = style
            out.append(style)
        return out


_SHARED_CACHE = StyleCache()


def render_strips(image: np.ndarray, cache: StyleCache | None = None) -> list[Strip]:
    """Strips for `image`, one per cell row, with runs of identical cells merged into one segment."""
    keys = halfblock_keys(image)
    rows, width = keys.shape
    if rows == 0 or width == 0:
        return []
    cache = cache if cache is not None else _SHARED_CACHE
    flat = keys.ravel()
    starts_mask = np.empty(flat.shape, dtype=bool)
    starts_mask[0] = True
    np.not_equal(flat[1:], flat[:-1], out=starts_mask[1:])
    starts_mask[::width] = True  # a run never crosses a row boundary
    starts = np.flatnonzero(starts_mask)
    lengths = np.diff(np.append(starts, flat.size))
    unique, inverse = np.unique(flat[starts], return_inverse=True)
    styles = cache.styles(unique.tolist())
    texts = {1: HALF_BLOCK}
    row_ends = np.searchsorted(starts, np.arange(1, rows + 1) * width).tolist()
    segments = []
    for index, length in zip(inverse.tolist(), lengths.tolist(), strict=True):
        text = texts.get(length)
        if text is None:
            text = texts[length] = HALF_BLOCK * length
        segments.append(_new_tuple(Segment, (text, styles[index], None)))
    strips = []
    begin = 0
    for end in row_ends:
        strips.append(Strip(segments[begin:end], width))
        begin = end
    return strips


class HalfBlockImage(Widget):
    """Shows an (H, W, 3) uint8 image as half-block pixels, scaled to fit and centred.

    `integer_upscale`: enlarge only by whole factors (crisp pixels). `smooth`: shrink with a box
    filter instead of nearest neighbour (for still images; frames use nearest for speed).
    """

    DEFAULT_CSS = """
    HalfBlockImage {
        width: 1fr;
        height: 1fr;
    }
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        *,
        integer_upscale: bool = True,
        max_scale: float | None = None,
        smooth: bool = False,
        valign: str = "middle",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.integer_upscale = integer_upscale
        self.max_scale = max_scale
        self.smooth = smooth
        self.valign = valign
        self._image: np.ndarray | None = None
        self._strips: list[Strip] | None = None
        self._built_for: Size | None = None
        self._offset = (0, 0)
        self._cache = StyleCache()
        self._cache_checked = False
        if image is not None:
            self._image = as_rgb_image(image)

    @property
    def image(self) -> np.ndarray | None:
        return self._image

    def set_image(self, image: np.ndarray | None) -> None:
        """Show `image` (or nothing); the strips are rebuilt on the next render."""
        self._image = None if image is None else as_rgb_image(image)
        self._strips = None
        self.refresh()

    def background_rgb(self) -> tuple[int, int, int]:
        """The colour behind the widget, for drawing margins and gaps into images."""
        color = self.rich_style.bgcolor
        if color is None:
            return (0, 0, 0)
        r, g, b = color.get_truecolor()
        return int(r), int(g), int(b)

    def on_resize(self) -> None:
        self._strips = None
        self.refresh()

    def drawn_size(self) -> tuple[int, int]:
        """(height, width) in pixels that the current image is drawn at."""
        if self._image is None:
            return 0, 0
        width, height = self.size
        return fit_size(self._image.shape[:2], (width, height), self.integer_upscale, self.max_scale)

    def _scaled(self) -> np.ndarray | None:
        image = self._image
        if image is None:
            return None
        height, width = self.drawn_size()
        if height == 0 or width == 0:
            return None
        if self.smooth and (height < image.shape[0] or width < image.shape[1]):
            from PIL import Image

            return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))
        return resize_nearest(image, height, width)

    def _build(self) -> list[Strip]:
        if not self._cache_checked:  # precomputed SGR codes only where the console is truecolor
            self._cache_checked = True
            self._cache.truecolor_ansi = self.app.console.color_system == "truecolor"
        scaled = self._scaled()
        self._built_for = self.size
        if scaled is None:
            self._offset = (0, 0)
            return []
        strips = render_strips(scaled, self._cache)
        width, height = self.size
        top = 0 if self.valign == "top" else (height - len(strips)) // 2
        self._offset = ((width - scaled.shape[1]) // 2, top)
        return strips

    def render_line(self, y: int) -> Strip:
        if self._strips is None or self._built_for != self.size:
            self._strips = self._build()
        width = self.size.width
        style = self.rich_style
        left, top = self._offset
        index = y - top
        if 0 <= index < len(self._strips):
            strip = self._strips[index]
            if left < 0 or strip.cell_length > width:  # never draw outside the widget
                return strip.crop(max(0, -left), max(0, -left) + width).extend_cell_length(width, style)
            right = width - left - strip.cell_length
            if left or right:
                parts = []
                if left > 0:
                    parts.append(Segment(" " * left, style))
                parts.extend(strip)
                if right > 0:
                    parts.append(Segment(" " * right, style))
                return Strip(parts, width)
            return strip
        return Strip.blank(width, style)
