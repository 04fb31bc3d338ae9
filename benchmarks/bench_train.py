"""Training throughput, peak memory, FLOPs and MFU per preset, with each speed feature on and off.

    python benchmarks/bench_train.py                      # all presets, every feature variant
    python benchmarks/bench_train.py --device cuda --batch-size 256 --steps 50
    python benchmarks/bench_train.py --presets kitty-64 --profile   # + where the time goes
    python benchmarks/bench_train.py --quick              # CI smoke run: tiny sizes, 1 step

Every row drives `engine.trainer.Trainer.step()` — the loop `kittyterm train` runs — on random
images (speed does not depend on content). "default" is what the Trainer does on that device
(CUDA: bf16 autocast + channels-last + fused AdamW; CPU: none of them); the other rows flip one
feature, then all on / all off, with benchmark-local switches (`_common.apply_features`).

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions,
attention; forward and forward+backward per image). Achieved FLOP/s = images/s × training
FLOPs per image; MFU divides that by the card's dense bf16 peak (table in `_common.py`,
`--peak-tflops` to override). Peak memory: CUDA `max_memory_allocated`, CPU peak RSS, each
above what was in use before the trainer was built.
"""

from __future__ import annotations

import gc
import statistics
import time

from _common import (
    apply_features,
    device_name,
    feature_variants,
    fmt_rate,
    header,
    model_flops_per_image,
    parse_speed_args,
    peak_bf16_tflops,
    random_images,
    speed_parser,
    sync,
    table,
    PeakMemory,
)

import torch

from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet, count_parameters


def measure(preset, batch_size: int, steps: int, warmup: int, device: str, features: dict, model_factory=None) -> dict:
    """images/s (from the median step time) and peak memory of `steps` Trainer steps after
    `warmup` untimed ones."""
    config = PRESETS[preset]
    images = random_images(max(4 * batch_size, 256), config.image_size)
    torch._dynamo.reset()
    with PeakMemory(device) as memory:
        trainer = Trainer(config, images, TrainConfig(batch_size=batch_size, warmup_steps=1), device=device)
        if model_factory is not None:
            model_factory(trainer)
        apply_features(trainer, features)
        began = time.perf_counter()
        for _ in range(warmup):
            trainer.step()
        sync(device)
        warm_seconds = time.perf_counter() - began
        times = []
        for _ in range(steps):  # step() waits for the device itself (it reads the loss)
            began = time.perf_counter()
            trainer.step()
            sync(device)
            times.append(time.perf_counter() - began)
    del trainer
    gc.collect()
    seconds = statistics.median(times)  # robust to a busy neighbour stealing one step
    return {
        "images_per_second": batch_size / seconds,
        "ms_per_step": 1000 * seconds,
        "warmup_seconds": warm_seconds,
        "memory": memory.text(),
    }


def profile(preset: str, batch_size: int, steps: int, device: str, rows: int = 20) -> None:
    """torch.profiler's table of the ops that take the time in the default configuration."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    config = PRESETS[preset]
    trainer = Trainer(config, random_images(max(4 * batch_size, 256), config.image_size), TrainConfig(batch_size=batch_size), device=device)
    for _ in range(3):
        trainer.step()
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step()
        sync(device)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(f"\nProfile of {steps} default `{preset}` steps at batch {batch_size} on {device} (sorted by {sort}):\n")
    print("```")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))
    print("```")


def main() -> None:
    parser = speed_parser(__doc__, "tiny preset, batch 4, 1 step")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 5 on the CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--only", nargs="+", default=None, help="only these variants (e.g. default +bf16)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, for MFU")
    parser.add_argument("--rounds", type=int, default=1, help="run every variant this many times, interleaved; keep the best")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table per preset")
    args, cuda = parse_speed_args(parser)
    batch_size = args.batch_size or (256 if cuda else 32)
    steps = args.steps or (50 if cuda else 5)
    warmup = args.warmup
    include_compile = not args.no_compile
    if args.quick:
        args.presets, batch_size, steps, warmup, include_compile = ["tiny"], 4, 1, 1, False

    variants = feature_variants(args.device, include_compile)
    if args.quick:
        variants = [v for v in variants if v[0] in ("default", "all on")]
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    peak = args.peak_tflops or (peak_bf16_tflops(device_name(args.device)) if cuda else None)

    header("Training throughput", args.device)
    flops = {}
    cost_rows = []
    for preset in args.presets:
        model = UNet(PRESETS[preset])
        flops[preset] = model_flops_per_image(model, PRESETS[preset].image_size)
        cost_rows.append(
            [preset, f"{count_parameters(model) / 1e6:.2f} M", PRESETS[preset].image_size, f"{flops[preset][0] / 1e9:.2f}", f"{flops[preset][1] / 1e9:.2f}"]
        )
    print(table(["preset", "params", "px", "forward GFLOP/image", "train (fwd+bwd) GFLOP/image"], cost_rows))
    print()

    best: dict[tuple[str, str], dict] = {}
    for round_ in range(args.rounds):
        for preset in args.presets:
            for label, features in variants:
                result = measure(preset, batch_size, steps, warmup, args.device, features)
                print(f"  round {round_ + 1}: {preset} {label}: {fmt_rate(result['images_per_second'])} img/s (warm-up {result['warmup_seconds']:.1f} s)", flush=True)
                key = (preset, label)
                if key not in best or result["images_per_second"] > best[key]["images_per_second"]:
                    best[key] = dict(result, memory=best.get(key, result)["memory"])  # memory: first round
    rows = []
    for preset in args.presets:
        for label, features in variants:
            result = best[(preset, label)]
            achieved = result["images_per_second"] * flops[preset][1]
            rows.append(
                [
                    preset,
                    batch_size,
                    label,
                    *("on" if features[f] else "off" for f in ("bf16", "channels_last", "compile", "fused_adamw")),
                    fmt_rate(result["images_per_second"]),
                    f"{result['ms_per_step']:.1f}",
                    result["memory"],
                    f"{achieved / 1e12:.2f} TFLOP/s" if cuda else f"{achieved / 1e9:.1f} GFLOP/s",
                    f"{100 * achieved / (peak * 1e12):.1f} %" if peak else "-",
                ]
            )
    print()
    headers = ["preset", "batch", "variant", "bf16", "channels_last", "compile", "fused AdamW", "images/s", "ms/step", "peak mem", "achieved", "MFU"]
    print(table(headers, rows))
    if cuda:
        print(f"\nMFU against {peak if peak else '?'} TFLOP/s dense bf16 ({device_name(args.device)}).")

    if args.profile:
        for preset in args.presets:
            profile(preset, batch_size, max(2, min(steps, 10)), args.device)


if __name__ == "__main__":
    main()
