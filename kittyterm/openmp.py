"""How torch's OpenMP threads wait for work, chosen before torch loads its OpenMP runtime.

Between two parallel regions libgomp's idle threads spin for a while before they sleep. On an
otherwise idle machine that is the fastest choice; beside another busy process the spinning
threads take the very cores the threads they wait for need. Beside a busy two-thread torch job,
16 cats took 9.1 s with libgomp's policy and 4.8 s with passive waiting on 2 cores, while passive
waiting costs about a tenth on an idle machine (BENCHMARKS.md, "Beside another job").
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from pathlib import Path

LOADAVG = Path("/proc/loadavg")


def others_running(reads: int = 3, interval: float = 0.005) -> int:
    """How many tasks besides this one the kernel has running or waiting to run: the fewest over a
    few reads of /proc/loadavg's fourth field ("running/total", Linux), so that a task merely
    passing by is not counted; 0 where it cannot be read."""
    fewest = None
    for read in range(reads):
        if read:
            time.sleep(interval)
        try:
            running = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        fewest = running if fewest is None else min(fewest, running)
    return max(0, (fewest or 0) - 1)


def choose_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """Ask for passive waiting when other tasks are running as kittyterm starts; leave libgomp's
    own policy on an idle machine and any OMP_WAIT_POLICY the user set. Call before torch is imported."""
    if "OMP_WAIT_POLICY" not in environ and others_running() >= 1:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
