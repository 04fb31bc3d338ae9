"""Ancestral sampling of DDPM (Ho, Jain & Abbeel 2020, Algorithm 2), by default over all T steps."""

from __future__ import annotations

import torch

from ..schedules import NoiseSchedule
from .common import DEFAULT_CLIP, Callback, EpsModel, NoiseSampler, alpha_bars, gaussian_noise, predict


@torch.no_grad()
def sample_ddpm(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    grid: list[int],
    callback: Callback = None,
    noise: NoiseSampler | None = None,
    clip: str | None = DEFAULT_CLIP,
) -> torch.Tensor:
    """Draw x_{t−1} from the posterior q(x_{t−1} | x_t, x̂0) = N(μ̃, β̃ I) (Ho et al., eqs. 6–7):
    μ̃ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,
    β̃ = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t.
    Over a grid of fewer than T timesteps, β_t is that of the respaced chain, 1 − ᾱ_t/ᾱ_{t−1}
    (Nichol & Dhariwal 2021, §4).
    """
    noise = noise or gaussian_noise()
    abar = alpha_bars(schedule, grid)
    for i, t in enumerate(grid):
        a, a_prev = abar[i], abar[i + 1]
        _, x0 = predict(model, x, t, a, clip)
        alpha = a / a_prev
        beta = 1 - alpha
        mean = (a_prev**0.5 * beta / (1 - a)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a)) * x
        variance = (1 - a_prev) / (1 - a) * beta
        x = mean
        if variance > 0:
            x = x + variance**0.5 * noise(x)
        if callback is not None:
            callback(i, x, x0)
    return x
