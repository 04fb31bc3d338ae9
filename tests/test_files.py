"""`engine.files`: atomic and exclusive writes, free names, stale temporaries and run locks.

Other processes play the other writers: a lock or a temporary is only interesting when its owner
is a different process that is alive, or was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import files

ROOT = Path(__file__).resolve().parents[1]


def child(code: str) -> subprocess.Popen:
    """A Python process running `code`, which prints "ready" once it holds what it holds."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def test_write_exclusive_never_replaces_and_write_new_takes_the_next_free_name(tmp_path):
    files.write_exclusive(tmp_path / "a.png", b"one")
    with pytest.raises(FileExistsError):
        files.write_exclusive(tmp_path / "a.png", b"two")
    assert (tmp_path / "a.png").read_bytes() == b"one"
    second = files.write_new(tmp_path, "a", ".png", lambda f: f.write(b"two"))
    third = files.write_new(tmp_path, "a", ".png", b"three")
    assert [second.name, third.name] == ["a-2.png", "a-3.png"] and third.read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-2.png", "a-3.png", "a.png"]


def test_atomic_write_replaces_whole_and_keeps_the_mode(tmp_path):
    path = tmp_path / "settings.json"
    files.atomic_write(path, b"old")
    path.chmod(0o600)
    files.atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["settings.json"]


def test_a_killed_writers_temporary_is_removed_and_a_live_writers_is_kept(tmp_path):
    """Seen to catch: a cleaner that deleted every `.NAME.*.tmp` (a live writer's work in progress
    included), which is what the checkpoint cleaner did before temporaries were locked."""
    target = tmp_path / "checkpoint.safetensors"
    writer = f"""
        from pathlib import Path
        import time
        from engine import files
        fd, tmp = files._temporary(Path({str(target)!r}))
        print("ready", flush=True)
        time.sleep(60)
    """
    live, dead = child(writer), child(writer)
    try:
        killed(dead)
        temporaries = sorted(tmp_path.glob(".checkpoint.safetensors.*.tmp"))
        assert len(temporaries) == 2
        removed = files.remove_stale_temporaries(tmp_path, target.name)  # (no glob characters in it)
        assert [p.name.split(".")[3] for p in removed] == [str(dead.pid)]
        assert [p.name.split(".")[3] for p in tmp_path.glob(".*.tmp")] == [str(live.pid)]
    finally:
        killed(live)
    assert files.remove_stale_temporaries(tmp_path) and not list(tmp_path.glob(".*.tmp"))


def test_a_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    run = tmp_path / "runs" / "tiny-cats"
    holder = child(f"""
        from engine import files
        lock = files.RunLock({str(run)!r}).acquire()
        print("ready", flush=True)
        import time; time.sleep(60)
    """)
    try:
        assert files.RunLock(run).holder() == holder.pid
        with pytest.raises(files.RunBusy, match=f"run tiny-cats is being trained by process {holder.pid}") as info:
            files.RunLock(run).acquire()
        assert info.value.pid == holder.pid
    finally:
        killed(holder)  # SIGKILL: no chance to clean up, and still no stale lock
    lock = files.RunLock(run).acquire()
    try:
        assert lock.held and files.RunLock(run).holder() == os.getpid()
    finally:
        lock.release()
    assert files.RunLock(run).holder() is None


def test_scan_leaves_out_hidden_files_and_names_unusable_ones(tmp_path):
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "._a.jpg").write_bytes(b"resource fork")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "b.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.png")
    found, unusable = files.scan_images(tmp_path)
    assert [p.name for p in found] == ["a.JPG"]
    assert [(p.name, why) for p, why in unusable] == [("pipe.png", "not a regular file")]


def test_a_brand_new_temporary_of_a_live_writer_is_not_stale(tmp_path):
    """The instant between creating a temporary and locking it must not look like a dead writer."""
    young = tmp_path / f".x.png.{os.getpid()}.abcdefgh.tmp"
    foreign = tmp_path / ".x.png.someone-else.tmp"
    foreign.write_bytes(b"")
    young.write_bytes(b"")
    assert not files.is_stale(young)
    old = time.time() - 3600
    os.utime(young, (old, old))
    assert files.is_stale(young)
    os.utime(foreign, (old, old))
    assert not files.is_stale(foreign)  # not named like ours: never removed


def test_a_lock_file_removed_before_it_was_locked_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """A failed start removes its new run folder, lock file included, while it holds the lock. A
    second process that opened that file just before must not lock the unlinked file (which
    locks nothing: a third process would create and lock a new one): it locks the file there now."""
    lock = files.RunLock(tmp_path / "run")
    real_flock = files.fcntl.flock
    calls = []

    def flock_after_the_holder_left(fd, operation):
        calls.append(fd)
        if len(calls) == 1:  # the holder removes the folder and exits between our open and flock
            lock.path.unlink()
            lock.path.parent.rmdir()
        return real_flock(fd, operation)

    monkeypatch.setattr(files.fcntl, "flock", flock_after_the_holder_left)
    lock.acquire()
    try:
        assert len(calls) == 2
        assert os.path.samestat(os.fstat(lock._fd), os.stat(lock.path))
        assert lock.path.read_text().strip() == str(os.getpid())
    finally:
        lock.release()
