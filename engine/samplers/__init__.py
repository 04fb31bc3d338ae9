"""Samplers: each a small function `sample(model, x, schedule, steps, callback=None, noise=None)`.

`model(x_t, t)` predicts ε for a batch x_t at integer timesteps t (shape [B]); `x` is the starting
noise x_T ~ N(0, I); `callback(step, x_t, x0_pred)` is called after every step with the new
latent and the model's current estimate of the clean image — the preview hook; `noise(x)` gives
the fresh N(0, I) draws of the stochastic samplers (see `common.NoiseSampler`).
"""

from __future__ import annotations

from typing import Callable

from .common import log_snr_grid, timestep_grid
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .dpm_solver import sample_dpmpp_2m
from .dpm_solver_sde import sample_dpmpp_2m_sde

SAMPLERS: dict[str, Callable] = {
    "dpm++sde": sample_dpmpp_2m_sde,
    "dpm++": sample_dpmpp_2m,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
}
DEFAULT_SAMPLER = "dpm++sde"
DEFAULT_STEPS = {"dpm++sde": 25, "dpm++": 20, "ddim": 50, "ddpm": 1000}


def sampler_timesteps(name: str, schedule, steps: int) -> list[int]:
    """The timesteps at which sampler `name` calls the model: one preview frame each."""
    get_sampler(name)
    return log_snr_grid(schedule, steps) if name.startswith("dpm++") else timestep_grid(schedule, steps)


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


__all__ = ["SAMPLERS", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "get_sampler", "sampler_timesteps", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde"]
