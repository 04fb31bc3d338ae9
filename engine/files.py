"""Safe files: atomic replacement, exclusive creation, free names, stale temporaries, run locks,
and the one scanner of image folders.

Every writer in kittyterm goes through `atomic_write` (replace a file whole: checkpoints, caches,
settings) or `write_new` / `write_exclusive` (create a file, never overwriting one: cats, grids,
exports). Both write a temporary `.NAME.<pid>.<random>.tmp` beside the target, fsync it and move it
into place, so a crash or a full disk leaves the old file or the new one, never a torn one. While
it writes, the writer holds an advisory lock (flock) on its temporary; the OS drops the lock when
the process dies, so `remove_stale_temporaries` can tell a killed writer's leftovers (lock free)
from a live writer's work in progress (lock held) and removes only the former.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]  # writes the file's content to an open binary file
Content = bytes | Writer

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
MAX_FREE_NAMES = 10_000
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}
_YOUNG_SECONDS = 10.0  # a temporary younger than this whose writer is alive may not be locked yet


def naming(error: OSError, path: Path) -> OSError:
    """The same error, naming the file being written: a full disk fails in write() or fsync(),
    which name no file, and other calls name the temporary, which means nothing to the user."""
    if not error.errno:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def _write(fd: int, content: Content) -> None:
    with os.fdopen(fd, "wb", closefd=False) as file:
        if isinstance(content, (bytes, bytearray, memoryview)):
            file.write(content)
        else:
            content(file)
        file.flush()
        os.fsync(file.fileno())


def _temporary(path: Path) -> tuple[int, Path]:
    """Create and lock `.NAME.<pid>.<random>.tmp` beside `path`; returns (fd, its path)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed: marks the temporary as in use
    return fd, Path(tmp)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems cannot fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, content: Content) -> None:
    """Replace `path` with `content` (bytes, or a function writing to a binary file) atomically:
    a temporary beside it, fsync, `os.replace`. Errors are OSErrors naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = _temporary(path)
    except OSError as error:
        raise naming(error, path) from None
    try:
        try:
            os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's 0600 is too strict
        except OSError:
            pass  # file systems without Unix permissions (FAT, some shares): keep mkstemp's mode
        _write(fd, content)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise naming(error, path) from None
        raise
    finally:
        os.close(fd)
    _sync_folder(path.parent)


def write_exclusive(path: Path, content: Content) -> None:
    """Create `path` with `content`, raising FileExistsError rather than replacing a file.

    The bytes go to a temporary first and are hard-linked into place (`os.link` never
    overwrites), so the final name never holds a half-written file. File systems without hard
    links (FAT, exFAT, some shares) claim the name with O_EXCL and move the finished file over
    that empty claim instead.
    """
    path = Path(path)
    try:
        fd, tmp = _temporary(path)
    except OSError as error:
        raise naming(error, path) from None
    try:
        os.fchmod(fd, 0o644)
        _write(fd, content)
        try:
            os.link(tmp, path)
        except OSError as error:
            if isinstance(error, FileExistsError) or error.errno not in _NO_HARD_LINKS:
                raise
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            try:
                os.replace(tmp, path)
            except BaseException:
                path.unlink(missing_ok=True)  # our own empty claim: never leave it behind
                raise
    except OSError as error:
        if isinstance(error, FileExistsError):
            raise
        raise naming(error, path) from None
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)
    _sync_folder(path.parent)


def free_names(folder: Path, stem: str, suffix: str) -> Iterator[Path]:
    """`stem.suffix`, then `stem-2.suffix`, `stem-3.suffix` … in `folder` (names that may be free)."""
    for attempt in range(1, MAX_FREE_NAMES):
        name = f"{stem}{suffix}" if attempt == 1 else f"{stem}-{attempt}{suffix}"
        path = Path(folder) / name
        if not os.path.lexists(path):
            yield path


def write_new(folder: Path, stem: str, suffix: str, content: Content) -> Path:
    """Write `content` under the first free name of `free_names`; never overwrites. Returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in free_names(folder, stem, suffix):
        try:
            write_exclusive(path, content)
            return path
        except FileExistsError:
            continue  # taken between the check and the link: try the next name
    raise FileExistsError(errno.EEXIST, f"no free file name for {stem}{suffix}", str(folder))


def _writer_pid(tmp: Path) -> int | None:
    """The pid in `.NAME.<pid>.<random>.tmp`, or None for a file not named by `_temporary`."""
    parts = tmp.name.rsplit(".", 3)
    return int(parts[1]) if len(parts) == 4 and parts[3] == "tmp" and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but not ours to signal
    return True


def is_stale(tmp: Path) -> bool:
    """A temporary of ours whose writer is gone: nobody holds its lock (and it is not a
    brand-new file of a live writer that has yet to take the lock)."""
    pid = _writer_pid(tmp)
    if pid is None:
        return False  # not one of ours: never touch it
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        young = time.time() - os.fstat(fd).st_mtime < _YOUNG_SECONDS
        return not (young and _alive(pid))
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path, pattern: str = "*") -> list[Path]:
    """Delete the temporaries that killed writers left in `folder` for files whose names match
    `pattern` (a glob; `glob.escape` an exact name); call it when a writer of that kind starts.
    Live writers' temporaries, and files not named like ours, are kept."""
    removed = []
    try:
        candidates = sorted(Path(folder).glob(f".{pattern}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        if is_stale(tmp):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------- run locks


class RunBusy(Exception):
    """Another process holds the run's lock: it is training that run."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"run {Path(folder).name} is being trained by {holder}")
        self.folder = Path(folder)
        self.pid = pid


class RunLock:
    """One writer per run: an exclusive flock on `<run folder>/lock`, which holds the holder's pid.

    The OS releases the lock when the holder's process ends, however it ends (a SIGKILL
    included), so a lock is never stale; the file itself is left in place, except by the holder
    of a run folder it removes, which is why `acquire` checks that it locked the file still there.
    """

    FILE_NAME = "lock"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise `RunBusy` naming the holder's pid. Re-entrant in one object."""
        if self._fd is not None:
            return self
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunBusy(self.folder, self.holder()) from None
            except BaseException:
                os.close(fd)
                raise
            if self._is_current(fd):
                break
            os.close(fd)  # the file was removed or replaced (the run moved aside) before we locked it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        """Whether `fd` is still the file at `self.path` (a locked but unlinked file locks nothing)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock

    def holder(self) -> int | None:
        """The pid of the process holding the lock, or None when it is free."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- image folders


def no_images_message(folder: Path) -> str:
    return f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"


def scan_images(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files under `folder`, sorted; unusable names with an image extension and why).

    Recursive; symlinked files are followed, symlinked folders are not descended into (so loops
    cannot recurse forever); hidden files and folders are left out. Unusable: broken links,
    symlink loops, FIFOs, devices and unreadable entries.
    """
    found: list[Path] = []
    unusable: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root, name)
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError as err:
                reason = {errno.ELOOP: "symlink loop", errno.ENOENT: "broken symlink"}.get(err.errno)
                unusable.append((path, reason or f"unreadable: {err.strerror}"))
                continue
            if stat.S_ISREG(mode):
                found.append(path)
            else:
                unusable.append((path, "not a regular file"))
    return sorted(found), sorted(unusable)
