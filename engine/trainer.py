"""The training loop for ε-prediction: one `step()` at a time, saving and resuming exactly.

Loss: L = E_{t,x0,ε} w(t) ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖² (Ho et al. 2020, eq. 14) with the
Min-SNR-γ weight w(t) = min(SNR(t), γ)/SNR(t) (Hang et al. 2023, eq. 9) when γ > 0.
The trainer knows nothing of who watches it: it returns a `StepResult` per step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from .checkpoint import (
    CheckpointError,
    _first_line,
    check_state_fits,
    first_non_finite,
    load_state_checked,
    model_configs,
    read_checkpoint,
    save_checkpoint,
    split_prefix,
)
from .data import BatchIterator
from .schedules import NoiseSchedule, ScheduleConfig
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 500
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    seed: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("learning rate must be positive and finite")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    grad_norm: float
    skipped: bool = False


@dataclass
class History:
    """The per-step training loss, kept so a resumed run continues its curve."""

    losses: list[float] = field(default_factory=list)

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(self.losses, dtype=torch.float32)


def ema_with_warmup(max_decay: float):
    """EMA update with decay min(max_decay, (1 + n)/(10 + n)) after n updates, so early
    averages are not dominated by the random initialisation (as in Keras/TF EMA)."""

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        decay = min(max_decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, params, 1 - decay)

    return update


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer:
    """Owns model, EMA, optimizer, RNGs and batches; `step()` trains on one batch."""

    def __init__(
        self,
        model_config: UNetConfig,
        images: torch.Tensor,
        train_config: TrainConfig | None = None,
        schedule_config: ScheduleConfig | None = None,
        device: str | torch.device | None = None,
        distributed=None,
    ) -> None:
        self.model_config = model_config
        self.config = train_config or TrainConfig()
        self.schedule = NoiseSchedule(schedule_config or ScheduleConfig())
        self.device = pick_device(str(device) if device is not None else None)
        # An `engine.distributed.DistContext` when run under torchrun (DDP); None for one process.
        self.distributed = distributed if distributed is not None and distributed.enabled else None
        cuda = self.device.type == "cuda"
        if images.shape[-1] != model_config.image_size:
            raise ValueError(f"images are {images.shape[-1]} px but the model wants {model_config.image_size} px")

        torch.manual_seed(self.config.seed)
        self.model = UNet(model_config).to(self.device)
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(self.config.ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.config.lr,
            betas=self.config.betas,
            weight_decay=self.config.weight_decay,
            fused=cuda,
        )
        self.noise_rng = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.data_rng = torch.Generator().manual_seed(self.config.seed + 1)
        shard = self.distributed.shard() if self.distributed else (0, 1)
        if cuda:  # a few hundred MB at most: batches are then gathered on the GPU, not copied per step
            images = images.to(self.device)
        self.batches = BatchIterator(images, self.config.batch_size, self.data_rng, self.device, shard=shard)
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(self.device, torch.float32)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        module = self.distributed.wrap(self.model) if self.distributed else self.model
        self._eager_forward = module
        self.forward = torch.compile(module) if self.config.compile else module
        self.compile_failure: str | None = None  # why torch.compile was given up, if it was
        self.step_count = 0
        self.skipped_steps = 0
        self.weights_finite = True  # False after an update left NaN/inf in the weights: roll back
        self.history = History()

    @property
    def num_images(self) -> int:
        return len(self.batches.images)

    @property
    def epoch(self) -> float:
        return self.batches.epoch

    def learning_rate(self, step: int) -> float:
        """Linear warmup to the base rate over `warmup_steps`, then constant."""
        warmup = max(1, self.config.warmup_steps)
        return self.config.lr * min(1.0, (step + 1) / warmup)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        gamma = self.config.min_snr_gamma
        if gamma <= 0:
            return torch.ones_like(t, dtype=torch.float32)
        a = self.alphas_cumprod[t]
        snr = a / (1 - a)
        return snr.clamp(max=gamma) / snr

    def step(self) -> StepResult:
        """One optimisation step; a non-finite loss or gradient skips the update."""
        self.model.train()
        x0 = next(self.batches)
        b = x0.shape[0]
        if self.device.type == "cuda":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        # Draw the global batch's t and noise on every rank and keep this rank's slice (DDP).
        n, local = self.batches.batch_size, self.batches.rank_slice
        t = torch.randint(0, self.schedule.num_steps, (n,), generator=self.noise_rng, device=self.device)[local]
        noise = torch.randn((n, *x0.shape[1:]), generator=self.noise_rng, device=self.device)[local]
        a = self.alphas_cumprod[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with self.autocast:
            prediction = self._predict(x_t, t)
        per_image = (prediction.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (self.loss_weights(t) * per_image).mean()
        lr = self.learning_rate(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        mse = per_image.detach().mean()
        mse = float(self.distributed.mean(mse) if self.distributed else mse)
        if not (math.isfinite(mse) and math.isfinite(float(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return StepResult(self.step_count, mse, lr, float(grad_norm), skipped=True)
        self.optimizer.step()
        if not self._weights_are_finite():  # never let a NaN reach the EMA (nor a checkpoint: see save)
            self.weights_finite = False
            self.skipped_steps += 1
            return StepResult(self.step_count, mse, lr, float(grad_norm), skipped=True)
        self.ema.update_parameters(self.model)
        self.step_count += 1
        self.history.losses.append(mse)
        return StepResult(self.step_count, mse, lr, float(grad_norm))

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t); if the compiled model fails (compilation happens on first use), train
        on eagerly from then on and keep the reason in `compile_failure`."""
        if not self.config.compile or self.forward is self._eager_forward:
            return self.forward(x_t, t)
        try:
            return self.forward(x_t, t)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:
            self.compile_failure = _first_line(error)
            self.forward = self._eager_forward
            return self.forward(x_t, t)

    def _weights_are_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    # ---------------------------------------------------------------- checkpoints

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        tensors["ema_updates"] = self.ema.n_averaged.detach().clone()
        optim_state = self.optimizer.state_dict()
        for index, state in optim_state["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["rng.noise"] = self.noise_rng.get_state()
        tensors["rng.data"] = self.data_rng.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors.update({f"batches.{k}": torch.as_tensor(v) for k, v in self.batches.state_dict().items()})
        tensors["history.loss"] = self.history.to_tensor()
        metadata = {
            "model_config": json.dumps(self.model_config.to_dict()),
            "schedule_config": json.dumps(asdict(self.schedule.config)),
            "train_config": json.dumps(asdict(self.config)),
            "optimizer_param_groups": json.dumps(optim_state["param_groups"]),
            "step": str(self.step_count),
            "skipped_steps": str(self.skipped_steps),
            "epoch": f"{self.epoch:.4f}",
            "images": str(self.num_images),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return tensors, metadata

    def save(self, path: Path) -> None:
        if self.distributed and not self.distributed.is_main:
            return  # under DDP every rank holds the same state and rank 0 alone writes it
        tensors, metadata = self.state_tensors()
        bad = first_non_finite(tensors)
        if bad is not None:  # keep the last good checkpoint rather than overwrite it with NaNs
            raise ValueError(f"refusing to save a non-finite training state ({bad} holds NaN or infinite values)")
        save_checkpoint(path, tensors, metadata)

    @classmethod
    def resume(
        cls,
        path: Path,
        images: torch.Tensor,
        device: str | torch.device | None = None,
        train_overrides: dict | None = None,
        distributed=None,
    ) -> "Trainer":
        """Rebuild a trainer from a training checkpoint so the run continues where it stopped."""
        tensors, metadata = read_checkpoint(path)
        model_config, schedule_config = model_configs(Path(path), metadata)
        if "train_config" not in metadata or "optimizer_param_groups" not in metadata:
            raise CheckpointError(f"{path}: holds weights only, not a training state to resume")
        try:
            saved = json.loads(metadata["train_config"])
            saved.update(train_overrides or {})
            config = TrainConfig.from_dict(saved)
        except Exception as e:  # bad JSON, wrong types or values
            raise CheckpointError(f"{path}: bad training config in metadata ({_first_line(e)})") from None
        # Check before building anything: a damaged or foreign config must not allocate a huge network.
        check_state_fits(model_config, split_prefix(tensors, "model"), Path(path), "model")
        if images.shape[-1] != model_config.image_size:
            raise CheckpointError(
                f"{path}: holds a model for {model_config.image_size} px images, "
                f"not {images.shape[-1]} px (a checkpoint of another preset?)"
            )
        trainer = cls(model_config, images, config, schedule_config, device, distributed)
        trainer.load_state(tensors, metadata, Path(path))
        return trainer

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
        """Restore weights, EMA, optimizer, RNGs, data order, history and step from a checkpoint
        read with `read_checkpoint(path)`; any damage is a `CheckpointError` naming `path`."""
        try:
            bad = first_non_finite(split_prefix(tensors, "optim"))
            if bad is not None:
                raise CheckpointError(f"{path}: optimizer state optim.{bad} holds NaN or infinite values")
            step, skipped = int(metadata["step"]), int(metadata.get("skipped_steps", 0))
            load_state_checked(self.model, split_prefix(tensors, "model"), path, "model")
            load_state_checked(self.ema.module, split_prefix(tensors, "ema"), path, "EMA")
            self.ema.n_averaged.copy_(tensors["ema_updates"])
            optim_state: dict = {"state": {}, "param_groups": json.loads(metadata["optimizer_param_groups"])}
            for name, value in split_prefix(tensors, "optim").items():
                index, key = name.split(".", 1)
                optim_state["state"].setdefault(int(index), {})[key] = value
            self.optimizer.load_state_dict(optim_state)
            for group in self.optimizer.param_groups:
                group["betas"] = tuple(group["betas"])
            self.noise_rng.set_state(tensors["rng.noise"])
            self.data_rng.set_state(tensors["rng.data"])
            torch.set_rng_state(tensors["rng.torch"])
            batches = {k: (v.item() if v.dim() == 0 else v) for k, v in split_prefix(tensors, "batches").items()}
            missing = sorted(set(self.batches.state_dict()) - set(batches))
            if missing:  # resuming would silently reshuffle the data
                raise CheckpointError(f"{path}: damaged training state (lacks its data order, batches.{missing[0]})")
            if batches["num_images"] == self.num_images:
                self.batches.load_state_dict(batches)
            # else the data folder changed since the save: its new images get a fresh order
            self.history.losses = tensors["history.loss"].tolist()
        except CheckpointError:
            raise
        except KeyError as e:
            raise CheckpointError(f"{path}: damaged training state (lacks {e.args[0]})") from None
        except Exception as e:  # wrong shapes, types or JSON in the optimizer or RNG state
            raise CheckpointError(f"{path}: damaged training state ({_first_line(e)})") from None
        self.step_count = step
        self.skipped_steps = skipped
        self.weights_finite = True

    def rollback(self, path: Path, lr_factor: float = 0.5) -> int:
        """Go back to the training state saved in `path` and multiply the peak learning rate by
        `lr_factor` (kept in `config`, so it is saved and survives a resume). Skipped steps stay
        counted. Returns the step training continues from."""
        tensors, metadata = read_checkpoint(path)
        model_config, _ = model_configs(Path(path), metadata)
        if model_config != self.model_config:
            raise CheckpointError(f"{path}: holds another model than the one training")
        skipped = self.skipped_steps
        self.load_state(tensors, metadata, Path(path))
        self.skipped_steps = max(skipped, self.skipped_steps)
        self.config = replace(self.config, lr=self.config.lr * lr_factor)
        return self.step_count
