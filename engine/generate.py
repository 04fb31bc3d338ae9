"""Turn seeds into images with a trained ε-model: the shared core of `sample`, eval and the app."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from .samplers import DEFAULT_SAMPLER, get_sampler, sampler_timesteps
from .schedules import NoiseSchedule


class SeededNoise:
    """N(0, I) noise drawn image by image from one CPU generator per seed: x_T first, then every
    draw a stochastic sampler asks for, so a seed gives the same cat on every device and in any
    batch, whatever the sampler."""

    def __init__(self, seeds: list[int], shape: tuple[int, ...]) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.shape = shape

    def draw(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return self.draw().to(device=like.device, dtype=like.dtype)


def starting_noise(seeds: list[int], image_size: int, channels: int = 3) -> torch.Tensor:
    """x_T for each seed (the first draw of its `SeededNoise`), on the CPU."""
    return SeededNoise(seeds, (channels, image_size, image_size)).draw()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map model space [−1, 1] to 0…255 (rounded, clamped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), so that bf16 autocast
    makes sampling about twice as fast instead of slower."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    seeds: list[int],
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    bf16: bool | None = None,
    channels_last: bool | None = None,
    grid: list[int] | None = None,
) -> torch.Tensor:
    """Sample one image per seed; returns uint8 (B, 3, H, W) on the CPU.

    The sampler runs over `grid`, or when it is None over the grid it is made for with `steps`
    timesteps (its default count when None): `sampler_timesteps(sampler, schedule, steps)`.
    A caller that also needs the grid (to size a progress bar) builds it once and passes it.

    The network runs under bf16 autocast with channels-last activations on a GPU and on a CPU
    with native bf16 (`bf16=None`); the sampler's own arithmetic stays in fp32. `bf16=False`
    forces fp32 throughout; `channels_last` (default: as bf16) sets the activations' layout.
    """
    if grid is None:
        grid = sampler_timesteps(sampler, schedule, steps)
    elif steps is not None:
        raise ValueError("pass either steps or a grid, not both")
    device = torch.device(device)
    size = model.config.image_size
    noise = SeededNoise(seeds, (model.config.in_channels, size, size))
    x = noise.draw().to(device)
    if bf16 is None:
        bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if bf16 if channels_last is None else channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    alpha_bars = schedule.alphas_cumprod.to(device, torch.float32)

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast:
            output = model(x_t, t).float()
        return schedule.eps_of(output, x_t, alpha_bars[t].view(-1, 1, 1, 1))

    images = get_sampler(sampler)(eps, x, schedule, grid, callback=callback, noise=noise)
    return to_uint8(images).cpu()
