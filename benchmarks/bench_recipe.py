"""Training recipes at an equal budget: FID of each against cats that no run trained on.

    nice python benchmarks/bench_recipe.py --data ../shared/data/catfaces64/train      # CPU: tiny at 32 px
    python benchmarks/bench_recipe.py --data DIR --preset kitty-64 --device cuda --steps 4000 --batch-size 256
    python benchmarks/bench_recipe.py --quick             # CI smoke run: random images, 2 steps

The data folder is split once (`_common.held_out_split`): every recipe trains on the same
training part, in the same order (same seed), for the same number of steps at the same batch
size, so the budget is equal in images seen (not in minutes: the machine may be shared). Each
run then draws the same seeds with `SAMPLER` from its EMA weights, and FID/KID are
computed against the held-out part, decoded at the model's size exactly as training decodes
images, with the colour check of `bench_colour` (cats outside the band of mean colours that
holds 99 % of the training cats at the same size). `--seed` repeats the comparison with another
initialisation and data order. Recipes that differ only in their EMA share one training run (the EMA never feeds back
into the weights), each averaging its own EMA of the same weights. The recipes differ in one
choice at a time:

- "constant": a flat learning rate after warm-up, the warm-up EMA capped at 0.999, ε-prediction;
- "wsd": the learning rate decays to its floor over the last 20 % of the budget;
- "wsd + power EMA": the power-function EMA (γ = 6.94, σ_rel = 0.10) instead;
- "... v": the same with v-prediction;
- "constant + power EMA": the power-function EMA on the flat learning rate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from _common import HELD_OUT_CATS, header, held_out_split, link_folder, random_image_folder, table
from bench_colour import ColourBand, mean_lab
from bench_fid import RandomFeatures

import numpy as np
import torch

from engine import fid
from engine.data import decode_image, load_image_folder
from engine.ema import EMA, chosen_decay
from engine.generate import generate
from engine.schedules import ScheduleConfig
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS

SAMPLER = ("dpm++sde", 25)  # every row's cats are drawn alike, whatever kittyterm's default

# name → (TrainConfig changes, prediction, whether the budget is given to the schedule)
RECIPES: dict[str, tuple[dict, str, bool]] = {
    "constant": ({"ema_gamma": 0.0}, "eps", False),
    "wsd": ({"ema_gamma": 0.0}, "eps", True),
    "wsd + power EMA": ({"ema_gamma": 6.94}, "eps", True),
    "wsd + power EMA, v": ({"ema_gamma": 6.94}, "v", True),
    "constant + power EMA": ({"ema_gamma": 6.94}, "eps", False),
    "constant, v": ({"ema_gamma": 0.0}, "v", False),
    "constant + power EMA, v": ({"ema_gamma": 6.94}, "v", False),
    "wsd, v": ({"ema_gamma": 0.0}, "v", True),
}


def trajectory(recipe: str) -> str:
    """What decides a recipe's weights: everything but its EMA."""
    changes, prediction, decays = RECIPES[recipe]
    return json.dumps([{k: v for k, v in changes.items() if not k.startswith("ema_")}, prediction, decays])


def train_and_sample(recipes: list[str], images: torch.Tensor, args, seeds: list[int]) -> dict[str, tuple[np.ndarray, list[float], float]]:
    """recipe → (generated cats (N, H, W, 3) uint8, losses, training seconds) for recipes of one
    trajectory: one training run, the first recipe's EMA in the trainer, the others' beside it."""
    changes, prediction, decays = RECIPES[recipes[0]]
    config = TrainConfig(batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup, seed=args.seed, **changes)
    trainer = Trainer(PRESETS[args.preset], images, config, ScheduleConfig(prediction=prediction), device=args.device)
    emas = {recipes[0]: trainer.ema}
    for recipe in recipes[1:]:
        other = RECIPES[recipe][0]
        emas[recipe] = EMA(trainer.model, chosen_decay(other.get("ema_gamma", config.ema_gamma), other.get("ema_decay", config.ema_decay)))
    if decays:
        trainer.set_horizon(args.steps)
    began = time.perf_counter()
    for step in range(args.steps):
        before = trainer.ema.updates.clone()
        trainer.step()
        for recipe in recipes[1:]:  # averaged where the trainer's own EMA was (finite steps only)
            emas[recipe].update(trainer.model, trainer.ema.updates > before)
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"    {' / '.join(recipes)}: step {trainer.step_count}/{args.steps}, loss {np.mean(trainer.history.losses[-50:]):.4f}", flush=True)
    seconds = time.perf_counter() - began
    results = {}
    for recipe, ema in emas.items():
        model = ema.module.eval()
        cats = [generate(model, trainer.schedule, seeds[i : i + 100], *SAMPLER, device=args.device) for i in range(0, len(seeds), 100)]
        results[recipe] = torch.cat(cats).permute(0, 2, 3, 1).numpy(), trainer.history.losses, seconds
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the folder of real cats")
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="the runs' initialisation and data order")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=HELD_OUT_CATS, help="held-out cats to score against (the first N)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=None, help="keep results and features here (default: the FID cache)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: random images, 2 steps, random features")
    args = parser.parse_args()
    size = PRESETS[args.preset].image_size

    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            args.data = random_image_folder(Path(scratch) / "real", 40, size)
            args.steps, args.batch_size, args.samples, args.warmup, args.recipes = 2, 4, 8, 1, args.recipes[:3]
            extractor, cache, held_out = RandomFeatures(), Path(scratch), 20
        else:
            if args.data is None:
                parser.error("--data is needed (or --quick)")
            from kittyterm import locations

            extractor, cache, held_out = fid.InceptionFeatures(args.device), args.cache or locations.cache_dir() / "fid", HELD_OUT_CATS
        header(f"Recipes at an equal budget: {args.preset}, {args.steps} steps of {args.batch_size} images", args.device)
        train, held = held_out_split(args.data, held_out)
        held = held[: args.reference]
        images = load_image_folder(link_folder(train, Path(scratch) / "train"), size, cache_dir=None).images
        reference = np.stack([decode_image(path, size) for path in held])
        reference_features = fid.features_of_images(reference, extractor)
        band = ColourBand.fit(mean_lab(images.permute(0, 2, 3, 1).numpy()))
        print(f"- training images: {len(images)}; held out (FID reference): {len(held)}; {args.samples} samples per recipe, {SAMPLER[0]} {SAMPLER[1]} steps")
        seeds = list(range(args.samples))

        def stored(recipe: str) -> Path:
            key = json.dumps([recipe, RECIPES[recipe], args.preset, args.steps, args.batch_size, args.lr, args.warmup, args.seed, args.samples, SAMPLER, len(images), extractor.identity])
            return cache / f"recipe-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"

        missing = [r for r in args.recipes if args.quick or not stored(r).exists()]
        for shared in dict.fromkeys(map(trajectory, missing)):
            group = [r for r in missing if trajectory(r) == shared]
            for recipe, (cats, losses, seconds) in train_and_sample(group, images, args, seeds).items():
                features = fid.features_of_images(cats, extractor)
                stored(recipe).parent.mkdir(parents=True, exist_ok=True)
                np.savez(stored(recipe), features=features, colours=mean_lab(cats), losses=np.array(losses), seconds=seconds)
        rows = []
        for recipe in args.recipes:
            with np.load(stored(recipe)) as saved:
                features, colours, losses, seconds = saved["features"], saved["colours"], saved["losses"], float(saved["seconds"])
            result = fid.evaluate(features, reference_features)
            tail = float(np.mean(losses[-max(1, len(losses) // 10) :]))
            row = [recipe, args.steps, args.steps * args.batch_size, f"{tail:.4f}", f"{result['fid']:.2f}", f"{1000 * result['kid_mean']:.2f}", f"{100 * band.outside(colours):.1f} %", f"{seconds:.0f}"]
            print("  " + " | ".join(map(str, row)), flush=True)
            rows.append(row)
        print()
        print(table(["recipe", "steps", "images seen", "loss (last 10 %)", "FID", "KID ×10³", "colour casts", "training s"], rows))


if __name__ == "__main__":
    main()
