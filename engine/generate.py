"""Turn seeds into images with a trained ε-model: the shared core of `sample`, eval and the app."""

from __future__ import annotations

from typing import Callable

import torch

from .samplers import get_sampler
from .schedules import NoiseSchedule


def starting_noise(seeds: list[int], image_size: int, channels: int = 3) -> torch.Tensor:
    """x_T for each seed, drawn on the CPU so a seed gives the same cat on every device and batch."""
    noise = [
        torch.randn((channels, image_size, image_size), generator=torch.Generator().manual_seed(seed))
        for seed in seeds
    ]
    return torch.stack(noise)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map model space [−1, 1] to 0…255 (rounded, clamped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    seeds: list[int],
    sampler: str = "dpm++",
    steps: int = 20,
    device: str | torch.device = "cpu",
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample one image per seed; returns uint8 (B, 3, H, W) on the CPU."""
    device = torch.device(device)
    size = model.config.image_size
    x = starting_noise(seeds, size, model.config.in_channels).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(x_t, t).float()

    images = get_sampler(sampler)(eps, x, schedule, steps, callback=callback)
    return to_uint8(images).cpu()
