"""The training recipe behind the shipped model, through the engine: optionally start from
exported weights, train within a step or time budget with the learning rate decaying to its
floor at the budget's end, and export the EMA as fp16 weights. A run from scratch predicts what
a new `kittyterm train` run predicts (v); a run from `--init` keeps the file's prediction.

    python benchmarks/train_recipe.py --data DIR --out OUT --preset kitty-64 \\
        --init assets/kitty-64.safetensors --minutes 5 --batch-size 512 --cuda-graph
    python benchmarks/train_recipe.py --data DIR --out OUT --preset tiny --minutes 0.2   # a CPU check

OUT receives checkpoint.safetensors (the training state; run again to start over) and
PRESET.safetensors (the fp16 EMA weights, as `kittyterm export` writes them). It prints a line
every 10 seconds and a summary: steps, images seen, images/s after the first step, and the time
to the first step (compilation and CUDA-graph capture included). The learning rate for a batch
other than 256 is scaled by the square root of the batch ratio (Malladi et al. 2022).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from _common import header

import torch

from engine import events
from engine.checkpoint import export_weights
from engine.data import load_image_folder
from engine.schedules import ScheduleConfig
from engine.threads import TrainingThread
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS
from kittyterm.jobs.training import NEW_RUN_PREDICTION

RECIPE = {"lr": 5e-4, "warmup_steps": 500, "ema_gamma": 6.94, "decay_fraction": 0.2, "min_lr_ratio": 0.01}
RECIPE_BATCH = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="kitty-64", choices=list(PRESETS))
    parser.add_argument("--init", type=Path, default=None, help="start from these weights (exported or a checkpoint)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float)
    budget.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, default=RECIPE_BATCH)
    parser.add_argument("--warmup", type=int, default=RECIPE["warmup_steps"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    header(f"Training recipe: {args.preset}, batch {args.batch_size}" + (f", from {args.init.name}" if args.init else ""), args.device)
    size = PRESETS[args.preset].image_size
    images = load_image_folder(args.data, size, cache_dir=args.out / "cache").images
    lr = RECIPE["lr"] * math.sqrt(args.batch_size / RECIPE_BATCH)
    config = TrainConfig(
        **dict(RECIPE, lr=lr, warmup_steps=args.warmup), batch_size=args.batch_size, compile=args.compile, cuda_graph=args.cuda_graph
    )
    began = time.perf_counter()
    if args.init:
        trainer = Trainer.initialised_from(args.init, images, config, args.device, model_config=PRESETS[args.preset])
    else:
        trainer = Trainer(PRESETS[args.preset], images, config, ScheduleConfig(prediction=NEW_RUN_PREDICTION), device=args.device)
    checkpoint = args.out / "checkpoint.safetensors"
    checkpoint.unlink(missing_ok=True)
    thread = TrainingThread(
        trainer, checkpoint, max_steps=args.steps, max_seconds=args.minutes * 60 if args.minutes else None,
        checkpoint_every_seconds=120, decay_to_budget=True,
    )
    progress = {"first": None, "last_print": 0.0, "first_step": 0}

    def report(event) -> None:
        now = time.perf_counter()
        if isinstance(event, events.TrainingStep):
            if progress["first"] is None:
                progress["first"], progress["first_step"] = now, event.step
                print(f"  first step after {now - began:.1f} s (building, compiling, capturing included)", flush=True)
            if now - progress["last_print"] >= 10:
                progress["last_print"] = now
                print(f"  step {event.step}: loss {event.loss:.4f}, lr {event.lr:.2e}, {event.images_per_second:,.0f} images/s", flush=True)
        elif isinstance(event, (events.EngineError, events.RolledBack, events.StepSkipped)):
            print(f"  {event}", flush=True)

    thread.subscribe(report)
    thread.start()
    thread.join()
    ended = time.perf_counter()
    steps = trainer.step_count
    timed_steps = steps - progress["first_step"]
    speed = timed_steps * args.batch_size / (ended - progress["first"]) if progress["first"] and timed_steps > 0 else float("nan")
    out = args.out / f"{args.preset}.safetensors"
    out.unlink(missing_ok=True)
    metadata = {"step": str(steps), "recipe": json.dumps({"batch_size": args.batch_size, **RECIPE, "lr": lr})}
    if trainer.init_origin:
        metadata["init_from"] = json.dumps(trainer.init_origin)
    export_weights(out, trainer.ema.module.state_dict(), trainer.model_config, trainer.schedule.config, metadata)
    notes = [f"{what}: {why}" for what, why in (("compile failed", trainer.compile_failure), ("CUDA graph failed", trainer.graph_failure)) if why]
    print(f"\n{steps} steps, {steps * args.batch_size:,} images, {speed:,.0f} images/s after the first step, "
          f"{trainer.skipped_steps} skipped; finished: {thread.finished_reason}; weights: {out}" + (f"; {'; '.join(notes)}" if notes else ""))
    return 0 if thread.finished_reason == "budget" else 1


if __name__ == "__main__":
    sys.exit(main())
