"""The one error type both front ends show as it is: the CLI as one line with exit status 1,
the app in its status line."""

import os
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix, already worded for them."""


def existing_folder(path: Path, what: str) -> Path:
    """`path` with ~ expanded; UserError naming it as `what` unless it is a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{what} {path} does not exist or is not a folder")
    return folder


def new_file(path: Path) -> Path:
    """`path` with ~ expanded, as a file to create: UserError if it names a folder, if its folder
    is missing or no folder, or if the file exists (outputs never overwrite)."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"{path} is a folder; --out names the file to write (for example {out / 'NAME'})")
    if not out.parent.exists():
        raise UserError(f"cannot write {path}: the folder {out.parent} does not exist")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {path}: {out.parent} is not a folder")
    if os.path.lexists(out):
        raise UserError(f"{path} exists; choose another name")
    return out
