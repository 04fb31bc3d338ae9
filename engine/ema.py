"""An exponential moving average of a network's weights, updated on the device without a host
round trip, and the two decay schedules the trainer offers.

The average covers the parameters and the floating-point buffers (as
`torch.optim.swa_utils.AveragedModel(use_buffers=True)` does); other buffers are copied. Its
tensors are views into one flat buffer, so an update is a handful of kernels whatever the
number of layers, and `apply=False` leaves the average untouched even when the weights hold
NaN (the update selects, it does not multiply by zero).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

# decay(n) → β, the weight of the old average in the n-th update (n ≥ 1, a float64 tensor)
Decay = Callable[[torch.Tensor], torch.Tensor]


def warmup_decay(max_decay: float) -> Decay:
    """β_1 = 0 (the first update copies the weights), then β_n = min(max_decay, n/(9 + n)): the
    (1 + k)/(10 + k) warm-up of TF/Keras after k = n − 1 updates, so early averages are not
    dominated by the initial weights, capped at `max_decay`."""

    def decay(n: torch.Tensor) -> torch.Tensor:
        return torch.where(n > 1, (n / (9 + n)).clamp(max=max_decay), 0.0)

    return decay


def power_decay(gamma: float) -> Decay:
    """β_n = (1 − 1/n)^(γ+1), the power-function EMA of Karras et al. 2024 ("Analyzing and
    Improving the Training Dynamics of Diffusion Models", §3.1, eq. 2): the average weighs the
    weights of update k about as k^γ, so its length grows with the run, a fixed share of it
    (relative width σ_rel, `sigma_rel_of_gamma`). β_1 = 0: the first update copies the weights."""

    def decay(n: torch.Tensor) -> torch.Tensor:
        return torch.exp((gamma + 1) * torch.log1p(-1 / n))

    return decay


def chosen_decay(gamma: float, max_decay: float) -> Decay:
    """The power-function EMA with exponent γ when γ > 0, else the warm-up EMA capped at
    `max_decay` (`TrainConfig.ema_gamma`, `TrainConfig.ema_decay`)."""
    return power_decay(gamma) if gamma > 0 else warmup_decay(max_decay)


def sigma_rel_of_gamma(gamma: float) -> float:
    """σ_rel = (γ + 1)^½ (γ + 2)^−1 (γ + 3)^−½ (Karras et al. 2024, eq. 3): the width of the
    power-function average relative to the run's length (γ = 6.94 → 0.10, γ = 16.97 → 0.05)."""
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


def flat_view(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in memory order (contiguous or channels-last)."""
    if tensor.is_contiguous():
        return tensor.view(-1)
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).reshape(-1)
    raise ValueError("the EMA needs dense (contiguous or channels-last) weights")


def layout(tensor: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if tensor.is_contiguous() else torch.channels_last


def averaged_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors the EMA averages: parameters, then floating-point buffers."""
    return list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]


class EMA:
    """`module`: a copy of the network holding the average; `updates`: how many updates were
    applied (a device tensor, saved with checkpoints)."""

    def __init__(self, model: nn.Module, decay: Decay) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        tensors = averaged_tensors(self.module)
        device = tensors[0].device
        self.flat = torch.cat([flat_view(t) for t in tensors])
        offset = 0
        with torch.no_grad():
            for tensor in tensors:  # re-home every averaged tensor into `flat`, keeping its layout
                size = tensor.numel()
                tensor.set_(self.flat[offset : offset + size].as_strided(tensor.shape, tensor.stride()))
                offset += size
        self.updates = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, model: nn.Module, apply: torch.Tensor | bool = True, weights: torch.Tensor | None = None) -> None:
        """Average in the weights of `model` where `apply` (a bool tensor: no host round trip);
        `weights` may pass `model`'s averaged tensors already flattened (see `flatten`)."""
        weights = self.flatten(model) if weights is None else weights
        apply = torch.as_tensor(apply, device=self.flat.device)
        n = self.updates + apply.to(torch.float64)
        weight = torch.where(apply, 1 - self.decay(n.clamp(min=1)), 0.0).to(self.flat.dtype)
        self.flat.lerp_(torch.where(apply, weights, self.flat), weight)
        self.updates.copy_(n)
        for source, target in zip(self._other_buffers(model), self._other_buffers(self.module)):
            target.copy_(torch.where(apply, source, target))

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """`model`'s averaged tensors as one vector in the EMA's order and memory layout (one
        copy; a tensor whose layout differs from the average's is reordered on the way)."""
        pairs = zip(averaged_tensors(model), averaged_tensors(self.module))
        return torch.cat([flat_view(t.detach().contiguous(memory_format=layout(like))) for t, like in pairs])

    def copy_from(self, model: nn.Module) -> None:
        """Make the average equal to `model`'s weights, with no update counted."""
        with torch.no_grad():
            self.flat.copy_(self.flatten(model))
            for source, target in zip(self._other_buffers(model), self._other_buffers(self.module)):
                target.copy_(source)
        self.updates.zero_()

    @staticmethod
    def _other_buffers(module: nn.Module) -> list[torch.Tensor]:
        return [b for b in module.buffers() if not b.is_floating_point()]
