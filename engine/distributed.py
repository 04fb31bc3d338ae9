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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .threads import TrainingThread


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


class DistributedTrainingThread(TrainingThread):
    """`TrainingThread` for a DDP job, without pause.

    Before every step the ranks agree (all-reduce MAX) on whether to stop: a stop request on
    any rank, the step budget, or rank 0's clock for a time budget. Only rank 0 writes
    checkpoints (`Trainer.save`); the other ranks' saves succeed without writing."""

    _BUDGET, _STOP = 1, 2

    def __init__(self, trainer, checkpoint_path: Path, context: DistContext, **options) -> None:
        super().__init__(trainer, checkpoint_path, **options)
        self.name = "kittyterm-training-ddp"
        self.context = context

    def pause(self) -> None:
        raise RuntimeError("a distributed training run cannot pause")

    def save(self) -> bool:
        return super().save() if self.context.is_main else True

    def _stop_reason(self, elapsed: float) -> str | None:
        flag = 0
        if self._stop_requested:
            flag = self._STOP
        elif self.max_steps is not None and self.trainer.step_count >= self.max_steps:
            flag = self._BUDGET
        elif self.context.is_main and self.max_seconds is not None and elapsed >= self.max_seconds:
            flag = self._BUDGET
        flag = self.context.agree_max(flag)
        if not flag:
            return None
        return "stopped" if flag == self._STOP else "budget"
