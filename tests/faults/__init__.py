"""Fault-injection helpers for the reliability tests (tests/test_reliability_*.py).

* `record(...)` notes what a test injected and what survived; `python -m tests.reliability_report`
  collects these figures into the table of docs/reliability.md (they are written only when
  $KITTYTERM_RELIABILITY_DIR is set, so plain test runs leave nothing behind).
* `patched_module(...)` replaces a module's `os` (or any other module it imported) by a proxy that
  fails chosen calls, so a fault hits exactly the code under test and nothing else in the process.
* `oserror(...)` builds the error a real system call raises (ENOSPC, EACCES, EROFS, EIO …).
"""

from __future__ import annotations

import errno as errno_codes
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPORT_DIR_VARIABLE = "KITTYTERM_RELIABILITY_DIR"

SECTIONS = {
    "kill": "1. SIGKILL at random moments (incl. mid-checkpoint-write), then resume",
    "signal": "1. SIGINT / SIGTERM / SIGHUP, headless and in the app (save, then exit)",
    "disk": "2. Disk full / unwritable (checkpoint, gallery, image cache)",
    "images": "3. Bad images (generated corpus)",
    "fuzz": "3. Loader fuzzing (hypothesis bytes)",
    "checkpoints": "4. Bad checkpoints",
    "numbers": "5. Bad numbers (NaN/inf in loss, gradient, weights)",
    "arguments": "6. Bad CLI arguments",
    "app": "7. The app under faults",
    "runs": "8. Two writers on one run; runs keyed by their data folder",
}


def record(
    section: str,
    *,
    faults: int = 0,
    survived: int = 0,
    lost: int = 0,
    bad_inputs: int = 0,
    crashes: int = 0,
    note: str = "",
) -> None:
    """Note the figures of one test for the reliability table (no-op unless the report runs)."""
    assert section in SECTIONS, section
    folder = os.environ.get(REPORT_DIR_VARIABLE)
    if not folder:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    entry = dict(
        section=section, test=test, faults=faults, survived=survived, lost=lost,
        bad_inputs=bad_inputs, crashes=crashes, note=note,
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", test)[-80:]
    (Path(folder) / f"{section}-{slug}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps(entry))


def oserror(code: int, filename: str | os.PathLike | None = None) -> OSError:
    """The exception a failing system call raises: the right subclass, errno and message."""
    return OSError(code, os.strerror(code), *([os.fspath(filename)] if filename is not None else []))


def raising(code: int, filename: str | None = None) -> Callable:
    def fail(*args, **kwargs):
        raise oserror(code, filename)

    return fail


class ModuleProxy(ModuleType):
    """Looks like `real` except for the attributes given as overrides."""

    def __init__(self, real: ModuleType, **overrides) -> None:
        super().__init__(real.__name__)
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def patched_module(monkeypatch, module: ModuleType, name: str, **overrides) -> ModuleProxy:
    """Replace `module.<name>` (e.g. engine.checkpoint.os) by a proxy with `overrides`."""
    proxy = ModuleProxy(getattr(module, name), **overrides)
    monkeypatch.setattr(module, name, proxy)
    return proxy


class ShortWriteFile:
    """A binary file whose writes fail with `code` once `budget` bytes were written: a disk that
    fills up in the middle of a file (the bytes before the failure really land on disk)."""

    def __init__(self, real, budget: int, code: int = errno_codes.ENOSPC) -> None:
        self._real = real
        self._budget = budget
        self._code = code

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._budget:
            self._real.write(data[: self._budget])
            self._real.flush()
            self._budget = 0
            raise oserror(self._code)
        self._budget -= len(data)
        return self._real.write(data)

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._real.close()

    def __iter__(self):
        return iter(self._real)
