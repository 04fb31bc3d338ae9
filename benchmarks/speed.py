"""Run every engine benchmark in turn, each in its own interpreter, printing its tables.

    python benchmarks/speed.py                  # the full set on the default device
    python benchmarks/speed.py --device cuda    # passed on to the scripts that take it
    python benchmarks/speed.py --quick          # a smoke run of each (CI): small sizes, 1 step

The scripts (see benchmarks/README.md): bench_train.py (training throughput, memory, FLOPs,
MFU per speed feature), bench_sample.py (sampling), bench_diffusers.py (ours vs diffusers'
UNet2DModel in the same loop) and bench_startup.py (`kittyterm --help`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_startup.py", "bench_sample.py", "bench_train.py", "bench_diffusers.py"]
TAKES_DEVICE = {"bench_sample.py", "bench_train.py", "bench_diffusers.py"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed = []
    for script in SCRIPTS:
        command = [sys.executable, str(HERE / script)]
        if args.quick:
            command.append("--quick")
        if args.device and script in TAKES_DEVICE:
            command += ["--device", args.device]
        print(f"\n<!-- {' '.join(command[1:])} -->\n", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
