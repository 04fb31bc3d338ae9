"""Data-parallel training (DDP): sharding, rank-0 checkpoints, and a real 2-process gloo run.

The end-to-end test launches `python -m torch.distributed.run --nproc_per_node=2 -m kittyterm
train` on the CPU (gloo) and checks that, after the same number of steps with the same global
batch, the weights equal those of a single-process run: DDP averages gradients in a different
float summation order, so equality is to ATOL, which is far below how far the weights move.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine.checkpoint import read_checkpoint
from engine.data import BatchIterator
from engine.distributed import SINGLE, DistContext, init_from_env
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet
from kittyterm.cli import app

from .conftest import two_tone_image

ATOL = 1e-5  # weights after 6 steps; measured differences are ~1e-7, the weights move by ~2e-3
SIZE = 16
SMALL = dataclasses.replace(PRESETS["tiny"], image_size=SIZE)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the 2-core CI machine is shared, and OpenMP threads spinning on a busy
    machine make these tiny steps 10x slower. (The torchrun workers get OMP_NUM_THREADS=1.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([two_tone_image(rng, SIZE) for _ in range(n)])).permute(0, 3, 1, 2).contiguous()


@dataclasses.dataclass(frozen=True)
class FakeRank(DistContext):
    """A rank of a pretend job: the trainer's sharding without a process group (no DDP wrap,
    and the loss average is this rank's own)."""

    def wrap(self, model):
        return model

    def mean(self, value):
        return value


def test_without_torchrun_everything_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = init_from_env("cpu")
    assert not context.enabled and context.is_main and context.world_size == 1 and context.device == "cpu"
    assert not SINGLE.enabled


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_batches_together_are_the_single_process_batch(world):
    data = images(10)  # 10 images, global batch 6: permutations and dropped tails included
    whole = BatchIterator(data, 6, torch.Generator().manual_seed(1), "cpu")
    shards = [BatchIterator(data, 6, torch.Generator().manual_seed(1), "cpu", shard=(r, world)) for r in range(world)]
    for _ in range(7):
        expected = next(whole)
        parts = [next(s) for s in shards]
        assert all(len(p) == 6 // world for p in parts)
        assert torch.equal(torch.cat(parts), expected)
    assert all(s.epoch == whole.epoch for s in shards)
    assert all(torch.equal(s.generator.get_state(), whole.generator.get_state()) for s in shards)


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="split evenly"):
        BatchIterator(images(4), 5, torch.Generator(), "cpu", shard=(0, 2))


def test_each_rank_trains_on_its_slice_of_the_global_images_noise_and_timesteps():
    config = TrainConfig(batch_size=8, warmup_steps=1)
    seen: dict[int, list] = {}

    def spy(trainer, key):
        forward = trainer.forward

        def recorded(x, t):
            seen.setdefault(key, []).append((x.clone(), t.clone()))
            return forward(x, t)

        trainer.forward = recorded

    single = Trainer(SMALL, images(12), config)
    ranks = [Trainer(SMALL, images(12), config, distributed=FakeRank(rank=r, world_size=2)) for r in range(2)]
    spy(single, -1)
    for r, trainer in enumerate(ranks):
        spy(trainer, r)
    single.step()
    for trainer in ranks:
        trainer.step()
    (x, t), = seen[-1]
    assert seen[0][0][0].shape[0] == 4
    assert torch.equal(torch.cat([seen[0][0][0], seen[1][0][0]]), x)
    assert torch.equal(torch.cat([seen[0][0][1], seen[1][0][1]]), t)
    # Every rank consumed the shared generators exactly as the single process did.
    for trainer in ranks:
        assert torch.equal(trainer.noise_rng.get_state(), single.noise_rng.get_state())
        assert torch.equal(trainer.data_rng.get_state(), single.data_rng.get_state())


def test_only_rank_zero_writes_checkpoints(tmp_path):
    for rank in (1, 0):
        trainer = Trainer(SMALL, images(4), TrainConfig(batch_size=2), distributed=FakeRank(rank=rank, world_size=2))
        trainer.save(tmp_path / f"rank{rank}.safetensors")
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["rank0.safetensors"]


def torchrun(home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "KITTYTERM_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kittyterm", "train", *map(str, args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_two_gloo_processes_match_one_process_with_the_same_global_batch_and_resume(synthetic_folder, tmp_path, kittyterm_home):
    common = ["--data", synthetic_folder, "--preset", "tiny", "--batch-size", 8, "--lr", 0.05, "--device", "cpu"]
    # The reference: one process, 3 steps of the global batch of 8, then on to step 6 (each
    # launch's budget is the horizon its learning rate decays to, so the launches must match).
    for steps in (3, 6):
        result = CliRunner().invoke(app, ["train", *map(str, common), "--steps", str(steps)])
        assert result.exit_code == 0, result.output
    reference, reference_meta = read_checkpoint(kittyterm_home / "data" / "runs" / "tiny-synthetic" / "checkpoint.safetensors")

    # DDP: two processes of 4 images each, 3 steps, then a resumed second launch on to step 6.
    ddp_home = tmp_path / "ddp-home"
    first = torchrun(ddp_home, *common, "--steps", 3, "--run-name", "ddp")
    assert first.stderr.count("new run ddp") == 1  # rank 1 prints nothing
    assert "2 processes (DDP, gloo)" in first.stderr
    second = torchrun(ddp_home, *common, "--steps", 6, "--run-name", "ddp")
    assert second.stderr.count("resuming run ddp at step 3") == 1
    runs = ddp_home / "data" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ddp"] and sorted(p.name for p in (runs / "ddp").iterdir()) == ["checkpoint.safetensors", "lock", "run.json", "timelapse"]
    assert sorted(p.name for p in (runs / "ddp" / "timelapse").iterdir()) == ["step-000000.png", "step-000003.png", "step-000006.png"]  # drawn by rank 0
    ddp, ddp_meta = read_checkpoint(runs / "ddp" / "checkpoint.safetensors")

    assert ddp_meta["step"] == reference_meta["step"] == "6"
    assert ddp_meta["epoch"] == reference_meta["epoch"]
    assert ddp.keys() == reference.keys()
    for name in ("rng.noise", "rng.data", "batches.order", "batches.position", "batches.images_seen", "ema_updates"):
        assert torch.equal(ddp[name], reference[name]), name
    torch.testing.assert_close(ddp["history.loss"], reference["history.loss"], rtol=0, atol=1e-5)
    for name, value in reference.items():
        if name.startswith(("model.", "ema.", "optim.")):
            torch.testing.assert_close(ddp[name], value, rtol=0, atol=ATOL, msg=name)

    # The comparison means something: training moved the weights far more than ATOL.
    torch.manual_seed(0)
    initial = UNet(PRESETS["tiny"]).state_dict()
    moved = max(float((reference[f"model.{k}"] - v).abs().max()) for k, v in initial.items())
    assert moved > 50 * ATOL


def _rollback_rank(rank: int, world: int, folder: str) -> None:
    """One rank of a 2-process gloo job: after 7 good steps, rank 1 alone produces NaN 5 times."""
    import json

    import torch.distributed as dist
    from safetensors.torch import save_file

    from engine import events
    from engine.distributed import DistributedTrainingThread

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    context = DistContext(rank, world, rank, "gloo", "cpu")
    trainer = Trainer(SMALL, images(16), TrainConfig(batch_size=8, lr=1e-3, warmup_steps=1), device="cpu", distributed=context)
    forward, calls = trainer.forward, [0]

    def poisoned(x, t):
        calls[0] += 1
        out = forward(x, t)
        return out * float("nan") if rank == 1 and 8 <= calls[0] < 13 else out

    trainer.forward = poisoned
    seen: list = []
    thread = DistributedTrainingThread(trainer, Path(folder) / "checkpoint.safetensors", context, max_steps=10, checkpoint_every_steps=3, max_consecutive_skips=5)
    thread.subscribe(seen.append)
    thread.run()
    report = {
        "rolled": [(e.from_step, e.step, e.lr) for e in seen if isinstance(e, events.RolledBack)],
        "steps": [e.step for e in seen if isinstance(e, events.TrainingStep)],
        "skipped": trainer.skipped_steps,
        "errors": [e.message for e in seen if isinstance(e, events.EngineError)],
        "finished": thread.finished_reason,
    }
    Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(Path(folder, f"rank{rank}.safetensors")))
    dist.destroy_process_group()


def test_a_nan_on_one_rank_rolls_every_rank_back_together(tmp_path):
    """DDP averages the NaN into every rank's gradient and loss, so all ranks skip the same steps,
    roll back to rank 0's checkpoint at the same moment with the same lowered learning rate, and
    end with the same weights."""
    import json

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.spawn(_rollback_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1]
    report = reports[0]
    assert report["rolled"] == [[7, 6, pytest.approx(5e-4)]] and report["skipped"] == 5
    assert report["steps"] == [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10] and report["errors"] == [] and report["finished"] == "budget"
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=ATOL, msg=name)
    _, metadata = read_checkpoint(tmp_path / "checkpoint.safetensors")
    assert metadata["step"] == "10" and json.loads(metadata["train_config"])["lr"] == pytest.approx(5e-4)
