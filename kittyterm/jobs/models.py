"""Which model to sample from, and loading it once.

The choice, in order: a file the user names; the run the user names (or the app's current run)
if it has a checkpoint; the user's most recently trained run; the shipped kitty-64.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from .. import locations, runs
from ..errors import UserError


def model_path(checkpoint: Path | None = None, run: str | None = None) -> Path:
    """The model file to sample from (see the module docstring); UserError if there is none."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise UserError(f"no model at {path}")
        return path
    if run is not None and runs.checkpoint_path(run).is_file():
        return runs.checkpoint_path(run)
    path = runs.latest_checkpoint() or locations.shipped_model()
    if not path.is_file():
        raise UserError("no model to sample from: train one with `kittyterm train --data DIR` (the shipped kitty-64 is not installed)")
    return path


def model_with_sha256(sha256: str) -> Path | None:
    """The model file whose sha256 is `sha256` (what a cat's PNG records), if the user has it:
    the checkpoints of the active runs, newest first, then the shipped kitty-64."""
    root = locations.runs_dir()
    found = sorted(root.glob(f"*/{runs.CHECKPOINT_NAME}"), key=lambda p: -p.stat().st_mtime) if root.is_dir() else []
    for path in [p for p in found if not runs.is_archived(p.parent.name)] + [locations.shipped_model()]:
        try:
            with open(path, "rb") as file:
                if hashlib.file_digest(file, "sha256").hexdigest() == sha256:
                    return path
        except OSError:
            continue
    return None
def active_runs() -> list[str]:
    """The runs that have a checkpoint to sample from (not those moved aside), by name."""
    root = locations.runs_dir()
    if not root.is_dir():
        return []
    return sorted(
        path.parent.name for path in root.glob(f"*/{runs.CHECKPOINT_NAME}")
        if not path.parent.name.startswith(".") and not runs.is_archived(path.parent.name)
    )


def check_model_file(path: Path) -> None:
    """Refuse a file that is not a kittyterm model, from its header alone (bounded, no weights
    read): CheckpointError saying why."""
    from engine.checkpoint import CheckpointFile, model_configs

    with CheckpointFile(path) as checkpoint:
        model_configs(path, checkpoint.metadata)


def chosen_model_path(choice: str, run: str | None = None) -> Path:
    """The file the app's model choice names (`settings.Generator.model`): "shipped", "run:NAME",
    "file:PATH", or "current": run `run`'s checkpoint, else as `kittyterm sample` chooses."""
    kind, _, value = choice.partition(":")
    if kind == "shipped":
        path = locations.shipped_model()
        if not path.is_file():
            raise UserError("the shipped kitty-64 is not installed")
        return path
    if kind == "run":
        path = runs.checkpoint_path(value)
        if not path.is_file():
            raise UserError(f"run {value} has no checkpoint")
        return path
    if kind == "file":
        return model_path(Path(value))
    return model_path(run=run)


def describe(path: Path, step: int = 0) -> str:
    """`tiny-cats @ step 500` for a run's checkpoint, the file's stem for any other file."""
    name = path.parent.name if path.name == runs.CHECKPOINT_NAME else path.stem
    return f"{name} @ step {step:,}" if step else name


class ModelCache:
    """Loads a model file once and hands out the same network until the file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._loaded = None

    def load(self, path: Path, device: str = "cpu"):
        """`engine.checkpoint.load_model(path, device)`, reused while the file is unchanged."""
        from engine.checkpoint import load_model

        info = Path(path).stat()
        key = (Path(path).resolve(), info.st_mtime_ns, info.st_size, device)
        with self._lock:
            if key != self._key:
                self._loaded, self._key = load_model(path, device), key
            return self._loaded
