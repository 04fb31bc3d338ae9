"""Data-parallel training with PyTorch DistributedDataParallel (DDP), launched by torchrun.

    torchrun --standalone --nproc_per_node=K -m kittyterm train --data DIR ...

torchrun starts K processes and tells each its place through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); `init_from_env` joins the process group (NCCL on
GPUs, gloo on the CPU) and `DistContext.wrap` wraps the U-Net in
`torch.nn.parallel.DistributedDataParallel`, which all-reduces (averages) the gradients during
`backward()`. Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op.

How a step is split so that K processes with the same seed compute the same step as one
process would with the same *global* batch (`TrainConfig.batch_size` is the global batch):

- every rank draws the same global permutation and flips from the shared data generator and
  keeps its contiguous slice (`BatchIterator(shard=(rank, world))`), so the union over the
  ranks is exactly the single-process batch;
- every rank draws the global batch's timesteps and noise from the shared noise generator
  and keeps its slice, so noise matches image for image;
- each rank's loss is the mean over its equal-sized slice and DDP averages the gradients, which
  equals the gradient of the mean loss over the global batch; clipping, AdamW and the EMA then
  act on identical gradients, so model, EMA, optimizer, RNG and loss history (the reported
  loss is all-reduced) stay identical on every rank, up to float summation order.

Checkpoints are written by rank 0 only (`Trainer.save` is a no-op on the others); every rank
reads the same checkpoint to resume. When to stop (step or time budget, Ctrl+C / SIGTERM) is
agreed on every step by a one-element all-reduce, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import events


class DistributedError(RuntimeError):
    """The torchrun environment cannot be used (e.g. more processes than GPUs)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job; the default is a single, non-distributed process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` wrapped in DistributedDataParallel (or unchanged when not distributed)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        cuda = torch.device(self.device).type == "cuda"
        return DistributedDataParallel(
            model,
            device_ids=[self.local_rank] if cuda else None,
            output_device=self.local_rank if cuda else None,
            gradient_as_bucket_view=True,
        )

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a tensor over the ranks (gloo has no AVG, so SUM / K)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def agree_max(self, value: int) -> int:
        """The largest of every rank's `value`: a decision that all ranks then share."""
        if not self.enabled:
            return value
        flag = torch.tensor([value], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


SINGLE = DistContext()


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes in the environment (NCCL for `cuda`, gloo
    otherwise) and pin this process to GPU LOCAL_RANK. Without torchrun, a single-process
    context with `device` unchanged. Safe to call twice (the group is joined once)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise DistributedError("--device cuda was asked for but no CUDA GPU is available")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {local_rank} has no GPU: {torch.cuda.device_count()} GPUs for "
                f"{os.environ.get('LOCAL_WORLD_SIZE', '?')} processes per node"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device(device)} if cuda else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size, **kwargs)
        atexit.register(shutdown)
    return DistContext(rank, world_size, local_rank, backend, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DistributedTrainingThread(threading.Thread):
    """`TrainingThread`'s interface and events for a DDP job, without pause.

    Before every step the ranks agree (all-reduce MAX) on whether to stop: a stop request on
    any rank, the step budget, or rank 0's clock for a time budget. Only rank 0's clock decides
    when to checkpoint, and only rank 0 writes (`Trainer.save`)."""

    _BUDGET, _STOP = 1, 2

    def __init__(
        self,
        trainer,
        checkpoint_path: Path,
        context: DistContext,
        max_steps: int | None = None,
        max_seconds: float | None = None,
        checkpoint_every_steps: int = 1000,
        checkpoint_every_seconds: float = 120.0,
    ) -> None:
        super().__init__(name="kittyterm-training-ddp", daemon=True)
        self.trainer = trainer
        self.checkpoint_path = Path(checkpoint_path)
        self.context = context
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.checkpoint_every_steps = checkpoint_every_steps
        self.checkpoint_every_seconds = checkpoint_every_seconds
        self.emitter = events.EventEmitter()
        self._stop_requested = threading.Event()
        self.finished_reason: str | None = None

    def subscribe(self, subscriber: events.Subscriber):
        return self.emitter.subscribe(subscriber)

    @property
    def paused(self) -> bool:
        return False

    def stop(self, timeout: float | None = None) -> None:
        self._stop_requested.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def save(self) -> bool:
        if not self.context.is_main:
            return True
        try:
            self.trainer.save(self.checkpoint_path)
        except Exception as error:  # a failed save must never end the run
            from .threads import describe_error

            self.emitter.emit(events.EngineError("training", f"checkpoint not saved: {describe_error(error)}"))
            return False
        self.emitter.emit(events.CheckpointSaved(self.checkpoint_path, self.trainer.step_count))
        return True

    def _stop_flag(self, elapsed: float) -> int:
        if self._stop_requested.is_set():
            return self._STOP
        if self.max_steps is not None and self.trainer.step_count >= self.max_steps:
            return self._BUDGET
        if self.context.is_main and self.max_seconds is not None and elapsed >= self.max_seconds:
            return self._BUDGET
        return 0

    def run(self) -> None:
        trainer, emit = self.trainer, self.emitter.emit
        emit(events.TrainingStarted(trainer.step_count, trainer.num_images, tuple(trainer.history.losses)))
        start_step = trainer.step_count
        elapsed = 0.0
        recent: deque[tuple[float, int]] = deque(maxlen=20)
        last_save_step, last_save_time = trainer.step_count, time.monotonic()
        unsaved = False
        reason = "stopped"
        try:
            while True:
                flag = self.context.agree_max(self._stop_flag(elapsed))
                if flag:
                    reason = "stopped" if flag == self._STOP else "budget"
                    break
                began = time.perf_counter()
                result = trainer.step()
                took = time.perf_counter() - began
                elapsed += took
                recent.append((took, trainer.config.batch_size))
                if result.skipped:
                    emit(events.StepSkipped(result.step, "loss or gradient not finite", trainer.skipped_steps))
                    continue
                unsaved = True
                speed = sum(n for _, n in recent) / max(sum(s for s, _ in recent), 1e-9)
                emit(events.TrainingStep(result.step, result.loss, result.lr, trainer.epoch, speed, elapsed))
                now = time.monotonic()
                if (
                    trainer.step_count - last_save_step >= self.checkpoint_every_steps
                    or now - last_save_time >= self.checkpoint_every_seconds
                ):
                    if self.save():
                        unsaved = False
                    last_save_step, last_save_time = trainer.step_count, now
        except Exception as error:
            from .threads import describe_error

            emit(events.EngineError("training", describe_error(error)))
            reason = "error"
        if unsaved or trainer.step_count == start_step == 0:
            self.save()
        self.finished_reason = reason
        emit(events.TrainingFinished(trainer.step_count, reason))
