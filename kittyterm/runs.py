"""Training runs on disk: one folder per run under `locations.runs_dir()`.

A run folder holds `checkpoint.safetensors`, `run.json` (the resolved data folder it trains on,
its preset and, for a fine-tune, the weights it started from) and `lock` (see
`engine.files.RunLock`). A run is named after its preset and its data folder's name; a second,
different folder with the same name gets a short hash of its path appended, so two folders never
share a run. A run moved aside by `--fresh` becomes `NAME.YYYYmmdd-HHMMSS` and is never picked
as "your latest model" again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from engine.files import atomic_write, free_names

from . import locations

CHECKPOINT_NAME = "checkpoint.safetensors"
RUN_FILE = "run.json"
ARCHIVED = re.compile(r"\.\d{8}-\d{6}(-\d+)?$")  # the suffix `archive_run` adds
GENERIC_FOLDERS = {"train", "images", "data", "photos", "pictures"}


def slug(text: str) -> str:
    """`text` as a file-name-safe word: letters (any script), digits, `_`, `.` and `-`."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "data"


def folder_label(data_folder: Path) -> str:
    """`catfaces64`, or `catfaces64-train` for a generic last name like `train`."""
    folder = Path(data_folder).resolve()
    return f"{folder.parent.name}-{folder.name}" if folder.name.lower() in GENERIC_FOLDERS else folder.name


def run_dir(name: str) -> Path:
    return locations.runs_dir() / name


def checkpoint_path(name: str) -> Path:
    return run_dir(name) / CHECKPOINT_NAME


def run_info(name: str) -> dict:
    """What `run.json` records ({} for a run made before it existed, or a damaged file)."""
    try:
        info = json.loads((run_dir(name) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def record_run(name: str, data_folder: Path, preset: str, init: str | None) -> None:
    """Write `run.json` (when it changes): the run's resolved data folder, preset and the weights it
    started from (`init`; none for a run trained from scratch)."""
    recorded = run_info(name)
    info = {key: value for key, value in recorded.items() if key != "init"}
    info.update({"data": str(Path(data_folder).resolve()), "preset": preset}, **({"init": init} if init else {}))
    if info == recorded:
        return
    atomic_write(run_dir(name) / RUN_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())


def run_name(preset: str, data_folder: Path) -> str:
    """The run of `preset` on `data_folder`: `PRESET-FOLDER` (e.g. `tiny-catfaces64`), or
    `PRESET-FOLDER-HASH` when a run of that name already trains on another folder."""
    folder = Path(data_folder).resolve()
    name = f"{preset}-{slug(folder_label(folder))}"
    recorded = run_info(name).get("data")
    if recorded is None or Path(recorded) == folder:
        return name  # new, made before runs recorded their folder, or this folder's own
    return f"{name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:6]}"


def archive_run(name: str) -> Path | None:
    """Move a run aside (never deleting it) so a fresh run can take its name."""
    current = run_dir(name)
    if not current.exists():
        return None
    stem = f"{name}.{time.strftime('%Y%m%d-%H%M%S')}"
    target = next(free_names(current.parent, stem, ""))
    os.rename(current, target)
    return target


def is_archived(name: str) -> bool:
    return bool(ARCHIVED.search(name))


def active_runs() -> list[str]:
    """Names of the runs in the runs folder, not counting runs moved aside."""
    root = locations.runs_dir()
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith(".") and not is_archived(path.name))


def run_of_folder(data_folder: Path) -> str | None:
    """The run that last trained on `data_folder` (by its recorded folder), so that a run started
    with a choice (a preset, a fine-tune) is found again without repeating it; None if none."""
    folder = str(Path(data_folder).resolve())
    found = [name for name in active_runs() if run_info(name).get("data") == folder]
    return max(found, key=lambda name: _last_written(run_dir(name)), default=None)


def _last_written(folder: Path) -> float:
    for path in (folder / CHECKPOINT_NAME, folder / RUN_FILE):
        if path.exists():
            return path.stat().st_mtime
    return 0.0


def latest_checkpoint() -> Path | None:
    """The most recently written checkpoint among the user's active runs (not moved aside)."""
    candidates = [checkpoint_path(name) for name in active_runs() if checkpoint_path(name).is_file()]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)
