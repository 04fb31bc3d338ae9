"""`kittyterm ARGS` with markers for the kill test: `python -m tests.faults.train_child train ...`.

The command is the real one (`kittyterm.cli.main`); this wrapper only reports on stdout, one
line each, unbuffered, so that the parent knows what the child had done when it was killed:

    STEP n     a training step finished (the trainer is at step n)
    WRITE p    a checkpoint's bytes are written to the temporary p and are about to be fsynced
    SAVED n    a checkpoint of step n is in place

and with $KT_WRITE_DELAY=s it sleeps s seconds inside that fsync, so a kill can land in the
middle of a checkpoint write (after the bytes, before the rename) on purpose, not by luck.
"""

from __future__ import annotations

import os
import sys
import time


def mark(text: str) -> None:
    os.write(1, (text + "\n").encode())


def main() -> None:
    delay = float(os.environ.get("KT_WRITE_DELAY", "0") or 0)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if ".checkpoint.safetensors." in target and target.endswith(".tmp"):
            mark(f"WRITE {target}")
            if delay:
                time.sleep(delay)
        real_fsync(fd)

    os.fsync = fsync  # engine.checkpoint calls os.fsync through the module, so it sees this one

    from engine import threads
    from engine.trainer import Trainer

    original_step, original_save = Trainer.step, threads.TrainingThread.save

    def step(self):
        result = original_step(self)
        if not result.skipped:
            mark(f"STEP {self.step_count}")
        return result

    def save(self):
        ok = original_save(self)
        if ok:
            mark(f"SAVED {self.trainer.step_count}")
        return ok

    Trainer.step = step
    threads.TrainingThread.save = save

    from kittyterm.cli import main as kittyterm_main

    sys.argv = ["kittyterm", *sys.argv[1:]]
    kittyterm_main()


if __name__ == "__main__":
    main()
