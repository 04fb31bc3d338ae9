"""Training throughput, time to the first step, peak memory, FLOPs and MFU per preset and variant.

    python benchmarks/bench_train.py                      # all presets, every feature variant
    python benchmarks/bench_train.py --device cuda --presets kitty-64 --steps 50
    python benchmarks/bench_train.py --presets kitty-64 --profile   # + where the time goes
    python benchmarks/bench_train.py --quick              # CI smoke run: tiny sizes, 1 step

Every row drives `engine.trainer.Trainer.step()` — the loop `kittyterm train` runs — on random
images (speed does not depend on content), `--steps` steps in a row with one read-back at the
end, as a training loop that reports a few times a second does (a step never waits for the
device by itself). "default" is what the Trainer does on that device (CUDA: bf16 autocast +
channels-last; both devices: fused AdamW and the sync-free step); the other rows flip bf16,
channels-last (benchmark-local switches, `_common.apply_features`), torch.compile or the
whole-step CUDA graph (the trainer's own `TrainConfig` flags), then all on / all off. On CUDA,
extra rows run the fastest setting at batch 512 and 1024 with the learning rate scaled by the
square root of the batch (Malladi et al. 2022, the square-root rule for Adam), the setting a
larger-batch recipe would use.

"first step" is the wall time from building the trainer to the end of its first step
(compilation and graph capture included: that is what a user waits for). FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; forward and
forward+backward per image). Achieved FLOP/s = images/s × training FLOPs per image; MFU divides
that by the card's dense bf16 peak (table in `_common.py`, `--peak-tflops` to override). Peak
memory: CUDA `max_memory_allocated`, CPU peak RSS, each above what was in use before.
"""

from __future__ import annotations

import gc
import math
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

BASE_LR = TrainConfig().lr
BASE_BATCH = 256


def measure(preset, batch_size: int, steps: int, warmup: int, device: str, features: dict, model_factory=None) -> dict:
    """images/s over `steps` steps after `warmup` untimed ones, time to the first step, peak memory."""
    config = PRESETS[preset]
    images = random_images(max(4 * batch_size, 256), config.image_size)
    torch._dynamo.reset()
    lr = BASE_LR * math.sqrt(batch_size / BASE_BATCH)
    with PeakMemory(device) as memory:
        began = time.perf_counter()
        trainer = Trainer(
            config, images, TrainConfig(batch_size=batch_size, lr=lr, warmup_steps=1, compile=features["compile"], cuda_graph=features["cuda_graph"]), device=device
        )
        if model_factory is not None:
            model_factory(trainer)
        apply_features(trainer, features)
        trainer.step()
        trainer.read_metrics()  # waits for the device
        first_step = time.perf_counter() - began
        for _ in range(max(warmup - 1, 0)):
            trainer.step()
        trainer.read_metrics()
        sync(device)
        began = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        metrics = trainer.read_metrics()
        sync(device)
        seconds = (time.perf_counter() - began) / steps
    notes = "; ".join(f"{what} failed: {why}" for what, why in (("compile", trainer.compile_failure), ("CUDA graph", trainer.graph_failure)) if why)
    skipped = sum(m.skipped for m in metrics)
    del trainer
    gc.collect()
    return {
        "images_per_second": batch_size / seconds,
        "ms_per_step": 1000 * seconds,
        "first_step_seconds": first_step,
        "memory": memory.text(),
        "notes": notes + (f"{'; ' if notes else ''}{skipped} steps skipped" if skipped else ""),
    }


def profile(preset: str, batch_size: int, steps: int, device: str, rows: int = 20) -> None:
    """torch.profiler's table of the ops that take the time in the default configuration."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    config = PRESETS[preset]
    trainer = Trainer(config, random_images(max(4 * batch_size, 256), config.image_size), TrainConfig(batch_size=batch_size), device=device)
    for _ in range(3):
        trainer.step()
    trainer.read_metrics()
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step()
        trainer.read_metrics()
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
    parser.add_argument("--large-batches", type=int, nargs="*", default=[512, 1024], help="extra CUDA rows of the fastest variant")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 50 on CUDA, 5 on the CPU)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation and capture happen here)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--only", nargs="+", default=None, help="only these variants (e.g. default +cuda_graph)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, for MFU")
    parser.add_argument("--rounds", type=int, default=1, help="run every variant this many times, interleaved; keep the best")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table per preset")
    args, cuda = parse_speed_args(parser)
    batch_size = args.batch_size or (BASE_BATCH if cuda else 32)
    steps = args.steps or (50 if cuda else 5)
    warmup = args.warmup
    include_compile = not args.no_compile
    if args.quick:
        args.presets, batch_size, steps, warmup, include_compile = ["tiny"], 4, 1, 1, False

    variants = [(label, features, batch_size) for label, features in feature_variants(args.device, include_compile)]
    if args.quick:
        variants = [v for v in variants if v[0] in ("default", "all on")]
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    if cuda and not args.quick:
        fastest = {"bf16": True, "channels_last": True, "compile": include_compile, "cuda_graph": True}
        variants += [(f"all on, batch {b}, lr ×{math.sqrt(b / BASE_BATCH):.2f}", fastest, b) for b in args.large_batches]
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
            for label, features, batch in variants:
                try:
                    result = measure(preset, batch, steps, warmup, args.device, features)
                except torch.OutOfMemoryError:
                    print(f"  round {round_ + 1}: {preset} {label}: out of memory", flush=True)
                    continue
                print(f"  round {round_ + 1}: {preset} {label}: {fmt_rate(result['images_per_second'])} img/s (first step {result['first_step_seconds']:.1f} s) {result['notes']}", flush=True)
                key = (preset, label)
                if key not in best or result["images_per_second"] > best[key]["images_per_second"]:
                    best[key] = dict(result, memory=best.get(key, result)["memory"], first_step_seconds=best.get(key, result)["first_step_seconds"])
    rows = []
    for preset in args.presets:
        for label, features, batch in variants:
            if (preset, label) not in best:
                continue
            result = best[(preset, label)]
            achieved = result["images_per_second"] * flops[preset][1]
            rows.append(
                [
                    preset,
                    batch,
                    label,
                    *("on" if features[f] else "off" for f in ("bf16", "channels_last", "compile", "cuda_graph")),
                    fmt_rate(result["images_per_second"]),
                    f"{result['ms_per_step']:.1f}",
                    f"{result['first_step_seconds']:.1f}",
                    result["memory"],
                    f"{achieved / 1e12:.2f} TFLOP/s" if cuda else f"{achieved / 1e9:.1f} GFLOP/s",
                    f"{100 * achieved / (peak * 1e12):.1f} %" if peak else "-",
                    result["notes"] or "-",
                ]
            )
    print()
    headers = ["preset", "batch", "variant", "bf16", "channels_last", "compile", "CUDA graph", "images/s", "ms/step", "first step s", "peak mem", "achieved", "MFU", "notes"]
    print(table(headers, rows))
    if cuda:
        print(f"\nMFU against {peak if peak else '?'} TFLOP/s dense bf16 ({device_name(args.device)}).")

    if args.profile:
        for preset in args.presets:
            profile(preset, batch_size, max(2, min(steps, 10)), args.device)


if __name__ == "__main__":
    main()
