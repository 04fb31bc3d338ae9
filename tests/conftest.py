from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def kittyterm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps kittyterm's user files inside its own temporary folder."""
    home = tmp_path / "kittyterm-home"
    monkeypatch.setenv("KITTYTERM_HOME", str(home))
    return home


def two_tone_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A warm top half over a cool bottom half, with a little noise: easy structure to learn."""
    image = np.empty((size, size, 3), dtype=np.float64)
    image[: size // 2] = (220, 60, 40)
    image[size // 2 :] = (30, 60, 200)
    image += rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture
def synthetic_folder(tmp_path: Path) -> Path:
    """24 small two-tone PNGs."""
    folder = tmp_path / "synthetic"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(two_tone_image(rng, 32)).save(folder / f"cat{i:02d}.png")
    return folder
