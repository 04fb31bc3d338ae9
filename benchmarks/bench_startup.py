"""Start-up time of `kittyterm --help`, and proof that it does not import torch.

    python benchmarks/bench_startup.py                    # 10 runs each
    python benchmarks/bench_startup.py --quick            # CI smoke run: 2 runs

Each command runs in a fresh interpreter, timed from the parent (process start to exit, as a
user sees it). `python -X importtime` lists what `--help` imports: torch must not be among them
(the engine is imported inside the commands). The heaviest imports are listed to show where the
remaining time goes. Target: ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, header, table

TARGET_SECONDS = 0.5


def kittyterm_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m kittyterm`."""
    script = Path(sys.executable).with_name("kittyterm")
    if script.exists():
        return [str(script)]
    found = shutil.which("kittyterm")
    return [found] if found else [sys.executable, "-m", "kittyterm"]


def wall_times(command: list[str], runs: int) -> list[float]:
    env = {**os.environ, "COLUMNS": "100"}
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - began)
    return times


def import_profile(command: list[str]) -> list[tuple[str, float, int]]:
    """(module, cumulative seconds, nesting depth) for every module `--help` imports."""
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run([sys.executable, "-X", "importtime", *command], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    modules = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            depth = (len(name) - len(name.lstrip()) - 1) // 2  # importtime indents nested imports
            modules.append((name.strip(), int(cumulative) / 1e6, depth))
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 2 runs")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs

    header("kittyterm --help start-up", "cpu")
    script = kittyterm_command()
    commands = {
        "python -c pass (interpreter alone)": [sys.executable, "-c", "pass"],
        "kittyterm --help": [*script, "--help"],
        "python -m kittyterm --help": [sys.executable, "-m", "kittyterm", "--help"],
        "kittyterm train --help": [*script, "train", "--help"],
        "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
    }
    if args.quick:  # the for-scale rows cost seconds
        commands = {k: v for k, v in commands.items() if "torch" not in k and "train" not in k}
    rows = []
    for label, command in commands.items():
        times = wall_times(command, runs)
        rows.append([label, f"{min(times):.3f}", f"{statistics.median(times):.3f}", runs])
    print(table(["command", "best s", "median s", "runs"], rows))

    modules = import_profile(["-m", "kittyterm", "--help"])
    names = {name for name, _, _ in modules}
    torch_loaded = any(name == "torch" or name.startswith("torch.") for name in names)
    top_level = sorted(((n, s) for n, s, depth in modules if depth == 0), key=lambda m: -m[1])[:8]
    print()
    print(f"`python -X importtime -m kittyterm --help`: {len(names)} modules imported; torch imported: {'YES' if torch_loaded else 'no'}")
    print()
    print(table(["heaviest imports (outermost)", "cumulative s"], [[n, f"{s:.3f}"] for n, s in top_level]))
    print()
    print(f"(target: kittyterm --help ≤ {TARGET_SECONDS} s)")
    if torch_loaded:
        sys.exit("kittyterm --help imported torch")


if __name__ == "__main__":
    main()
