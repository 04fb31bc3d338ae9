"""DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", §5 and Appendix B): the second-order
multistep solver of the diffusion *SDE* in data-prediction form.

With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t), h = λ_t − λ_s and z ~ N(0, I):
    x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) D + σ_t √(1 − e^{−2h}) z,
where D = x̂0_s at the first step and, afterwards, the midpoint correction
D = x̂0_s + (1/(2r)) (x̂0_s − x̂0_prev), r = h_prev/h. The last step lands on σ = 0 and returns x̂0.

Unlike the ODE solver it re-injects noise at every step, as DDPM does, so an early mistake in
the low-frequency content (the overall colour of a cat) is forgotten rather than carried to the
end: with few steps, ε-models trained briefly give markedly more natural images this way.
"""

from __future__ import annotations

import math

import torch

from ..schedules import NoiseSchedule
from .common import DEFAULT_CLIP, Callback, EpsModel, NoiseSampler, alpha_bars, gaussian_noise, half_log_snr, multistep_estimate, predict


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: EpsModel,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    grid: list[int],
    callback: Callback = None,
    noise: NoiseSampler | None = None,
    clip: str | None = DEFAULT_CLIP,
) -> torch.Tensor:
    noise = noise or gaussian_noise()
    abar = alpha_bars(schedule, grid)
    previous_x0, previous_h = None, None
    for i, t in enumerate(grid):
        a, a_next = abar[i], abar[i + 1]
        _, x0 = predict(model, x, t, a, clip)
        if a_next >= 1.0:
            x = x0  # σ = 0: the solution is the data prediction itself
        else:
            h = half_log_snr(a_next) - half_log_snr(a)
            d = multistep_estimate(x0, previous_x0, h, previous_h)
            sigma, sigma_next = (1 - a) ** 0.5, (1 - a_next) ** 0.5
            decay = -math.expm1(-2 * h)  # 1 − e^{−2h}
            x = (sigma_next / sigma) * math.exp(-h) * x + a_next**0.5 * decay * d
            x = x + sigma_next * decay**0.5 * noise(x)
            previous_h = h
        previous_x0 = x0
        if callback is not None:
            callback(i, x, x0)
    return x

