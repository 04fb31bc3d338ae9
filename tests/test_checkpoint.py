import dataclasses
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoint import CheckpointError, export_weights, load_model, read_checkpoint, save_checkpoint
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


def make_images(n=12, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make_trainer(**overrides):
    config = TrainConfig(batch_size=4, warmup_steps=3, **overrides)
    return Trainer(SMALL, make_images(), config, device="cpu")


def test_resume_continues_the_same_run_exactly(tmp_path):
    straight = make_trainer()
    for _ in range(6):
        straight.step()

    first = make_trainer()
    for _ in range(3):
        first.step()
    path = tmp_path / "run.safetensors"
    first.save(path)
    torch.manual_seed(1234)  # global RNG state is restored from the checkpoint, not inherited
    resumed = Trainer.resume(path, make_images(), device="cpu")
    assert resumed.step_count == 3
    for _ in range(3):
        resumed.step()

    assert resumed.step_count == straight.step_count == 6
    assert resumed.history.losses == straight.history.losses
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b)


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


def test_exported_weights_rebuild_the_model(tmp_path):
    trainer = make_trainer()
    trainer.step()
    path = tmp_path / "weights.safetensors"
    export_weights(path, trainer.ema.module.state_dict(), SMALL, trainer.schedule.config, {"step": "1"})
    loaded = load_model(path)
    assert loaded.config == SMALL and loaded.step == 1 and len(loaded.sha256) == 64
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5])
    with torch.no_grad():
        expected = trainer.ema.module(x, t)
    assert torch.allclose(loaded.model(x, t), expected, atol=1e-2)  # fp16 storage
    assert path.stat().st_size < 2 * sum(p.numel() for p in loaded.model.parameters()) + 64 * 1024


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
