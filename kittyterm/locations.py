"""Where kittyterm keeps its files: platformdirs' user folders, or all under $KITTYTERM_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "kittyterm"
HOME_VARIABLE = "KITTYTERM_HOME"
SHIPPED_MODEL_NAME = "kitty-64.safetensors"


def _root(kind: str) -> Path:
    home = os.environ.get(HOME_VARIABLE)
    if home:
        return Path(home).expanduser() / kind
    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP_NAME, appauthor=False))


def data_dir() -> Path:
    return _root("data")


def cache_dir() -> Path:
    return _root("cache")


def config_dir() -> Path:
    return _root("config")


def runs_dir() -> Path:
    """One folder per training run, each holding `checkpoint.safetensors`."""
    return data_dir() / "runs"


def gallery_dir() -> Path:
    return data_dir() / "gallery"


def config_file() -> Path:
    return config_dir() / "config.json"


def shipped_model() -> Path:
    """The pretrained kitty-64 weights: installed inside the package, or in a source checkout's assets/."""
    here = Path(__file__).resolve().parent
    candidates = [here / "assets" / SHIPPED_MODEL_NAME, here.parent / "assets" / SHIPPED_MODEL_NAME]
    return next((path for path in candidates if path.exists()), candidates[0])
