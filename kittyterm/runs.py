"""Training runs on disk and the choice of which model to sample from."""

from __future__ import annotations

import re
import time
from pathlib import Path

from . import locations

CHECKPOINT_NAME = "checkpoint.safetensors"


def run_name(preset: str, data_folder: Path) -> str:
    """A readable, stable name for the run of `preset` on `data_folder`, e.g. `tiny-catfaces64`."""
    folder = Path(data_folder).resolve()
    stem = folder.name if folder.name not in {"train", "images", "data"} else f"{folder.parent.name}-{folder.name}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "data"
    return f"{preset}-{slug}"


def run_dir(name: str) -> Path:
    return locations.runs_dir() / name


def archive_run(name: str) -> Path | None:
    """Move an existing run aside (never deleting it) so a fresh run can take its name."""
    current = run_dir(name)
    if not current.exists():
        return None
    target = current.with_name(f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = current.with_name(f"{name}.{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
    current.rename(target)
    return target


def latest_checkpoint() -> Path | None:
    """The most recently written checkpoint among the user's active runs."""
    root = locations.runs_dir()
    if not root.is_dir():
        return None
    candidates = [p for p in root.glob(f"*/{CHECKPOINT_NAME}") if "." not in p.parent.name]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def default_model() -> Path:
    """The user's own latest model if they trained one, else the shipped kitty-64."""
    return latest_checkpoint() or locations.shipped_model()
