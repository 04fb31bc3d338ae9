"""Discrete-time noise schedules and the forward process of DDPM (Ho et al. 2020).

Notation follows the paper: β_t is the per-step variance, α_t = 1 − β_t and
ᾱ_t = ∏_{s≤t} α_s, so that q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)   (Ho et al., eq. 4).
Timesteps are 0-based: t ∈ {0, …, T−1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .limits import check_float, check_int, shown

SCHEDULES = ("linear", "cosine")
MAX_STEPS = 100_000  # 100× DDPM's 1,000; a schedule of T steps is allocated (T float64 values, several times)
PREDICTIONS = ("eps", "v")


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t rising linearly from beta_start to beta_end (Ho et al. 2020, §4)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t = f(t+1)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, eq. 17).

    β_t = 1 − ᾱ_t/ᾱ_{t−1} is clipped to 0.999 as in the paper, so ᾱ is rebuilt from the
    clipped betas to keep the two consistent.
    """
    steps = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((steps / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f[1:] / f[0]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    betas = (1 - alphas_cumprod / previous).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule and what the network predicts: ε (Ho et al. 2020) or v = α ε − σ x0
    (Salimans & Ho 2022, "Progressive Distillation", §4), with α = √ᾱ and σ = √(1 − ᾱ). A
    checkpoint whose config does not name the prediction predates v and predicts ε."""

    kind: str = "cosine"
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "eps"

    def __post_init__(self) -> None:
        """Check every field's type and range (a config may come from an edited file), and that a
        linear schedule keeps 0 < ᾱ_t < 1 at every step, as ε-prediction divides by √ᾱ_t and the
        samplers by 1 − ᾱ_t (in float32)."""
        if not isinstance(self.kind, str) or self.kind not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {shown(self.kind)}; choose one of {', '.join(SCHEDULES)}")
        if not isinstance(self.prediction, str) or self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {shown(self.prediction)}; choose one of {', '.join(PREDICTIONS)}")
        check_int("num_steps", self.num_steps, 2, MAX_STEPS)
        start, end = check_float("beta_start", self.beta_start), check_float("beta_end", self.beta_end)
        if not 0 < start <= end < 1:
            raise ValueError(f"betas must satisfy 0 < beta_start ≤ beta_end < 1, not {shown(start)} and {shown(end)}")
        if self.kind == "linear":
            alphas_cumprod = torch.cumprod(1 - linear_betas(self.num_steps, start, end), dim=0).float()
            if not (alphas_cumprod[0] < 1 and alphas_cumprod[-1] > 0):
                raise ValueError(
                    f"a linear schedule from {shown(start)} to {shown(end)} over {self.num_steps:,} steps "
                    f"{'adds no noise at its first step' if alphas_cumprod[0] >= 1 else 'leaves no signal at its last step'}"
                )

    @classmethod
    def from_dict(cls, data: dict) -> "ScheduleConfig":
        if not isinstance(data, dict):
            raise ValueError(f"the schedule config must be a JSON object, not {shown(data)}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown schedule config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


class NoiseSchedule:
    """ᾱ_t for t = 0 … T−1 (float64 on the CPU) plus the forward process and SNR helpers."""

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        T = self.config.num_steps
        if self.config.kind == "linear":
            betas = linear_betas(T, self.config.beta_start, self.config.beta_end)
            self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        else:
            self.alphas_cumprod = cosine_alphas_cumprod(T)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.betas = 1 - self.alphas_cumprod / previous

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def alpha_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        """ᾱ_t as float64; t may be an int or an integer tensor of any shape."""
        return self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, eq. 1)."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def log_snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """λ_t = log SNR(t) = 2 log(α_t/σ_t) in the notation of Lu et al. 2022."""
        return torch.log(self.snr(t))

    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x_0) = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al., eq. 4); returns (x_t, ε)."""
        if noise is None:
            noise = torch.randn_like(x0)
        a = self.alpha_bar(t).to(device=x0.device, dtype=torch.float32)
        a = a.view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, noise

    def eps_of(self, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """ε from the network's output at x_t: the output itself, or from v, ε = σ x_t + α v
        (Salimans & Ho 2022, Appendix D); `alpha_bar` broadcasts against x_t."""
        if self.config.prediction == "eps":
            return output
        return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * output

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for x_0 given a noise prediction: x_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
        a = self.alpha_bar(t).to(device=x_t.device, dtype=x_t.dtype)
        a = a.view(-1, *([1] * (x_t.dim() - 1))) if a.dim() else a
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()
