"""Sampling speed: seconds for 16 cats per sampler and step count, speed features, big batches.

    python benchmarks/bench_sample.py                     # CPU: the shipped kitty-64
    python benchmarks/bench_sample.py --device cuda       # + images/s for batches of 256…4096
    python benchmarks/bench_sample.py --quick             # CI smoke run: tiny, 2 cats, 2 steps
    python benchmarks/bench_sample.py --command-only --command-runs 5   # the whole command alone
    python benchmarks/bench_sample.py --command-only --compare-waiting --busy-threads 2  # beside another torch job

The "sampler" table times `engine.generate.generate` — the code behind `kittyterm sample` — end
to end (starting noise, every model call, conversion to uint8 on the CPU) with the shipped
`kitty-64` weights (`assets/kitty-64.safetensors`; random weights of the same shape if absent:
the speed does not depend on the weights). The "features" table re-times the default sampler
with each speed feature flipped: bf16 autocast and channels-last activations (`generate`'s own
arguments), channels-last weights and torch.compile (applied to the model here). Each figure is the
best of `--repeats` runs after a warm-up.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import device_name, fmt_rate, header, parse_speed_args, speed_parser, table, timed

import torch

from engine.checkpoint import load_model
from engine.generate import cpu_has_native_bf16, generate
from engine.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
from engine.schedules import NoiseSchedule
from engine.unet import PRESETS, UNet
from kittyterm.locations import shipped_model

TARGET_CPU_SECONDS = 5.0  # 16 cats, default sampler and steps, on a 2-core CPU
TARGET_GPU_SECONDS = 1.5  # 256 cats, default sampler and steps, on one H100


def load(preset: str, device: str, checkpoint: Path | None = None):
    """(model, schedule, description) — `checkpoint`, else the shipped weights for kitty-64
    when present, else random weights."""
    path = checkpoint or shipped_model()
    if path.exists() and (checkpoint is not None or preset == "kitty-64"):
        loaded = load_model(path, device)
        name = preset if loaded.config == PRESETS[preset] else "model"
        what = "shipped" if checkpoint is None else path.name
        return loaded.model, loaded.schedule, f"{name} ({what}, step {loaded.step})"
    model = UNet(PRESETS[preset]).eval().requires_grad_(False).to(device, memory_format=torch.channels_last)  # as load_model lays out kernels
    return model, NoiseSchedule(), f"{preset} (random weights)"


def main() -> None:
    parser = speed_parser(__doc__, "tiny preset, 2 cats, 2 steps")
    parser.add_argument("--presets", nargs="+", default=["kitty-64"], choices=list(PRESETS))
    parser.add_argument("--checkpoint", type=Path, default=None, help="time this model instead of the shipped one")
    parser.add_argument("--cats", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ddpm-steps", type=int, default=None, help="default: 1000 on CUDA, 100 on the CPU (time is linear in steps)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096], help="big-batch sizes (CUDA)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--features-only", action="store_true", help="skip the sampler × steps table")
    parser.add_argument("--command-runs", type=int, default=3, help="times to run the whole `kittyterm sample` command (CPU)")
    parser.add_argument("--command-only", action="store_true", help="only time the whole `kittyterm sample` command")
    parser.add_argument("--command-steps", type=int, nargs="*", default=[], help="also time the whole command with these --steps")
    parser.add_argument("--busy-threads", type=int, default=0, help="time the whole command while another process keeps this many torch threads busy")
    parser.add_argument("--compare-waiting", action="store_true", help="time each row with kittyterm's OpenMP wait policy, libgomp's own and passive")
    args, cuda = parse_speed_args(parser)
    if args.command_only:
        header("The whole `kittyterm sample` command", "cpu")
        whole_command(args.cats, args.command_runs, args.command_steps, busy_threads=args.busy_threads, compare_waiting=args.compare_waiting)
        return
    ddpm_steps = args.ddpm_steps or (1000 if cuda else 100)
    plan = [("dpm++sde", 10), ("dpm++sde", 15), ("dpm++sde", 25), ("unipc", 10), ("unipc", 15), ("dpm++", DEFAULT_STEPS["dpm++"]), ("ddim", DEFAULT_STEPS["ddim"]), ("ddpm", ddpm_steps)]
    cats, repeats, compile_ = args.cats, args.repeats, not args.no_compile
    if args.quick:
        args.presets, cats, repeats, compile_ = ["tiny"], 2, 1, False
        plan = [(name, 2) for name in SAMPLERS]
    default_steps = 2 if args.quick else DEFAULT_STEPS[DEFAULT_SAMPLER]
    if args.features_only:
        plan = []
    seeds = list(range(cats))

    header("Sampling", args.device)
    rows = []
    feature_rows = []
    batch_rows = []
    for preset in args.presets:
        model, schedule, described = load(preset, args.device, args.checkpoint)
        generate(model, schedule, seeds, DEFAULT_SAMPLER, 2, args.device)  # warm-up
        for sampler, steps in plan:
            seconds = timed(lambda: generate(model, schedule, seeds, sampler, steps, args.device), args.device, repeats)
            note = " (default)" if (sampler, steps) == (DEFAULT_SAMPLER, default_steps) else ""
            rows.append([described, args.device, f"{sampler}{note}", steps, cats, f"{seconds:.2f}", f"{1000 * seconds / steps:.1f}", fmt_rate(cats / seconds)])
            print(f"  measured {preset} {sampler} {steps}: {seconds:.2f} s", flush=True)

        # Speed features on the default sampler (the default row is the engine's own choice).
        native_bf16 = cuda or cpu_has_native_bf16()
        engine_default = {"bf16": native_bf16, "channels_last": True, "compile": False}
        variants = [("default", engine_default)]
        for name in ("bf16", "channels_last", "compile"):
            if name == "compile" and not compile_:
                continue
            variants.append((("+" if not engine_default[name] else "−") + name, dict(engine_default, **{name: not engine_default[name]})))
        if not args.quick and not native_bf16 and compile_:
            variants.append(("all on", {"bf16": True, "channels_last": True, "compile": True}))
        reference = None  # the default variant's cats (first in the list)
        for label, features in variants:
            model.to(memory_format=torch.channels_last if features["channels_last"] else torch.contiguous_format)
            torch._dynamo.reset()
            forward = torch.compile(model) if features["compile"] else model

            def run():
                if label == "default":  # exactly what `kittyterm sample` runs
                    return generate(model, schedule, seeds, DEFAULT_SAMPLER, default_steps, args.device)
                # A compiled module passes `.config` through to the model it wraps.
                return generate(forward, schedule, seeds, DEFAULT_SAMPLER, default_steps, args.device, bf16=features["bf16"], channels_last=features["channels_last"])

            images = run()  # warm-up (and compilation)
            reference = images if reference is None else reference
            seconds = timed(run, args.device, repeats)
            change = (images.float() - reference.float()).abs()
            feature_rows.append(
                [described, args.device, label, *("on" if features[f] else "off" for f in ("bf16", "channels_last", "compile")), f"{seconds:.2f}", f"{change.mean():.2f} / {change.max():.0f}"]
            )
            print(f"  measured {preset} {label}: {seconds:.2f} s", flush=True)
        model.to(memory_format=torch.channels_last)

        if cuda:
            for batch in args.batches:
                big = list(range(batch))
                generate(model, schedule, big, DEFAULT_SAMPLER, 2, args.device)
                seconds = timed(lambda: generate(model, schedule, big, DEFAULT_SAMPLER, default_steps, args.device), args.device, repeats)
                batch_rows.append([described, batch, f"{DEFAULT_SAMPLER} {default_steps}", f"{seconds:.2f}", fmt_rate(batch / seconds)])

    if rows:
        print()
        print(table(["model", "device", "sampler", "steps", "cats", "seconds", "ms/step", "cats/s"], rows))
    print()
    print(f"Speed features, {cats} cats, {DEFAULT_SAMPLER} {default_steps} steps:")
    print()
    print(table(["model", "device", "variant", "bf16", "channels_last", "compile", "seconds", "pixels vs default: mean / max abs diff (0-255)"], feature_rows))
    if batch_rows:
        print()
        print(f"Large batches on {device_name(args.device)} (engine defaults: bf16, channels-last):")
        print()
        print(table(["model", "batch", "sampler", "seconds", "images/s"], batch_rows))
    if not cuda and args.command_runs:
        print()
        whole_command(cats, 1 if args.quick else args.command_runs, args.command_steps, args.quick, args.busy_threads, args.compare_waiting)
    if not args.quick:
        print()
        target = f"target: 256 cats ≤ {TARGET_GPU_SECONDS} s on one H100" if cuda else f"target: 16 cats ≤ {TARGET_CPU_SECONDS} s on a 2-core CPU"
        print(f"({target}, default sampler {DEFAULT_SAMPLER} {default_steps} steps)")


# Another torch job: `threads` intra-op threads multiplying matrices until killed, with libgomp's own wait policy.
BUSY_JOB = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""


WAIT_POLICIES = {None: "kittyterm's choice", "": "`OMP_WAIT_POLICY=` (libgomp's own)", "PASSIVE": "`OMP_WAIT_POLICY=PASSIVE`"}


def whole_command(cats: int, runs: int, steps: list[int], quick: bool = False, busy_threads: int = 0, compare_waiting: bool = False) -> None:
    """Wall time of `kittyterm sample -n CATS --out DIR` in a fresh process, as a user waits for
    it: start-up, imports, loading the shipped model, sampling, PNG files. One row for the
    defaults and one per count in `steps`; the runs take turns, so every row sees the same machine.
    With `busy_threads`, another process keeps that many torch threads busy meanwhile. With
    `compare_waiting`, each row is timed with the OpenMP wait policy kittyterm chooses
    (`kittyterm.openmp`), with `OMP_WAIT_POLICY=` (empty: libgomp's own, whose idle threads spin
    before they sleep) and with passive waiting."""
    import os
    import statistics
    import subprocess
    import sys
    import tempfile

    from bench_startup import kittyterm_command

    options = [["--steps", "1"]] if quick else [[]] + [["--steps", str(n)] for n in steps]
    policies = list(WAIT_POLICIES) if compare_waiting else [None]
    variants = [(extra, policy) for extra in options for policy in policies]
    times: list[list[float]] = [[] for _ in variants]
    busy = subprocess.Popen([sys.executable, "-c", BUSY_JOB, str(busy_threads)]) if busy_threads else None
    try:
        for run in range(runs):
            for (extra, policy), timings in zip(variants, times):
                env = dict(os.environ) if policy is None else {**os.environ, "OMP_WAIT_POLICY": policy}
                with tempfile.TemporaryDirectory() as out:
                    command = [*kittyterm_command(), "sample", "-n", str(cats), "--seed", "0", "--device", "cpu", "--checkpoint", str(shipped_model()), "--out", out, *extra]
                    began = time.perf_counter()
                    subprocess.run(command, check=True, capture_output=True, env=env)
                    timings.append(time.perf_counter() - began)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    rows = []
    for (extra, policy), t in zip(variants, times):
        label = " ".join(extra) or f"defaults ({DEFAULT_SAMPLER}, {DEFAULT_STEPS[DEFAULT_SAMPLER]} steps)"
        if compare_waiting:
            label += f", {WAIT_POLICIES[policy]}"
        rows.append([label, runs, f"{statistics.median(t):.2f}", f"{min(t):.2f}"])
    if busy_threads:
        print(f"while another process keeps {busy_threads} torch thread{'s' if busy_threads != 1 else ''} busy:")
    print(table([f"`kittyterm sample -n {cats} --out DIR`", "runs", "median s", "best s"], rows))


if __name__ == "__main__":
    main()
