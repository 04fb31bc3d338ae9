"""Samplers: each a small function `sample(model, x, schedule, grid, callback=None, noise=None)`.

`model(x_t, t)` predicts ε for a batch x_t at integer timesteps t (shape [B]); `x` is the starting
noise x_T ~ N(0, I); `grid` is the falling list of timesteps at which the model is called (the
caller builds it once with `sampler_timesteps`, one preview frame per entry), after which the
sampler lands on the clean image; `callback(step, x_t, x0_pred)` is called after every step with
the new latent and the model's current estimate of the clean image — the preview hook;
`noise(x)` gives the fresh N(0, I) draws of the stochastic samplers (see `common.NoiseSampler`);
`clip` says how x̂0 is kept in the data range: "dynamic" thresholding (the default), "static"
clamping, or None (see `common.clip_x0`).
"""

from __future__ import annotations

from typing import Callable

from ..sampling_defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..schedules import NoiseSchedule
from .common import karras_grid, log_snr_grid, timestep_grid
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .dpm_solver import sample_dpmpp_2m
from .dpm_solver_sde import sample_dpmpp_2m_sde
from .unipc import sample_unipc

SAMPLERS: dict[str, Callable] = {
    "dpm++sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
    "dpm++": sample_dpmpp_2m,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
}
# The kinds of grid, each `grid(schedule, steps)`: EDM's noise levels (Karras et al. 2022),
# evenly in log-SNR (Lu et al. 2022), evenly in t.
GRID_KINDS: dict[str, Callable[[NoiseSchedule, int], list[int]]] = {
    "karras": karras_grid,
    "log-snr": log_snr_grid,
    "even": timestep_grid,
}
# The grid each sampler is made for: the ODE solvers step evenly in log-SNR; the SDE solver draws
# better cats on EDM's grid (BENCHMARKS.md, "The SDE solver's grid").
GRIDS: dict[str, Callable[[NoiseSchedule, int], list[int]]] = {
    "dpm++sde": karras_grid,
    "unipc": log_snr_grid,
    "dpm++": log_snr_grid,
    "ddim": timestep_grid,
    "ddpm": timestep_grid,
}


def sampler_timesteps(name: str, schedule: NoiseSchedule, steps: int | None = None) -> list[int]:
    """The grid of sampler `name`: the `steps` timesteps (its default count when None) at which
    it calls the model, one preview frame each."""
    get_sampler(name)
    return GRIDS[name](schedule, DEFAULT_STEPS[name] if steps is None else steps)


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


__all__ = [
    "SAMPLERS",
    "GRIDS",
    "GRID_KINDS",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "get_sampler",
    "sampler_timesteps",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_unipc",
]
