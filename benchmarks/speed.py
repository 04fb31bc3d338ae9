"""Training and sampling speed per preset on this machine.

    python benchmarks/speed.py                  # full table
    python benchmarks/speed.py --quick          # a smoke run (CI): tiny sizes, one iteration

Training throughput uses random images (speed does not depend on content); sampling times
16 cats end to end through `engine.generate.generate`, the code behind `kittyterm sample`.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from engine.generate import generate
from engine.schedules import NoiseSchedule
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet, count_parameters


def train_speed(preset: str, batch_size: int, steps: int, device: str) -> float:
    config = PRESETS[preset]
    images = torch.randint(0, 256, (max(256, batch_size), 3, config.image_size, config.image_size), dtype=torch.uint8)
    trainer = Trainer(config, images, TrainConfig(batch_size=batch_size), device=device)
    trainer.step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - began)


def sample_seconds(preset: str, sampler: str, steps: int, count: int, device: str, repeats: int) -> float:
    model = UNet(PRESETS[preset]).eval().to(device)
    schedule = NoiseSchedule()
    generate(model, schedule, list(range(count)), sampler, 2, device)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        generate(model, schedule, list(range(count)), sampler, steps, device)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smallest possible run, for CI")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.batch_size, args.train_steps, args.repeats = ["tiny"], 4, 1, 1
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {cpu}")
    print("| preset | params | train img/s (batch) | 16 cats dpm++ 20 steps | 16 cats dpm++ 25 steps | 16 cats ddim 50 steps |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        params = count_parameters(UNet(PRESETS[preset]))
        speed = train_speed(preset, args.batch_size, args.train_steps, args.device)
        count = 16 if not args.quick else 2
        times = [
            sample_seconds(preset, sampler, steps if not args.quick else 2, count, args.device, args.repeats)
            for sampler, steps in [("dpm++", 20), ("dpm++", 25), ("ddim", 50)]
        ]
        print(
            f"| {preset} | {params / 1e6:.2f} M | {speed:.1f} ({args.batch_size}) | "
            + " | ".join(f"{t:.2f} s" for t in times)
            + " |"
        )


if __name__ == "__main__":
    main()
