"""Child process of the bounded-checkpoint test: loads each file given on the command line with
`engine.checkpoint.load_model` and prints, per file, how it ended, its wall time and how far the
process's peak resident memory rose above what it held before (VmHWM is reset between files,
where the kernel allows it; otherwise the figure is an upper bound).

    python -m tests.faults.load_child WARM_UP_FILE FILE...

The address space is capped at 1 GiB above the warmed-up process, so a loader that reads a
huge file whole fails here with MemoryError instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def main(warm_up: str, paths: list[str]) -> None:
    import torch

    from engine.checkpoint import CheckpointError, load_model

    torch.set_num_threads(1)
    load_model(warm_up)  # imports and one-time initialisation are not the files' doing
    limit = status_kib("VmSize") * 1024 + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    results = []
    for path in paths:
        peak_was_reset = reset_peak()
        before = status_kib("VmRSS")
        began = time.perf_counter()
        try:
            load_model(path)
            outcome = "loaded"
        except CheckpointError as error:
            outcome = "refused: " + str(error)
        except BaseException as error:  # MemoryError, RuntimeError from an allocation …
            outcome = f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - began
        results.append(dict(path=path, outcome=outcome, seconds=seconds,
                            peak_mib=(status_kib("VmHWM") - before) / 1024, exact=peak_was_reset))
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
