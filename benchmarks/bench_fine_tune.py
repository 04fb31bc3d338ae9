"""A fine-tune from the shipped model, as a user starts one: how much its cats change in a few
minutes, and whether they stay cats.

    python benchmarks/bench_fine_tune.py --data DIR --minutes 3     # CPU: kitty-64 from the shipped weights
    python benchmarks/bench_fine_tune.py --quick                    # CI smoke run: a few seconds

Runs `kittyterm train --data DIR --init kitty-64 --minutes M` (the real command, in a scratch
KITTYTERM_HOME), then draws the same seeds with the default sampler from the shipped model and
from the run's checkpoint. "Change" is each cat's mean absolute difference from the shipped
model's cat of the same seed (0–255); "high-frequency energy" is the mean absolute response of
the 4-neighbour Laplacian: noise (a relapse) would raise it well above the shipped cats' value.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, header, random_image_folder, table

import torch

from engine.checkpoint import load_model
from engine.generate import generate
from kittyterm.locations import shipped_model


def high_frequency_energy(images: torch.Tensor) -> float:
    """Mean |4-neighbour Laplacian| of (N, 3, H, W) uint8 images."""
    x = images.float()
    centre = x[:, :, 1:-1, 1:-1]
    laplacian = 4 * centre - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
    return float(laplacian.abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the folder of your cats")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cats", type=int, default=8, help="seeds 0 … N−1 drawn before and after")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 8 random pictures, 2 steps, 2 cats at 2 sampler steps")
    args = parser.parse_args()
    header(f"Fine-tuning the shipped model for {args.minutes:g} minutes", "cpu")

    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            args.data = random_image_folder(Path(scratch) / "cats", 8, 64)
        elif args.data is None:
            parser.error("--data is needed (or --quick)")
        budget = ["--steps", "2"] if args.quick else ["--minutes", str(args.minutes)]
        env = {**os.environ, "KITTYTERM_HOME": str(Path(scratch) / "home")}
        command = [sys.executable, "-m", "kittyterm", "train", "--data", str(args.data), "--init", "kitty-64",
                   "--batch-size", str(2 if args.quick else args.batch_size), "--device", "cpu", *budget]
        trained = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        if trained.returncode:
            raise SystemExit(trained.stdout + trained.stderr)
        run = next((Path(scratch) / "home" / "data" / "runs").glob("*/checkpoint.safetensors"))
        seeds, steps = list(range(2 if args.quick else args.cats)), 2 if args.quick else None
        rows, shipped_cats = [], None
        for name, path in (("shipped kitty-64", shipped_model()), (f"after {' '.join(budget[1:])} {budget[0][2:]}", run)):
            loaded = load_model(path, "cpu")
            cats = generate(loaded.model, loaded.schedule, seeds, steps=steps)
            shipped_cats = cats if shipped_cats is None else shipped_cats
            change = (cats.float() - shipped_cats.float()).abs().mean(dim=(1, 2, 3))
            rows.append([name, loaded.step, f"{high_frequency_energy(cats):.1f}", " ".join(f"{c:.1f}" for c in change.tolist())])
        print(table(["model", "step", "high-frequency energy", "change per cat (0–255)"], rows))


if __name__ == "__main__":
    main()
