"""How well `kittyterm train`'s CPU memory check predicts what a training step holds.

    python benchmarks/bench_memory.py                              # tiny at batches 64, 256, 512
    python benchmarks/bench_memory.py --presets tiny kitty-64 --batches 16 64
    python benchmarks/bench_memory.py --quick                      # CI smoke run

`kittyterm train --batch-size N` on a CPU refuses a batch whose step would not fit in the memory
free now (`kittyterm.jobs.devices.check_cpu_batch_fits`), by the estimate
`jobs.devices.cpu_training_bytes`: the tensors autograd saves, counted on the meta device, and
five float32 copies of the parameters. Each row builds the Trainer on random images and takes
two steps (the second reuses the first's memory) inside `PeakMemory`: the peak resident set
above what was in use before, so it also counts the images, the backward pass's gradients of
the activations, and what the allocator keeps.
"""

from __future__ import annotations

import gc

from _common import PeakMemory, header, parse_speed_args, random_images, speed_parser, table

from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS
from kittyterm.jobs.devices import cpu_training_bytes

MIB = 2**20


def main() -> None:
    parser = speed_parser(__doc__, "tiny at batch 4 only")
    parser.add_argument("--presets", nargs="+", default=["tiny"], choices=list(PRESETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256, 512])
    args, cuda = parse_speed_args(parser)
    if cuda:
        parser.error("this measures the CPU check: run it with --device cpu")
    batches = [4] if args.quick else args.batches
    header("Memory of a CPU training step against the check's estimate", "cpu")
    rows = []
    for preset in args.presets:
        fixed, per_image = cpu_training_bytes(preset)
        config = PRESETS[preset]
        for batch in batches:
            with PeakMemory("cpu") as peak:
                trainer = Trainer(config, random_images(batch, config.image_size), TrainConfig(batch_size=batch), device="cpu")
                for _ in range(2):
                    trainer.step().loss
            estimate = (fixed + batch * per_image) / MIB
            measured = "-" if peak.mib is None else f"{peak.mib:,.0f}"
            ratio = "-" if peak.mib is None else f"{peak.mib / estimate:.2f}"
            rows.append([preset, batch, f"{per_image / MIB:.2f}", f"{estimate:,.0f}", measured, ratio])
            del trainer
            gc.collect()
    print(table(["preset", "batch", "estimate per image MiB", "estimate MiB", "measured peak MiB", "measured / estimate"], rows))


if __name__ == "__main__":
    main()
