import dataclasses
import hashlib
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoint import CheckpointError, CheckpointFile, export_weights, load_model, read_checkpoint, save_checkpoint
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


def make_images(n=12, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make_trainer(**overrides):
    config = TrainConfig(**{"batch_size": 4, "warmup_steps": 3, **overrides})
    return Trainer(SMALL, make_images(), config, device="cpu")


def optimizer_tensors(trainer):
    return {f"{index}.{key}": value for index, state in trainer.optimizer.state_dict()["state"].items() for key, value in state.items()}


def assert_same_training_state(a, b):
    """Weights, EMA, optimizer, every RNG, the data order and the history, bit for bit."""
    assert a.step_count == b.step_count and a.history.losses == b.history.losses
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    for name, tensor in a.ema.module.state_dict().items():
        assert torch.equal(tensor, b.ema.module.state_dict()[name]), f"EMA {name}"
    assert torch.equal(a.ema.updates, b.ema.updates)
    optim_a, optim_b = optimizer_tensors(a), optimizer_tensors(b)
    assert optim_a.keys() == optim_b.keys() and all(torch.equal(optim_a[k], torch.as_tensor(optim_b[k])) for k in optim_a)
    assert torch.equal(a.noise_rng.get_state(), b.noise_rng.get_state())
    assert torch.equal(a.data_rng.get_state(), b.data_rng.get_state())
    order_a, order_b = a.batches.state_dict(), b.batches.state_dict()
    assert torch.equal(order_a.pop("order"), order_b.pop("order")) and order_a == order_b


def test_resume_mid_epoch_and_mid_warmup_continues_the_same_run_exactly(tmp_path):
    """Saved at step 4 of a 10-step warm-up, one batch into an epoch of 3 batches, then resumed:
    the data order, RNGs, EMA, learning rates and losses go on as if never interrupted.
    Seen to catch: `load_state` not restoring the data order (`batches.load_state_dict` skipped)."""
    config = dict(warmup_steps=10, lr=2e-3, ema_decay=0.9)
    straight = make_trainer(**config)
    straight_results = [straight.step() for _ in range(8)]

    first = make_trainer(**config)
    for _ in range(4):
        first.step()
    assert first.batches.state_dict()["position"] == 4 and first.epoch % 1 != 0  # mid-epoch
    path = tmp_path / "run.safetensors"
    first.save(path)
    global_rng = torch.get_rng_state()
    torch.manual_seed(1234)  # global RNG state is restored from the checkpoint, not inherited
    resumed = Trainer.resume(path, make_images(), device="cpu")
    assert torch.equal(torch.get_rng_state(), global_rng)
    assert_same_training_state(resumed, first)
    resumed_results = [resumed.step() for _ in range(4)]

    assert [r.lr for r in resumed_results] == [r.lr for r in straight_results[4:]]
    assert resumed_results[-1].lr < resumed.config.lr  # all of it inside the warm-up
    assert [r.loss for r in resumed_results] == [r.loss for r in straight_results[4:]]
    assert_same_training_state(resumed, straight)
    assert not torch.equal(resumed.ema.module.conv_out.weight, resumed.model.conv_out.weight)  # a real average


def test_a_resumed_run_goes_on_decaying_its_learning_rate_to_the_same_horizon(tmp_path):
    """Saved 6 steps into an 8-step budget whose last half decays the rate, then resumed: the
    rates the device reports and the weights after the last 2 steps are the uninterrupted run's."""
    config = dict(warmup_steps=2, lr=2e-3, decay_fraction=0.5, min_lr_ratio=0.1)
    straight = make_trainer(**config)
    straight.set_horizon(8)
    straight_results = [straight.step() for _ in range(8)]

    first = make_trainer(**config)
    first.set_horizon(8)
    for _ in range(6):
        first.step()
    path = tmp_path / "run.safetensors"
    first.save(path)
    resumed = Trainer.resume(path, make_images(), device="cpu")
    assert resumed.horizon == 8
    resumed_results = [resumed.step() for _ in range(2)]

    assert [r.lr for r in resumed_results] == [r.lr for r in straight_results[6:]]
    assert resumed_results[-1].lr == pytest.approx(0.1 * resumed.config.lr)  # the floor at the last step
    assert_same_training_state(resumed, straight)


def without(path, prefix, out):
    tensors, metadata = read_checkpoint(path)
    save_checkpoint(out, {k: v for k, v in tensors.items() if not k.startswith(prefix)}, metadata)
    return out


def test_a_checkpoint_without_its_data_order_is_refused(tmp_path):
    """Resuming it would reshuffle the data where the run left off: refuse, naming what is lacking."""
    trainer = make_trainer()
    trainer.step()
    path = tmp_path / "run.safetensors"
    trainer.save(path)
    stripped = without(path, "batches.order", tmp_path / "no-order.safetensors")
    with pytest.raises(CheckpointError, match="lacks its data order, batches.order") as info:
        Trainer.resume(stripped, make_images())
    assert str(stripped) in str(info.value)
    with pytest.raises(CheckpointError, match="data order"):
        Trainer.resume(without(path, "batches.", tmp_path / "no-batches.safetensors"), make_images())

    tensors, metadata = read_checkpoint(path)
    tensors["batches.position"] = torch.tensor(99)  # beyond the saved order
    save_checkpoint(path, tensors, metadata)
    with pytest.raises(CheckpointError, match="iterator state is inconsistent"):
        Trainer.resume(path, make_images())


def test_resuming_on_a_changed_data_folder_gives_its_images_a_fresh_order(tmp_path):
    trainer = make_trainer()
    trainer.step()
    path = tmp_path / "run.safetensors"
    trainer.save(path)
    resumed = Trainer.resume(path, make_images(n=8), device="cpu")
    assert resumed.step_count == 1 and resumed.num_images == 8
    assert len(resumed.batches.state_dict()["order"]) == 0  # a new permutation at the next step
    resumed.step()
    assert sorted(resumed.batches.state_dict()["order"].tolist()) == list(range(8))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"a": torch.ones(3)}, {"k": "v"})
    save_checkpoint(path, {"a": torch.zeros(3)}, {"k": "w"})
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]
    tensors, metadata = read_checkpoint(path)
    assert torch.equal(tensors["a"], torch.zeros(3)) and metadata["k"] == "w"


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, {"a": torch.ones(3)}, {})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, {"a": torch.zeros(3)}, {})
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)[0]["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_exported_weights_rebuild_the_model(trained_tiny):
    """The fp16 export predicts what the checkpoint's EMA predicts, and an untrained model does not.
    Seen to catch: `load_model` leaving the weights unloaded."""
    ema = load_model(trained_tiny.checkpoint)
    loaded = load_model(trained_tiny.weights)
    assert loaded.config == ema.config == PRESETS["tiny"] and loaded.step == trained_tiny.steps and len(loaded.sha256) == 64
    assert all(t.dtype == torch.float16 for t in read_checkpoint(trained_tiny.weights)[0].values())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 200, 600, 950])
    with torch.no_grad():
        expected = ema.model(x, t)
        exported = loaded.model(x, t)
        fresh = UNet(PRESETS["tiny"]).eval()(x, t)
    scale = expected.abs().mean()
    assert scale > 0.3  # the network predicts something
    assert (exported - expected).abs().max() < 0.02 * scale  # fp16 storage
    assert (fresh - expected).abs().mean() > 0.5 * scale
    assert trained_tiny.weights.stat().st_size < 2 * sum(p.numel() for p in loaded.model.parameters()) + 64 * 1024


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a readable safetensors"),
        (os.urandom(4096), "not a readable safetensors"),
        (pickle.dumps({"model": [1, 2, 3]}), "pickle"),
    ],
)
def test_damaged_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    make_trainer().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(path)


def test_torch_pickle_is_never_unpickled(tmp_path, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"x": Boom()}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_wrong_shapes_and_foreign_files_are_named(tmp_path):
    trainer = make_trainer()
    state = trainer.model.state_dict()
    other = dataclasses.replace(SMALL, base_channels=16)
    path = tmp_path / "mismatch.safetensors"
    export_weights(path, state, other, trainer.schedule.config)
    with pytest.raises(CheckpointError, match="shape"):
        load_model(path)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a kittyterm checkpoint"):
        load_model(foreign)

    no_config = tmp_path / "noconfig.safetensors"
    save_checkpoint(no_config, {"ema.w": torch.ones(2)}, {})
    with pytest.raises(CheckpointError, match="model_config"):
        load_model(no_config)


def test_weights_only_file_cannot_be_resumed(tmp_path):
    trainer = make_trainer()
    path = tmp_path / "weights.safetensors"
    export_weights(path, trainer.model.state_dict(), SMALL, trainer.schedule.config)
    with pytest.raises(CheckpointError, match="weights only"):
        Trainer.resume(path, make_images())


def test_checkpoint_metadata_is_json_config(tmp_path):
    path = tmp_path / "c.safetensors"
    make_trainer().save(path)
    _, metadata = read_checkpoint(path)
    assert json.loads(metadata["model_config"])["image_size"] == 16
    assert json.loads(metadata["train_config"])["batch_size"] == 4


def bytes_read_by_this_process() -> int:
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read through Linux's /proc/self/io")
def test_the_app_reads_a_runs_history_without_reading_its_weights(tmp_path):
    """The app shows a run's loss curve at launch; a kitty-64 training checkpoint is 100 MB."""
    from kittyterm.session.training import read_history

    path = tmp_path / "run.safetensors"
    weights = torch.arange(4_000_000, dtype=torch.float32)  # 16 MB
    save_checkpoint(path, {"model.w": weights, "history.loss": torch.tensor([3.0, 2.0, 1.0])}, {"step": "3", "epoch": "0.5"})
    before = bytes_read_by_this_process()
    losses, step, _, epoch = read_history(path)
    assert bytes_read_by_this_process() - before < 2**20
    assert (losses, step, epoch) == ([3.0, 2.0, 1.0], 3, 0.5)


def test_one_tensor_read_alone_matches_the_whole_read_in_any_order(tmp_path):
    path = tmp_path / "run.safetensors"
    tensors = {"a": torch.randn(5, 3), "b": torch.arange(7, dtype=torch.int64), "c": torch.zeros(0), "d": torch.randn(2).half()}
    save_checkpoint(path, tensors, {})
    with CheckpointFile(path) as checkpoint:
        alone = {name: checkpoint.tensor(name) for name in ("d", "b", "c", "a")}
        assert checkpoint.tensor("missing") is None
        read, digest = checkpoint.read()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    for name, tensor in tensors.items():
        assert torch.equal(alone[name], tensor) and torch.equal(read[name], tensor)
