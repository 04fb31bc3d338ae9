"""Turn seeds into images with a trained ε-model: the shared core of `sample`, eval and the app;
also the start of SDEdit variations (a clean image noised part-way) and of morphs (the noise of
two seeds, spherically interpolated)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import torch

from .samplers import DEFAULT_SAMPLER, get_sampler, sampler_timesteps
from .samplers.common import DEFAULT_CLIP
from .schedules import NoiseSchedule


class SeededNoise:
    """N(0, I) noise drawn image by image from one CPU generator per seed: x_T first, then every
    draw a stochastic sampler asks for, so a seed gives the same cat on every device and in any
    batch, whatever the sampler."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...]) -> None:
        self.seeds = tuple(seeds)
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.shape = shape

    def draw(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return self.draw().to(device=like.device, dtype=like.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, fraction: float) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; for noise, White 2016, "Sampling Generative
    Networks"): sin((1 − f)θ)/sin θ · a + sin(fθ)/sin θ · b, θ the angle between a and b (as flat
    vectors). Two independent N(0, I) draws are almost orthogonal with almost equal norms, so every
    point on the arc is again a typical draw, where the straight line's middle has √2 less norm
    (a washed-out image). Returns a at f = 0 and b at f = 1 exactly; a straight line when a and b
    are (anti)parallel."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    cosine = float(a64 @ b64 / (a64.norm() * b64.norm()).clamp_min(1e-300))
    theta = math.acos(min(1.0, max(-1.0, cosine)))
    if math.sin(theta) < 1e-6:
        return (1 - fraction) * a + fraction * b
    return (math.sin((1 - fraction) * theta) / math.sin(theta)) * a + (math.sin(fraction * theta) / math.sin(theta)) * b


class SlerpNoise(SeededNoise):
    """The noise of images part-way between two seeds: every draw (x_T, then each draw of a
    stochastic sampler) is seed A's and seed B's own next draw, spherically interpolated at each
    image's fraction, so fraction 0 gives seed A's cat and fraction 1 seed B's."""

    def __init__(self, seed_a: int, seed_b: int, fractions: Sequence[float], shape: tuple[int, ...]) -> None:
        super().__init__((seed_a, seed_b), shape)
        self.fractions = tuple(fractions)

    def draw(self) -> torch.Tensor:
        a, b = (torch.randn(self.shape, generator=g) for g in self.generators)
        return torch.stack([slerp(a, b, f) for f in self.fractions])


def starting_noise(seeds: list[int], image_size: int, channels: int = 3) -> torch.Tensor:
    """x_T for each seed (the first draw of its `SeededNoise`), on the CPU."""
    return SeededNoise(seeds, (channels, image_size, image_size)).draw()


def sdedit_grid(grid: list[int], strength: float, num_steps: int) -> list[int]:
    """The part of a sampler's `grid` that an SDEdit variation of `strength` runs (Meng et al.
    2022, "SDEdit"): the timesteps below strength·T. Strength 1 keeps the whole grid (plain
    sampling), 0 none (the image itself)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be between 0 and 1, not {strength}")
    return [t for t in grid if t < strength * num_steps]


def starting_latents(noise: SeededNoise, schedule: NoiseSchedule, grid: list[int], start: torch.Tensor | None = None) -> torch.Tensor:
    """Where sampling over `grid` begins, on the CPU: pure noise x_T (`noise`'s first draw), or for
    clean images `start` (in [−1, 1]) the forward process to the grid's first timestep,
    x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4) with ε that same draw; an empty grid
    leaves `start` as it is. At t = T−1 plain sampling takes x_t to be pure noise (ᾱ_{T−1} ≈ 0,
    2·10⁻⁹ for the cosine schedule), and so does this: a whole grid draws the seeds' own cats."""
    x = noise.draw()
    if start is None or (grid and grid[0] == schedule.num_steps - 1):
        return x
    a = float(schedule.alpha_bar(grid[0])) if grid else 1.0
    return a**0.5 * start.float().cpu() + (1 - a) ** 0.5 * x


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
    seeds: Sequence[int] | SeededNoise,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    bf16: bool | None = None,
    channels_last: bool = True,
    grid: list[int] | None = None,
    start: torch.Tensor | None = None,
    clip: str | None = DEFAULT_CLIP,
) -> torch.Tensor:
    """Sample one image per seed; returns uint8 (B, 3, H, W) on the CPU.

    `seeds` may also be the noise source itself (a `SeededNoise`, such as a `SlerpNoise` for
    morphs). The sampler runs over `grid`, or when it is None over the grid it is made for with
    `steps` timesteps (its default count when None): `sampler_timesteps(sampler, schedule, steps)`.
    A caller that also needs the grid (to size a progress bar) builds it once and passes it.
    With `start` (clean images in [−1, 1], (B or 1, 3, H, W)) it runs SDEdit instead: the images
    are noised to the grid's first timestep (see `starting_latents`) and denoised over the grid,
    typically a tail of the sampler's own (see `sdedit_grid`). `clip` is how the sampler keeps
    its x̂0 estimates in range (`samplers.common.clip_x0`).

    The network runs under bf16 autocast on a GPU and on a CPU with native bf16 (`bf16=None`);
    the sampler's own arithmetic stays in fp32. `bf16=False` forces fp32 throughout.
    Activations are channels-last unless `channels_last=False`: faster in fp32 and bf16, on CPUs
    and GPUs alike (benchmarks/bench_sample.py).
    """
    if grid is None:
        grid = sampler_timesteps(sampler, schedule, steps)
    elif steps is not None:
        raise ValueError("pass either steps or a grid, not both")
    device = torch.device(device)
    size = model.config.image_size
    noise = seeds if isinstance(seeds, SeededNoise) else SeededNoise(seeds, (model.config.in_channels, size, size))
    x = starting_latents(noise, schedule, grid, start).to(device)
    if bf16 is None:
        bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    alpha_bars = schedule.alphas_cumprod.to(device, torch.float32)

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast:
            output = model(x_t, t).float()
        return schedule.eps_of(output, x_t, alpha_bars[t].view(-1, 1, 1, 1))

    images = get_sampler(sampler)(eps, x, schedule, grid, callback=callback, noise=noise, clip=clip)
    return to_uint8(images).cpu()
