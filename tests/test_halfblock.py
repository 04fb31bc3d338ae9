"""The half-block renderer, checked pixel by pixel against known images."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from textual.app import App

from kittyterm.widgets.halfblock import (
    HALF_BLOCK,
    HalfBlockImage,
    StyleCache,
    fit_size,
    halfblock_cells,
    halfblock_keys,
    render_strips,
    resize_nearest,
)
from kittyterm.widgets.preview import KEPT, SELECTED, compose_grid, grid_cell_size


def rgb(style_color):
    return None if style_color is None else tuple(style_color.triplet)


def decode(strips) -> list[list[tuple[str, tuple | None, tuple | None]]]:
    """Strips back to cells: (char, fg, bg) per terminal cell."""
    rows = []
    for strip in strips:
        row = []
        for segment in strip:
            for char in segment.text:
                row.append((char, rgb(segment.style.color), rgb(segment.style.bgcolor)))
        rows.append(row)
    return rows


KNOWN = np.array(
    [
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        [[10, 20, 30], [40, 50, 60], [70, 80, 90]],
        [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        [[255, 255, 255], [0, 0, 0], [128, 64, 32]],
    ],
    dtype=np.uint8,
)


def test_cells_of_a_known_image():
    assert halfblock_cells(KNOWN) == [
        [
            (HALF_BLOCK, (255, 0, 0), (10, 20, 30)),
            (HALF_BLOCK, (0, 255, 0), (40, 50, 60)),
            (HALF_BLOCK, (0, 0, 255), (70, 80, 90)),
        ],
        [
            (HALF_BLOCK, (1, 2, 3), (255, 255, 255)),
            (HALF_BLOCK, (4, 5, 6), (0, 0, 0)),
            (HALF_BLOCK, (7, 8, 9), (128, 64, 32)),
        ],
    ]


def test_strips_of_a_known_image_match_the_cells():
    strips = render_strips(KNOWN, StyleCache())
    assert len(strips) == 2
    assert all(strip.cell_length == 3 for strip in strips)
    assert decode(strips) == halfblock_cells(KNOWN)


def test_odd_height_leaves_the_last_bottom_half_empty():
    image = KNOWN[:3]
    cells = halfblock_cells(image)
    assert cells[1] == [(HALF_BLOCK, (1, 2, 3), None), (HALF_BLOCK, (4, 5, 6), None), (HALF_BLOCK, (7, 8, 9), None)]
    assert decode(render_strips(image, StyleCache())) == cells


def test_runs_of_equal_cells_become_one_segment():
    image = np.zeros((2, 5, 3), np.uint8)
    image[0] = (200, 100, 50)
    image[1, :3] = (1, 1, 1)
    image[1, 3:] = (9, 9, 9)
    (strip,) = render_strips(image, StyleCache())
    segments = list(strip)
    assert [s.text for s in segments] == [HALF_BLOCK * 3, HALF_BLOCK * 2]
    assert rgb(segments[0].style.color) == (200, 100, 50) and rgb(segments[0].style.bgcolor) == (1, 1, 1)
    assert rgb(segments[1].style.bgcolor) == (9, 9, 9)


def test_runs_never_cross_rows():
    image = np.zeros((4, 3, 3), np.uint8)  # every cell identical
    strips = render_strips(image, StyleCache())
    assert [[s.text for s in strip] for strip in strips] == [[HALF_BLOCK * 3], [HALF_BLOCK * 3]]


def test_keys_pack_top_and_bottom():
    keys = halfblock_keys(KNOWN[:2, :1])
    assert keys.shape == (1, 1)
    assert int(keys[0, 0]) == (0xFF0000 << 25) | 0x0A141E


def test_style_cache_reuses_styles_and_is_bounded():
    cache = StyleCache(limit=4)
    a = cache.styles([1, 2])
    b = cache.styles([2, 1])
    assert a[0] is b[1] and a[1] is b[0]
    cache.styles([10, 11, 12])  # over the limit: cleared, then refilled
    assert len(cache) == 3


def test_precomputed_sgr_codes_match_what_rich_renders():
    from rich.color import ColorSystem
    from textual.strip import Strip

    image = np.array([[[1, 2, 3], [250, 128, 0]], [[255, 255, 255], [0, 0, 0]], [[9, 99, 199], [7, 7, 7]]], np.uint8)
    fast = render_strips(image, StyleCache(truecolor_ansi=True))
    plain = render_strips(image, StyleCache())
    for fast_strip, plain_strip in zip(fast, plain, strict=True):
        for a, b in zip(fast_strip, plain_strip, strict=True):
            assert a.style._ansi == Strip.render_ansi(b.style.copy(), ColorSystem.TRUECOLOR)
            assert a.style == b.style


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([2, 256]),
)
def test_strips_decode_back_to_the_image(h, w, seed, levels):
    rng = np.random.default_rng(seed)
    image = (rng.integers(0, levels, (h, w, 3)) * (255 // (levels - 1))).astype(np.uint8)
    cells = decode(render_strips(image, StyleCache()))
    for y in range(h):
        for x in range(w):
            char, fg, bg = cells[y // 2][x]
            assert char == HALF_BLOCK
            assert (fg if y % 2 == 0 else bg) == tuple(int(v) for v in image[y, x])
    if h % 2:
        assert all(bg is None for _, _, bg in cells[-1])


def test_nearest_resize_repeats_pixels_exactly():
    image = KNOWN[:2, :2]
    big = resize_nearest(image, 4, 6)
    assert big.shape == (4, 6, 3)
    for y in range(4):
        for x in range(6):
            assert tuple(big[y, x]) == tuple(image[y // 2, x // 3])
    assert resize_nearest(image, 2, 2) is image


def test_fit_size():
    assert fit_size((32, 32), (80, 24)) == (48, 48)  # ×1 would waste a third: ×1.5
    assert fit_size((32, 32), (80, 19)) == (32, 32)  # ×1.19: the whole factor 1 wastes < 20 %
    assert fit_size((32, 32), (80, 40)) == (64, 64)  # integer upscale
    assert fit_size((32, 32), (80, 40), integer_upscale=False) == (80, 80)
    assert fit_size((64, 64), (20, 40)) == (20, 20)  # shrink to fit the width
    assert fit_size((64, 64), (100, 50), max_scale=1) == (64, 64)
    assert fit_size((8, 8), (0, 10)) == (0, 0)


def test_grid_layout_and_selection_frame():
    images = np.stack([np.full((4, 4, 3), 10 * (i + 1), np.uint8) for i in range(4)])
    cell = grid_cell_size(4, (4, 4), (20, 10), gap=2, margin=1)
    assert cell == (8, 8)  # 20 cols → (20 - 2 - 2) / 2 = 8 px per cat, 20 px tall → 8 as well
    grid = compose_grid(images, cell, (0, 0, 0), selected=1, kept={2})
    assert grid.shape == (1 + 8 + 2 + 8 + 1, 1 + 8 + 2 + 8 + 1, 3)
    assert (grid[1:9, 1:9] == 10).all() and (grid[1:9, 11:19] == 20).all()
    assert (grid[11:19, 1:9] == 30).all() and (grid[11:19, 11:19] == 40).all()
    assert tuple(grid[0, 10]) == SELECTED and tuple(grid[9, 19]) == SELECTED  # frame around cat 2
    assert tuple(grid[10, 0]) == KEPT  # frame around cat 3
    assert tuple(grid[0, 0]) == (0, 0, 0)


class OneImage(App):
    CSS = "Screen { background: rgb(0,0,0); } HalfBlockImage { width: 10; height: 4; }"

    def compose(self):
        yield HalfBlockImage(KNOWN, id="img")


def test_widget_centres_the_image_and_fills_the_rest():
    async def run():
        app = OneImage()
        async with app.run_test(size=(20, 6)) as pilot:
            await pilot.pause()
            widget = app.query_one(HalfBlockImage)
            # 10×4 cells = 10×8 px: a 4×3 image enlarges by 2 (integer factor) to 8×6 px = 6×4 cells
            assert widget.drawn_size() == (8, 6)
            lines = [widget.render_line(y) for y in range(4)]
            for line in lines:
                assert line.cell_length == 10
            first = list(lines[0])
            assert first[0].text == "  "  # left padding (10 - 6) // 2
            assert decode([lines[0]])[0][2:8] == [(HALF_BLOCK, (255, 0, 0), (255, 0, 0))] * 2 + [(HALF_BLOCK, (0, 255, 0), (0, 255, 0))] * 2 + [(HALF_BLOCK, (0, 0, 255), (0, 0, 255))] * 2
            widget.set_image(None)
            assert all(seg.text.strip() == "" for seg in widget.render_line(0))

    asyncio.run(run())


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError):
        render_strips(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError):
        render_strips(np.zeros((2, 2, 3), np.float32))
    assert render_strips(np.zeros((0, 3, 3), np.uint8)) == []
