"""Pieces shared by the samplers: the timestep grids, the model's x0 estimate and the
multistep corrections of the DPM-Solver++ family."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..schedules import NoiseSchedule

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]
# noise(x) → fresh N(0, I) noise shaped like x (on its device, in its dtype): what the stochastic
# samplers draw at each step. `engine.generate.SeededNoise` draws it per image, from each seed.
NoiseSampler = Callable[[torch.Tensor], torch.Tensor]


def gaussian_noise(generator: torch.Generator | None = None) -> NoiseSampler:
    """A noise sampler drawing from `generator` (on its device; the global RNG when None)."""

    def draw(like: torch.Tensor) -> torch.Tensor:
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    return draw


def check_steps(schedule: NoiseSchedule, steps: int) -> None:
    """Refuse a step count a grid of `schedule` cannot have: 1 … T."""
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"steps must be between 1 and {schedule.num_steps}, got {steps}")


def falling_from_noisiest(schedule: NoiseSchedule, timesteps: list[int]) -> list[int]:
    """A grid from the timesteps picked for it: T−1 in place of the first, so sampling starts from
    pure noise, then each later one that lies below the one before (rounding can repeat them)."""
    grid = [schedule.num_steps - 1]
    for t in timesteps[1:]:
        if t < grid[-1]:
            grid.append(t)
    return grid


def timestep_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """`steps` integer timesteps from T−1 down to 0, evenly spaced ("trailing" spacing,
    Lin et al. 2024, Table 2), so that sampling always starts from the noisiest timestep."""
    check_steps(schedule, steps)
    if steps == 1:
        return [schedule.num_steps - 1]
    grid = torch.linspace(schedule.num_steps - 1, 0, steps, dtype=torch.float64).round().long()
    return grid.tolist()


def log_snr_grid(schedule: NoiseSchedule, steps: int, min_log_snr: float = -10.0) -> list[int]:
    """Timesteps evenly spaced in log-SNR, the spacing Lu et al. (2022, §3.3) recommend for
    low-resolution images. The grid spans λ from max(λ_{T−1}, min_log_snr) to λ_0 (λ = log SNR
    here), always starts at T−1, and drops timesteps that rounding makes repeat."""
    check_steps(schedule, steps)
    lam = schedule.log_snr(torch.arange(schedule.num_steps))
    start = max(float(lam[-1]), min_log_snr)
    targets = torch.linspace(start, float(lam[0]), steps, dtype=torch.float64)
    # λ falls as t grows, so search the negated (ascending) sequence.
    indices = torch.searchsorted(-lam, -targets).clamp(0, schedule.num_steps - 1).tolist()
    return falling_from_noisiest(schedule, indices)


def karras_grid(schedule: NoiseSchedule, steps: int, sigma_max: float = 80.0, rho: float = 7.0) -> list[int]:
    """Timesteps at the noise levels of Karras et al. (2022, "EDM", eq. 5), in σ = √((1 − ᾱ)/ᾱ):
    σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, with the paper's σ_max = 80 and
    ρ = 7 and σ_min the schedule's own at t = 0. Each σ_i goes to the timestep nearest to it in
    log σ; the first is moved to T−1, so sampling starts from pure noise; timesteps that rounding
    makes repeat are dropped. ρ = 7 spends the steps on the low noise levels, where the details
    are drawn."""
    check_steps(schedule, steps)
    log_sigma = -0.5 * schedule.log_snr(torch.arange(schedule.num_steps)).double()
    sigma_min = math.exp(float(log_sigma[0]))
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    targets = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    nearest = (log_sigma.view(1, -1) - targets.log().view(-1, 1)).abs().argmin(dim=1).tolist()
    return falling_from_noisiest(schedule, nearest)


def half_log_snr(alpha_bar: float) -> float:
    """λ = log(α/σ) = ½ log(ᾱ/(1 − ᾱ)), the time variable of DPM-Solver (Lu et al. 2022)."""
    return 0.5 * math.log(alpha_bar / (1 - alpha_bar))


def multistep_estimate(x0: torch.Tensor, previous_x0: torch.Tensor | None, h: float, previous_h: float | None) -> torch.Tensor:
    """D of DPM-Solver++(2M): x̂0 at the first step, then (1 + 1/(2r)) x̂0 − 1/(2r) x̂0_prev with
    r = h_prev/h (Lu et al. 2022, Algorithm 2; the SDE variant uses the same midpoint form)."""
    if previous_x0 is None:
        return x0
    r = previous_h / h
    return (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0


def alpha_bars(schedule: NoiseSchedule, grid: list[int]) -> list[float]:
    """ᾱ at each grid point, followed by ᾱ = 1 for the clean image the last step lands on."""
    return [float(schedule.alpha_bar(t)) for t in grid] + [1.0]


# x̂0 clipping: "dynamic" (the default), "static" or None; see `clip_x0`.
CLIPS = ("dynamic", "static")
DEFAULT_CLIP = "dynamic"
DYNAMIC_PERCENTILE = 0.995


def clip_x0(x0: torch.Tensor, clip: str | None) -> torch.Tensor:
    """Keep the clean-image estimate x̂0 in the data range [−1, 1].

    "static" clamps each pixel (Ho et al. 2020). "dynamic" is the dynamic thresholding of Saharia
    et al. 2022 ("Imagen", §2.3): per image, s = max(1, the 99.5th percentile of |x̂0|), then
    x̂0 ← clamp(x̂0, −s, s)/s. An estimate already in range is left as it is. At the noisiest steps
    of an ε-model, x̂0 = (x − σε̂)/α multiplies ε̂'s error by σ/α (about 2·10⁴ at t = T−1 of the
    cosine schedule). Clamping turns that error into a fully saturated colour, which later steps
    paint a cat in. Dividing by s keeps its size in proportion and lets the later steps choose
    the colour. None leaves x̂0 as it is."""
    if clip is None:
        return x0
    if clip == "static":
        return x0.clamp(-1, 1)
    if clip != "dynamic":
        raise ValueError(f"unknown clip {clip!r}; choose one of {', '.join(CLIPS)} or None")
    magnitudes = x0.abs().flatten(1)
    k = math.ceil(DYNAMIC_PERCENTILE * magnitudes.shape[1])
    s = magnitudes.sort(dim=1).values[:, k - 1].clamp(min=1).view(-1, *(1,) * (x0.dim() - 1))  # sort: every backend has it
    return x0.clamp(-s, s) / s


def predict(
    model: EpsModel, x: torch.Tensor, t: int, alpha_bar: float, clip: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the ε-model at timestep t; return (ε, x̂0) with x̂0 = (x − √(1−ᾱ)ε)/√ᾱ (Ho et al., eq. 15),
    clipped by `clip_x0`."""
    timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps = model(x, timesteps).to(x.dtype)
    x0 = (x - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
    if clip is not None:
        x0 = clip_x0(x0, clip)
        # Keep ε consistent with the clipped estimate so the update stays on the data manifold.
        eps = (x - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5
    return eps, x0
