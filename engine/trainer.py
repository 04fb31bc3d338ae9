"""The training loop: one `step()` at a time, with no host round trip, saving and resuming exactly.

Loss: L = E_{t,x0,ε} w(t) ‖y − f_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖² where the target y is ε (Ho et al.
2020, eq. 14) or v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022), as `ScheduleConfig.prediction`
says, with the Min-SNR-γ weight (Hang et al. 2023, eq. 9 and §3.4): min(SNR, γ)/SNR for ε,
min(SNR, γ)/(SNR + 1) for v, when γ > 0.

A step never waits for the device: whether it is applied (finite loss, gradient and resulting
weights) is decided on the device, the AdamW update is skipped through the fused optimizer's
`found_inf` input, the EMA update through a select, and the step counter, learning rate and EMA
decay live in device tensors. Loss, learning rate and gradient norm are logged in device memory
and read back only when asked (`read_metrics`, `step_count`, `history`, a `StepResult` field),
so a caller that reads a few times a second keeps the device busy. With `cuda_graph` the whole
step (forward, backward, clipping, AdamW, EMA) is captured once in a CUDA graph and replayed.
The trainer knows nothing of who watches it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .checkpoint import (
    CheckpointError,
    CheckpointFile,
    _first_line,
    check_state_fits,
    first_non_finite,
    load_state_checked,
    meta_model,
    model_configs,
    save_checkpoint,
    split_prefix,
)
from .data import BatchIterator
from .ema import EMA, chosen_decay
from .schedules import NoiseSchedule, ScheduleConfig
from .unet import PRESETS, UNet, UNetConfig

GRAPH_WARMUP_STEPS = 3  # eager steps (on a side stream) before the step is captured
METRICS_PER_READ = 256  # steps logged on the device before the log is moved to the host anyway


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 500
    decay_fraction: float = 0.2  # share of a known budget over which the rate decays to its floor
    min_lr_ratio: float = 0.01  # the floor, as a share of the peak rate
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # cap of the warm-up EMA
    ema_gamma: float = 0.0  # > 0: the power-function EMA with this γ instead (engine.ema.power_decay)
    min_snr_gamma: float = 5.0
    seed: int = 0
    compile: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("learning rate must be positive and finite")
        if not 0 <= self.decay_fraction < 1:
            raise ValueError("decay_fraction must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1]")
        if not (self.ema_gamma >= 0 and math.isfinite(self.ema_gamma)):
            raise ValueError("ema_gamma must be a finite number ≥ 0")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def learning_rate(step: torch.Tensor, peak: torch.Tensor, config: TrainConfig, horizon: torch.Tensor) -> torch.Tensor:
    """Warmup–stable–decay (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations", §3): linear warm-up to `peak` over `warmup_steps`, flat,
    then over the last `decay_fraction` of a run of `horizon` steps a (1 − √p) cool-down to
    `min_lr_ratio` × peak, reached at the last step. horizon = ∞: open-ended, no decay.
    Float64 tensors in and out, on any device."""
    warmup = ((step + 1) / max(1, config.warmup_steps)).clamp(max=1)
    start = horizon * (1 - config.decay_fraction)
    progress = ((step + 1 - start) / (horizon - start)).nan_to_num(0.0).clamp(0, 1)  # ∞/∞ → 0
    floor = config.min_lr_ratio
    return peak * warmup * (floor + (1 - floor) * (1 - progress.sqrt()))


@dataclass(frozen=True)
class StepMetrics:
    """What one call of `Trainer.step()` did, read back from the device."""

    step: int  # applied steps after it
    loss: float  # the batch's mean squared error (over every rank under DDP)
    lr: float
    grad_norm: float
    skipped: bool  # loss, gradient or the updated weights were not finite: nothing was changed
    weights_finite: bool  # False: the update itself made a weight NaN/inf (roll back)


class StepResult:
    """The lazy result of `Trainer.step()`: reading a field waits for that step to finish."""

    def __init__(self, record: torch.Tensor) -> None:
        self._record = record
        self._metrics: StepMetrics | None = None

    @property
    def metrics(self) -> StepMetrics:
        if self._metrics is None:
            self._metrics = metrics_of(self._record.tolist())
        return self._metrics

    step = property(lambda self: self.metrics.step)
    loss = property(lambda self: self.metrics.loss)
    lr = property(lambda self: self.metrics.lr)
    grad_norm = property(lambda self: self.metrics.grad_norm)
    skipped = property(lambda self: self.metrics.skipped)


def metrics_of(row: list[float]) -> StepMetrics:
    step, loss, lr, grad_norm, applied, weights_finite = row
    return StepMetrics(int(step), loss, lr, grad_norm, not applied, bool(weights_finite))


@dataclass
class History:
    """The per-step training loss, kept so a resumed run continues its curve."""

    losses: list[float] = field(default_factory=list)

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(self.losses, dtype=torch.float32)


def read_bounded(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(tensors, metadata, sha256) of a checkpoint whose header and configs were checked before
    its body was read: a file claiming a network beyond the memory budget is refused unread."""
    with CheckpointFile(path) as checkpoint:
        model_config, _ = model_configs(Path(path), checkpoint.metadata)
        meta_model(model_config, Path(path))
        tensors, sha256 = checkpoint.read()
        return tensors, checkpoint.metadata, sha256


def preset_name(config: UNetConfig) -> str:
    return next((f"{name} model" for name, preset in PRESETS.items() if preset == config), f"{config.image_size} px model of another shape")


class Trainer:
    """Owns model, EMA, optimizer, RNGs and batches; `step()` trains on one batch."""

    def __init__(
        self,
        model_config: UNetConfig,
        images: torch.Tensor,
        train_config: TrainConfig | None = None,
        schedule_config: ScheduleConfig | None = None,
        device: str | torch.device = "cpu",
        distributed=None,
    ) -> None:
        self.model_config = model_config
        self.config = train_config or TrainConfig()
        self.schedule = NoiseSchedule(schedule_config or ScheduleConfig())
        self.device = torch.device(device)  # the front ends choose it (kittyterm.jobs.devices)
        # An `engine.distributed.DistContext` when run under torchrun (DDP); None for one process.
        self.distributed = distributed if distributed is not None and distributed.enabled else None
        cuda = self.device.type == "cuda"
        if images.shape[-1] != model_config.image_size:
            raise ValueError(f"images are {images.shape[-1]} px but the model wants {model_config.image_size} px")
        if self.config.cuda_graph and (not cuda or self.distributed):
            raise ValueError("CUDA graphs need one CUDA device (no DDP)")

        torch.manual_seed(self.config.seed)
        self.model = UNet(model_config).to(self.device)
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, chosen_decay(self.config.ema_gamma, self.config.ema_decay))
        # The schedule's inputs live on the device, so the step (and a captured graph) reads them there.
        scalar = dict(dtype=torch.float64, device=self.device)
        self._step = torch.zeros((), **scalar)  # applied steps
        self._peak_lr = torch.tensor(self.config.lr, **scalar)
        self._horizon = torch.tensor(math.inf, **scalar)  # steps in the run, ∞ while open-ended
        self._horizon_steps = math.inf
        self._lr = torch.tensor(self.config.lr, dtype=torch.float32, device=self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self._lr, betas=self.config.betas, weight_decay=self.config.weight_decay, fused=True
        )
        self.noise_rng = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.data_rng = torch.Generator().manual_seed(self.config.seed + 1)
        shard = self.distributed.shard() if self.distributed else (0, 1)
        if cuda:  # a few hundred MB at most: batches are then gathered on the GPU, not copied per step
            images = images.to(self.device)
        self.batches = BatchIterator(images, self.config.batch_size, self.data_rng, self.device, shard=shard)
        self.alphas_cumprod = self.schedule.alphas_cumprod.to(self.device, torch.float32)
        # Autocast's weight-cast cache would hold tensors from outside a captured graph.
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not self.config.cuda_graph)
            if cuda
            else torch.autocast("cpu", enabled=False)
        )
        module = self.distributed.wrap(self.model) if self.distributed else self.model
        self._eager_forward = module
        self.forward = torch.compile(module) if self.config.compile else module
        self.compile_failure: str | None = None  # why torch.compile was given up, if it was
        self.graph_failure: str | None = None  # why the CUDA graph was given up, if it was
        self._graph = None  # (graph, static x0, t, noise, record) once captured
        self.init_origin: dict | None = None  # where `initialised_from` took the weights
        # Host-side view of the device state, brought up to date by `_read_log`.
        self._steps = 0
        self._skipped = 0
        self._weights_finite = True
        self._history = History()
        self._log: list[torch.Tensor] = []  # per-step records not yet read back
        self._unread: list[StepMetrics] = []
        self.steps_attempted = 0

    # ---------------------------------------------------------------- host views (read back lazily)

    @property
    def step_count(self) -> int:
        """Applied steps (waits for the device)."""
        self._read_log()
        return self._steps

    @property
    def step_count_bound(self) -> int:
        """Applied steps at most, known without waiting for the device: those read back so far
        plus every step taken since."""
        return self._steps + len(self._log)

    @property
    def skipped_steps(self) -> int:
        self._read_log()
        return self._skipped

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._read_log()
        self._skipped = value

    @property
    def weights_finite(self) -> bool:
        """False after an update left NaN/inf in the weights: roll back."""
        self._read_log()
        return self._weights_finite

    @property
    def history(self) -> History:
        self._read_log()
        return self._history

    @property
    def num_images(self) -> int:
        return len(self.batches.images)

    @property
    def epoch(self) -> float:
        return self.batches.epoch

    def read_metrics(self) -> list[StepMetrics]:
        """What every `step()` since the previous call did, oldest first (one device read)."""
        self._read_log()
        unread, self._unread = self._unread, []
        return unread

    def _read_log(self) -> None:
        if not self._log:
            return
        rows = torch.stack(self._log).tolist()
        self._log = []
        for row in rows:
            metrics = metrics_of(row)
            self._unread.append(metrics)
            if metrics.skipped:
                self._skipped += 1
                self._weights_finite = self._weights_finite and metrics.weights_finite
            else:
                self._steps = metrics.step
                self._history.losses.append(metrics.loss)

    # ---------------------------------------------------------------- the schedule

    def learning_rate(self, step: int) -> float:
        """The learning rate of step `step` (0-based) in the current run."""
        cpu = dict(dtype=torch.float64)
        return float(learning_rate(torch.tensor(step, **cpu), torch.tensor(self.config.lr, **cpu), self.config, torch.tensor(self._horizon_steps, **cpu)))

    @property
    def horizon(self) -> float:
        return self._horizon_steps

    def set_horizon(self, steps: float) -> None:
        """The run ends after `steps` applied steps (∞: open-ended), so the learning rate
        decays over its last `decay_fraction`. A training loop with a budget calls this; with a
        time budget it calls it again as its estimate of the total steps improves."""
        if not steps > 0:
            raise ValueError("the horizon must be a positive number of steps")
        self._horizon_steps = float(steps)
        self._horizon.fill_(steps)

    def cool_down_end(self) -> int:
        """The last step of a cool-down started now: the decay takes `decay_fraction` of the
        whole run (a quarter of the steps so far for 0.2)."""
        steps = self.step_count
        return max(steps + 1, math.ceil(steps / (1 - self.config.decay_fraction)))

    def cool_down(self) -> int:
        """End an open-ended run now: decay the learning rate from here to its floor at
        `cool_down_end()`. Returns that step."""
        end = self.cool_down_end()
        self.set_horizon(end)
        return end

    def _sync_peak_lr(self) -> None:
        self._peak_lr.fill_(self.config.lr)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        gamma = self.config.min_snr_gamma
        if gamma <= 0:
            return torch.ones_like(t, dtype=torch.float32)
        a = self.alphas_cumprod[t]
        snr = a / (1 - a)
        return snr.clamp(max=gamma) / (snr + 1 if self.schedule.config.prediction == "v" else snr)

    # ---------------------------------------------------------------- the step

    def step(self) -> StepResult:
        """One optimisation step; a non-finite loss, gradient or update changes nothing."""
        self.model.train()
        x0 = next(self.batches)
        if self.device.type == "cuda":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        # Draw the global batch's t and noise on every rank and keep this rank's slice (DDP).
        n, local = self.batches.batch_size, self.batches.rank_slice
        t = torch.randint(0, self.schedule.num_steps, (n,), generator=self.noise_rng, device=self.device)[local]
        noise = torch.randn((n, *x0.shape[1:]), generator=self.noise_rng, device=self.device)[local]
        if self.config.cuda_graph and self.graph_failure is None:
            record = self._graphed_step(x0, t, noise)
        else:
            record = self._train_step(x0, t, noise)
        self.steps_attempted += 1
        self._log.append(record)
        if len(self._log) >= METRICS_PER_READ:
            self._read_log()
        return StepResult(record)

    def _train_step(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The step's device work, free of host round trips (so it can be captured): returns
        [step, loss, lr, grad norm, applied, weights finite] as a float64 vector."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if self.schedule.config.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        with self.autocast:
            prediction = self._predict(x_t, t)
        per_image = (prediction.float() - target).pow(2).mean(dim=(1, 2, 3))
        loss = (self.loss_weights(t) * per_image).mean()
        lr = learning_rate(self._step, self._peak_lr, self.config, self._horizon)
        self._lr.copy_(lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)
        mse = per_image.detach().mean()
        if self.distributed:
            mse = self.distributed.mean(mse)
        finite = torch.isfinite(mse) & torch.isfinite(grad_norm)
        self.optimizer.found_inf = (~finite).float()  # fused AdamW leaves weights and state as they are
        self.optimizer.step()
        weights = self.ema.flatten(self.model)
        weights_finite = torch.isfinite(weights).all()  # never let a NaN reach the EMA (nor a checkpoint)
        applied = finite & weights_finite
        self.ema.update(self.model, applied, weights)
        self._step.add_(applied.to(torch.float64))
        return torch.stack([self._step, mse.double(), lr, grad_norm.double(), applied.double(), weights_finite.double()])

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f_θ(x_t, t); if the compiled model fails (compilation happens on first use), train
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

    def _graphed_step(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The step replayed from a CUDA graph (captured after a few eager steps on a side
        stream, as torch.cuda.graph requires); the inputs are copied into static buffers. If
        capture fails, training goes on eagerly and `graph_failure` says why."""
        if self._graph is None:
            if self.steps_attempted < GRAPH_WARMUP_STEPS:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    record = self._train_step(x0, t, noise)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return record
            try:
                static = (x0.clone(), t.clone(), noise.clone())
                graph = torch.cuda.CUDAGraph()
                torch.cuda.synchronize(self.device)
                with torch.cuda.graph(graph):
                    output = self._train_step(*static)
                self._graph = (graph, *static, output)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:
                self.graph_failure = _first_line(error)
                self.optimizer.zero_grad(set_to_none=True)
                return self._train_step(x0, t, noise)
        graph, static_x0, static_t, static_noise, output = self._graph
        static_x0.copy_(x0)
        static_t.copy_(t)
        static_noise.copy_(noise)
        graph.replay()
        return output.clone()

    # ---------------------------------------------------------------- checkpoints

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        tensors["ema_updates"] = self.ema.updates.detach().to(torch.int64)
        optim_state = self.optimizer.state_dict()
        for index, state in optim_state["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        groups = [{k: (float(v) if torch.is_tensor(v) else v) for k, v in group.items()} for group in optim_state["param_groups"]]
        tensors["rng.noise"] = self.noise_rng.get_state()
        tensors["rng.data"] = self.data_rng.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors.update({f"batches.{k}": torch.as_tensor(v) for k, v in self.batches.state_dict().items()})
        tensors["history.loss"] = self.history.to_tensor()
        metadata = {
            "model_config": json.dumps(self.model_config.to_dict()),
            "schedule_config": json.dumps(asdict(self.schedule.config)),
            "train_config": json.dumps(asdict(self.config)),
            "optimizer_param_groups": json.dumps(groups),
            "step": str(self.step_count),
            "skipped_steps": str(self.skipped_steps),
            "horizon": str(self.horizon),
            "epoch": f"{self.epoch:.4f}",
            "images": str(self.num_images),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.init_origin is not None:
            metadata["init_from"] = json.dumps(self.init_origin)
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
        device: str | torch.device = "cpu",
        train_overrides: dict | None = None,
        distributed=None,
    ) -> "Trainer":
        """Rebuild a trainer from a training checkpoint so the run continues where it stopped."""
        tensors, metadata, _ = read_bounded(path)
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

    @classmethod
    def initialised_from(
        cls,
        path: Path,
        images: torch.Tensor,
        train_config: TrainConfig | None = None,
        device: str | torch.device = "cpu",
        model_config: UNetConfig | None = None,
        distributed=None,
    ) -> "Trainer":
        """A new run starting from the weights in `path` (exported EMA weights in any float
        dtype, or a training checkpoint, whose EMA is taken): fresh optimizer state, step 0 and
        warm-up, the EMA starting from the same weights, the network and noise schedule of the
        file. `model_config`, when given, must be the file's. The origin is kept in
        `init_origin` and in every checkpoint of the run."""
        path = Path(path)
        tensors, metadata, sha256 = read_bounded(path)
        file_config, schedule_config = model_configs(path, metadata)
        if model_config is not None and model_config != file_config:
            raise CheckpointError(f"{path}: holds a {preset_name(file_config)}, not the {preset_name(model_config)} asked for")
        ema = split_prefix(tensors, "ema")
        state, what = (ema, "EMA") if ema else (split_prefix(tensors, "model"), "model")
        if not state:
            raise CheckpointError(f"{path}: holds no model weights")
        check_state_fits(file_config, state, path, what)
        if images.shape[-1] != file_config.image_size:
            raise CheckpointError(f"{path}: holds a model for {file_config.image_size} px images, not {images.shape[-1]} px")
        trainer = cls(file_config, images, train_config, schedule_config, device, distributed)
        load_state_checked(trainer.model, state, path, what)
        trainer.ema.copy_from(trainer.model)
        trainer.init_origin = {"path": str(path), "sha256": sha256, "step": int(metadata.get("step", 0))}
        return trainer

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
        """Restore weights, EMA, optimizer, RNGs, data order, history and step from a checkpoint
        read from `path`; any damage is a `CheckpointError` naming `path`."""
        self._read_log()  # what the device did before is replaced, not read later
        self._unread = []
        try:
            bad = first_non_finite(split_prefix(tensors, "optim"))
            if bad is not None:
                raise CheckpointError(f"{path}: optimizer state optim.{bad} holds NaN or infinite values")
            step, skipped = int(metadata["step"]), int(metadata.get("skipped_steps", 0))
            horizon = float(metadata.get("horizon", math.inf))
            load_state_checked(self.model, split_prefix(tensors, "model"), path, "model")
            load_state_checked(self.ema.module, split_prefix(tensors, "ema"), path, "EMA")
            self.ema.updates.copy_(tensors["ema_updates"])
            optim_state: dict = {"state": {}, "param_groups": json.loads(metadata["optimizer_param_groups"])}
            for name, value in split_prefix(tensors, "optim").items():
                index, key = name.split(".", 1)
                optim_state["state"].setdefault(int(index), {})[key] = value
            self.optimizer.load_state_dict(optim_state)
            for group in self.optimizer.param_groups:
                group["betas"] = tuple(group["betas"])
                group["lr"] = self._lr  # the step writes the scheduled rate here, on the device
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
            losses = tensors["history.loss"].tolist()
            origin = json.loads(metadata["init_from"]) if "init_from" in metadata else None
        except CheckpointError:
            raise
        except KeyError as e:
            raise CheckpointError(f"{path}: damaged training state (lacks {e.args[0]})") from None
        except Exception as e:  # wrong shapes, types or JSON in the optimizer or RNG state
            raise CheckpointError(f"{path}: damaged training state ({_first_line(e)})") from None
        self._history.losses = losses
        self._steps, self._skipped, self._weights_finite = step, skipped, True
        self._step.fill_(step)
        self._horizon.fill_(horizon)
        self._horizon_steps = horizon
        self._sync_peak_lr()
        self.init_origin = origin

    def rollback(self, path: Path, lr_factor: float = 0.5) -> int:
        """Go back to the training state saved in `path` and multiply the peak learning rate by
        `lr_factor` (kept in `config`, so it is saved and survives a resume). Skipped steps stay
        counted. Returns the step training continues from."""
        tensors, metadata, _ = read_bounded(path)
        model_config, _ = model_configs(Path(path), metadata)
        if model_config != self.model_config:
            raise CheckpointError(f"{path}: holds another model than the one training")
        skipped = self.skipped_steps
        self.load_state(tensors, metadata, Path(path))
        self._skipped = max(skipped, self._skipped)
        self.lower_learning_rate(lr_factor)
        return self._steps

    def lower_learning_rate(self, factor: float) -> None:
        """Multiply the peak learning rate by `factor` (kept in `config`: saved with the run)."""
        self.config = replace(self.config, lr=self.config.lr * factor)
        self._sync_peak_lr()
