"""DDIM (Song, Meng & Ermon 2021): any number of steps; η = 0 is deterministic, η = 1 is DDPM-like."""

from __future__ import annotations

import torch

from ..schedules import NoiseSchedule
from .common import DEFAULT_CLIP, Callback, EpsModel, NoiseSampler, alpha_bars, gaussian_noise, predict


@torch.no_grad()
def sample_ddim(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    grid: list[int],
    callback: Callback = None,
    noise: NoiseSampler | None = None,
    eta: float = 0.0,
    clip: str | None = DEFAULT_CLIP,
) -> torch.Tensor:
    """Song et al., eq. 12:
    x_{t−1} = √ᾱ_{t−1} x̂0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z,
    σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})   (eq. 16),
    over the timesteps `grid` (falling; see `timestep_grid`) and then to ᾱ = 1.
    """
    noise = noise or gaussian_noise()
    abar = alpha_bars(schedule, grid)
    for i, t in enumerate(grid):
        a, a_prev = abar[i], abar[i + 1]
        eps, x0 = predict(model, x, t, a, clip)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise(x)
        if callback is not None:
            callback(i, x, x0)
    return x
