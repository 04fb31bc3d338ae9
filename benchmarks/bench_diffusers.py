"""Our U-Net against diffusers' `UNet2DModel` of the same shape, in the same run and loop.

    pip install "diffusers>=0.30"                         # benchmark-only: the `bench` extra
    python benchmarks/bench_diffusers.py                  # both presets, CPU or CUDA
    python benchmarks/bench_diffusers.py --quick          # CI smoke run (skips without diffusers)

For each preset a `UNet2DModel` is built with the same levels, widths, blocks per level,
attention levels, head width, GroupNorm groups and scale-shift time conditioning, which gives
a parameter count within 1 % of ours. Training swaps it into an `engine.trainer.Trainer`
(model, EMA, optimizer, forward) so that the very same `Trainer.step()` drives both networks;
sampling runs both through the same DPM-Solver++ loop. The ratio column is ours ÷ diffusers
(above 1: ours is faster).
"""

from __future__ import annotations

import sys
import types

from _common import feature_variants, fmt_rate, header, model_flops_per_image, parse_speed_args, speed_parser, table, timed

import torch
from torch import nn

from engine.generate import cpu_has_native_bf16, generate
from engine.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from engine.schedules import NoiseSchedule
from engine.ema import EMA
from engine.unet import PRESETS, UNet, UNetConfig, count_parameters


class DiffusersEps(nn.Module):
    """ε(x_t, t) from a diffusers UNet2DModel, shaped like ours (`.config.image_size` too)."""

    def __init__(self, unet, config: UNetConfig) -> None:
        super().__init__()
        self.unet = unet
        self.config = types.SimpleNamespace(image_size=config.image_size, in_channels=config.in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def diffusers_twin(config: UNetConfig) -> DiffusersEps:
    """A UNet2DModel laid out like `UNet(config)`."""
    from diffusers import UNet2DModel

    levels = len(config.channel_mults)
    resolutions = [config.image_size // 2**i for i in range(levels)]
    attention = [r in config.attention_resolutions for r in resolutions]
    unet = UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        layers_per_block=config.num_res_blocks,
        block_out_channels=tuple(config.base_channels * m for m in config.channel_mults),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        norm_num_groups=config.norm_groups,
        attention_head_dim=config.attention_head_channels,
        resnet_time_scale_shift="scale_shift",
        dropout=config.dropout,
    )
    return DiffusersEps(unet, config)


def swap_in(trainer, model: nn.Module) -> None:
    """Make `trainer` train `model` with its own step(): new model, EMA, optimizer, forward."""
    model = model.to(trainer.device).train()
    if trainer.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    config = trainer.config
    trainer.model = model
    trainer.ema = EMA(model, trainer.ema.decay)
    trainer.optimizer = torch.optim.AdamW(
        model.parameters(), lr=trainer.optimizer.param_groups[0]["lr"], betas=config.betas, weight_decay=config.weight_decay, fused=True
    )
    trainer.forward = trainer._eager_forward = model


def main() -> None:
    parser = speed_parser(__doc__, "tiny preset, batch 4, 1 step")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 50 on CUDA, 5 on the CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also compare with torch.compile on both")
    parser.add_argument("--cats", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args, cuda = parse_speed_args(parser)
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed; skipping the comparison (pip install 'diffusers>=0.30', the `bench` extra).")
        return
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    from bench_train import measure

    batch_size = args.batch_size or (256 if cuda else 32)
    steps = args.steps or (50 if cuda else 5)
    warmup, cats, repeats, sample_steps = args.warmup, args.cats, args.repeats, DEFAULT_STEPS[DEFAULT_SAMPLER]
    if args.quick:
        args.presets, batch_size, steps, warmup, cats, repeats, sample_steps = ["tiny"], 4, 1, 1, 2, 1, 2
    variants = [v for v in feature_variants(args.device, include_compile=args.compile) if v[0] in ("default", "+compile")]

    header(f"Ours vs diffusers {diffusers.__version__} UNet2DModel", args.device)
    rows, sample_rows = [], []
    for preset in args.presets:
        config = PRESETS[preset]
        builders = {"ours": lambda: UNet(config), "diffusers": lambda: diffusers_twin(config)}
        shapes = {}
        for name, build in builders.items():
            torch.manual_seed(0)
            model = build()
            forward, train = model_flops_per_image(model, config.image_size)
            shapes[name] = (count_parameters(model), forward, train)
        for label, features in variants:
            speeds = {}
            for name, build in builders.items():
                factory = None if name == "ours" else (lambda trainer, build=build: swap_in(trainer, build()))
                result = measure(preset, batch_size, steps, warmup, args.device, features, model_factory=factory)
                speeds[name] = result
                params, forward, train = shapes[name]
                rows.append(
                    [preset, name, f"{params / 1e6:.2f} M", f"{forward / 1e9:.2f}", label, batch_size,
                     fmt_rate(result["images_per_second"]), f"{result['ms_per_step']:.1f}", result["memory"], ""]
                )
                print(f"  measured {preset} {name} {label}: {fmt_rate(result['images_per_second'])} img/s", flush=True)
            rows[-1][-1] = f"{speeds['ours']['images_per_second'] / speeds['diffusers']['images_per_second']:.2f}×"

        schedule = NoiseSchedule()
        seeds = list(range(cats))
        native_bf16 = cuda or cpu_has_native_bf16()  # what `engine.generate.generate` would use
        seconds = {}
        for name, build in builders.items():
            torch.manual_seed(0)
            model = build().eval().requires_grad_(False).to(args.device)
            if native_bf16:
                model.to(memory_format=torch.channels_last)

            def run():
                return generate(model, schedule, seeds, DEFAULT_SAMPLER, sample_steps, args.device, bf16=native_bf16)

            run()
            seconds[name] = timed(run, args.device, repeats)
        sample_rows.append(
            [preset, args.device, f"{DEFAULT_SAMPLER} {sample_steps}", cats, f"{seconds['ours']:.2f}", f"{seconds['diffusers']:.2f}", f"{seconds['diffusers'] / seconds['ours']:.2f}×"]
        )
    print()
    print("Training, the same `Trainer.step()` loop:")
    print()
    print(table(["preset", "network", "params", "fwd GFLOP/img", "variant", "batch", "images/s", "ms/step", "peak mem", "ours ÷ diffusers"], rows))
    print()
    print("Sampling (random weights; engine defaults: bf16 + channels-last on CUDA and on CPUs with native bf16, else fp32):")
    print()
    print(table(["preset", "device", "sampler", "cats", "ours s", "diffusers s", "ours faster by"], sample_rows))


if __name__ == "__main__":
    sys.exit(main())
