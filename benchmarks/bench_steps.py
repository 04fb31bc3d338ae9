"""Quality against step count: FID, KID and colour casts of the shipped model per sampler and steps.

    nice python benchmarks/bench_steps.py --data ../shared/data/catfaces64/train   # ~45 min on 2 cores
    python benchmarks/bench_steps.py --quick              # CI smoke run: random model and features

`--clips dynamic static` scores each row with both ways of keeping x̂0 in range
(`engine.samplers.common.clip_x0`); the default is the samplers' own, dynamic thresholding.
`--grids karras log-snr` scores each row on each of these grids (`engine.samplers.GRID_KINDS`)
instead of the sampler's own. `--precisions fp32 bf16` runs the network in each (default: what
`kittyterm sample` uses on this machine, bf16 where the CPU computes it natively).

Every configuration draws the same seeds (0 … N−1) with `engine.generate.generate`, the code
behind `kittyterm sample`, so rows differ only by the sampler and its steps. FID and KID are
computed against the held-out cats of `_common.held_out_split` (Inception features as
`kittyterm eval` computes them, cached), the colour score is `bench_colour`'s: the fraction of
cats outside the band of mean CIELAB colours holding 99 % of the real training cats. The last
line names, per clip and grid, the fewest steps whose FID is within 1 of the 25-step dpm++sde and
whose colour casts are no more than one point above its own: a few-step default must not buy
speed with casts.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
import time
from pathlib import Path

from _common import HELD_OUT_CATS, REPO, header, held_out_split, random_image_folder, table
from bench_colour import ColourBand, mean_lab, read_images
from bench_fid import RandomFeatures

import numpy as np

from engine import fid
from engine.checkpoint import load_model
from engine.generate import cpu_has_native_bf16, generate
from engine.samplers import GRID_KINDS, sampler_timesteps
from engine.samplers.common import CLIPS, DEFAULT_CLIP
from engine.schedules import NoiseSchedule
from engine.unet import PRESETS, UNet

BASELINE = ("dpm++sde", 25)
OWN_GRID = "own"  # each sampler's own grid
WITHIN_FID = 1.0
WITHIN_CASTS = 0.01  # about one standard error of a cast fraction near 17 % at 1,000 cats


def fewest_steps(scores: dict[tuple[str, int], tuple[float, float]]) -> tuple[str, int]:
    """The (sampler, steps) with the fewest steps whose FID is within WITHIN_FID of BASELINE's and
    whose fraction of colour casts is within WITHIN_CASTS of it; `scores`: (FID, cast fraction)."""
    fid_0, casts_0 = scores[BASELINE]
    good = [(steps, sampler) for (sampler, steps), (value, casts) in scores.items() if value <= fid_0 + WITHIN_FID and casts <= casts_0 + WITHIN_CASTS]
    steps, sampler = min(good)
    return sampler, steps


def native_precision(device: str) -> str:
    """The precision `generate` picks by itself on `device`."""
    return "bf16" if device.startswith("cuda") or cpu_has_native_bf16() else "fp32"


def sample_features(model, schedule, sampler: str, grid: list[int], count: int, batch: int, extractor, device: str, clip: str, bf16: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(Inception features, mean Lab colours, seconds of sampling) of `count` cats, seeds 0 … count−1."""
    features, colours, seconds = [], [], 0.0
    for start in range(0, count, batch):
        began = time.perf_counter()
        images = generate(model, schedule, list(range(start, min(start + batch, count))), sampler, device=device, grid=grid, clip=clip, bf16=bf16)
        seconds += time.perf_counter() - began
        pixels = images.permute(0, 2, 3, 1).numpy()
        features.append(fid.features_of_images(pixels, extractor))
        colours.append(mean_lab(pixels))
    return np.concatenate(features), np.concatenate(colours), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the folder of real cats (held-out part: FID reference)")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "assets" / "kitty-64.safetensors")
    parser.add_argument("--samplers", nargs="+", default=["dpm++sde", "unipc"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 12, 15, 20, 25])
    parser.add_argument("--clips", nargs="+", default=[DEFAULT_CLIP], choices=CLIPS, help="how the samplers keep x̂0 in range")
    parser.add_argument("--grids", nargs="+", default=[OWN_GRID], choices=[OWN_GRID, *GRID_KINDS], help="the grids to step on")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], help="the network's precision (default: this machine's native one)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=None, help="keep features here (default: the FID cache)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny random model, 8 cats, random features")
    args = parser.parse_args()
    precisions = args.precisions or [native_precision(args.device)]

    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            args.data = random_image_folder(Path(scratch) / "real", 60, 8)
            model, schedule, described = UNet(PRESETS["tiny"]).eval(), NoiseSchedule(), "tiny (random weights)"
            extractor, cache = RandomFeatures(), Path(scratch)
            args.steps, args.samples, args.batch = [2, 3], 8, 4
            key = "quick"
        else:
            if args.data is None:
                parser.error("--data is needed (or --quick)")
            loaded = load_model(args.checkpoint, args.device)
            model, schedule = loaded.model, loaded.schedule
            described = f"{args.checkpoint.name} (step {loaded.step}, sha256 {loaded.sha256[:12]})"
            extractor = fid.InceptionFeatures(args.device)
            from kittyterm import locations

            cache = args.cache or locations.cache_dir() / "fid"
            key = loaded.sha256[:16]
        header(f"Quality against sampler steps, {args.samples} cats", args.device)
        print(f"- model: {described}; reference: {args.data} (held-out part)")
        train, held = held_out_split(args.data, 20 if args.quick else HELD_OUT_CATS)
        reference = fid.cached_features(args.data, held, extractor, cache)
        band = ColourBand.fit(mean_lab(read_images(train)))
        rows, scores = [], {}
        real = band.outside(mean_lab(read_images(held)))
        rows.append(["-", "-", "-", "real cats (held out)", "-", len(held), "-", "-", f"{100 * real:.1f} %", "-"])
        configs = [BASELINE] + [(s, n) for s in args.samplers for n in args.steps if (s, n) != BASELINE]
        if args.quick:
            configs = [(s, n) for s in args.samplers for n in args.steps]
        variants = list(itertools.product(args.clips, args.grids, precisions))
        for clip, grid_kind, precision in variants:
            for sampler, steps in configs:
                grid = sampler_timesteps(sampler, schedule, steps) if grid_kind == OWN_GRID else GRID_KINDS[grid_kind](schedule, steps)
                name = hashlib.sha256(f"{key} {sampler} {args.samples} {extractor.identity} {clip} {grid} {precision}".encode()).hexdigest()[:24]
                path = cache / f"steps-{name}.npz"
                if path.exists():
                    with np.load(path) as stored:
                        features, colours, seconds = stored["features"], stored["colours"], float(stored["seconds"])
                else:
                    features, colours, seconds = sample_features(model, schedule, sampler, grid, args.samples, args.batch, extractor, args.device, clip, precision == "bf16")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(path, features=features, colours=colours, seconds=seconds)
                result = fid.evaluate(features, reference)
                scores.setdefault((clip, grid_kind, precision), {})[(sampler, steps)] = result["fid"], band.outside(colours)
                row = [clip, grid_kind, precision, sampler, steps, args.samples, f"{result['fid']:.2f}", f"{1000 * result['kid_mean']:.2f} ± {1000 * result['kid_std']:.2f}", f"{100 * band.outside(colours):.1f} %", f"{seconds:.0f}"]
                print("  " + " | ".join(map(str, row)), flush=True)
                rows.append(row)
        print()
        print(table(["x̂0 clip", "grid", "precision", "sampler", "steps", "cats", "FID", "KID ×10³", "colour casts", "sampling s"], rows))
        for clip, grid_kind, precision in variants:
            own = scores[(clip, grid_kind, precision)]
            if BASELINE in own:
                sampler, steps = fewest_steps(own)
                (fid_0, casts_0), (value, casts) = own[BASELINE], own[(sampler, steps)]
                print(
                    f"\n{clip} clip, {grid_kind} grid, {precision}: fewest steps within {WITHIN_FID} FID and {100 * WITHIN_CASTS:.0f} point of colour casts of {BASELINE[0]} {BASELINE[1]}"
                    f" ({fid_0:.2f}, {100 * casts_0:.1f} %): {sampler} {steps} ({value:.2f}, {100 * casts:.1f} %)"
                )


if __name__ == "__main__":
    main()
