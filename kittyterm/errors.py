"""The one error type both front ends show as it is: the CLI as one line with exit status 1,
the app in its status line."""

from pathlib import Path


class UserError(Exception):
    """A problem the user can fix, already worded for them."""


def existing_folder(path: Path, what: str) -> Path:
    """`path` with ~ expanded; UserError naming it as `what` unless it is a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{what} {path} does not exist or is not a folder")
    return folder
