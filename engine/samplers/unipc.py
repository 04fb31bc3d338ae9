"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
of Diffusion Models"): DPM-Solver++(2M) as the predictor and a corrector that reuses the model
call at the predicted point, so each step gains an order at no extra cost; deterministic.

In data-prediction form (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t − λ_s) a step
of the probability-flow ODE is exactly (Lu et al. 2022, eq. 9)
    x_t = (σ_t/σ_s) x_s + α_t ∫₀^h e^{−(h−u)} x̂0(λ_s + u) du.
Both stages integrate a polynomial in λ through known x̂0 exactly (the varying-coefficient form,
UniPC_v), with φ₁ = 1 − e^{−h}, φ₂ = 1 + (e^{−h} − 1)/h and φ₃ = φ₂/h − ½:
- predictor, the line through x̂0_{s−1} and x̂0_s:
    x̃_t = (σ_t/σ_s) x_s + α_t [φ₁ x̂0_s + φ₂ (x̂0_s − x̂0_{s−1}) h/h₋₁];
- corrector, once x̂0_t = x̂0(x̃_t) is known, the parabola through x̂0_{s−1}, x̂0_s, x̂0_t
  (r = h₋₁/h, D₂ = [(x̂0_t − x̂0_s) − (x̂0_s − x̂0_{s−1})/r]/(1 + r) ≈ (h²/2) x̂0'',
  D₁ = (x̂0_t − x̂0_s) − D₂ ≈ h x̂0'):
    x_t = (σ_t/σ_s) x_s + α_t [φ₁ x̂0_s + φ₂ D₁ − 2 φ₃ D₂].
The next step starts from the corrected x_t with x̂0_t. The first step has no x̂0_{s−1}: its
predictor is first order and its corrector the line through x̂0_s and x̂0_t. The last step lands
on σ = 0 and returns x̂0 (nothing is left to correct). Third order overall on smooth grids.
"""

from __future__ import annotations

import math

import torch

from ..schedules import NoiseSchedule
from .common import DEFAULT_CLIP, Callback, EpsModel, NoiseSampler, alpha_bars, half_log_snr, predict


@torch.no_grad()
def sample_unipc(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    grid: list[int],
    callback: Callback = None,
    noise: NoiseSampler | None = None,
    clip: str | None = DEFAULT_CLIP,
) -> torch.Tensor:
    del noise  # deterministic: the only randomness is the starting noise
    abar = alpha_bars(schedule, grid)
    step = None  # the step just predicted: (start term, α_t, h, x̂0_s, (x̂0_{s−1}, h₋₁) or None)
    for i, t in enumerate(grid):
        a, a_next = abar[i], abar[i + 1]
        _, x0 = predict(model, x, t, a, clip)
        if step is not None:
            x = corrected(*step, x0)
        if a_next >= 1.0:
            x = x0  # σ = 0: the solution is the data prediction itself
        else:
            h = half_log_snr(a_next) - half_log_snr(a)
            sigma, sigma_next, alpha_next = (1 - a) ** 0.5, (1 - a_next) ** 0.5, a_next**0.5
            start = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * x0
            previous = (step[3], step[2]) if step is not None else None  # (x̂0_{s−1}, h₋₁)
            x = start
            if previous is not None:
                x = x + alpha_next * phi_2(h) * (x0 - previous[0]) * (h / previous[1])
            step = (start, alpha_next, h, x0, previous)
        if callback is not None:
            callback(i, x, x0)
    return x


def phi_2(h: float) -> float:
    return math.expm1(-h) / h + 1


def corrected(start, alpha_next: float, h: float, x0_s, previous, x0_t) -> torch.Tensor:
    """The corrector: x_t from the parabola (or, at the first step, the line) through the x̂0."""
    forward = x0_t - x0_s
    if previous is None:
        return start + alpha_next * phi_2(h) * forward
    x0_before, h_before = previous
    r = h_before / h
    second = (forward - (x0_s - x0_before) / r) / (1 + r)
    first = forward - second
    phi_3 = phi_2(h) / h - 0.5
    return start + alpha_next * (phi_2(h) * first - 2 * phi_3 * second)
