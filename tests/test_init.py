"""`Trainer.initialised_from`: a new run that starts from exported weights or a checkpoint."""

import dataclasses
import hashlib
import json

import pytest
import torch

from engine.checkpoint import CheckpointError, export_weights, read_checkpoint, split_prefix
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)
CONFIG = TrainConfig(batch_size=4, lr=1e-3, warmup_steps=4)


def images(n=12, size=16):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny-preset fp16 EMA export, as `kittyterm export` writes the shipped model, of a model
    trained a little at a real learning rate (so its weights are far from a fresh one's)."""
    trainer = Trainer(SMALL, images(), TrainConfig(batch_size=4, lr=3e-3, warmup_steps=1, ema_decay=0.5))
    for _ in range(8):
        trainer.step()
    path = tmp_path_factory.mktemp("export") / "tiny.safetensors"
    export_weights(path, trainer.ema.module.state_dict(), SMALL, trainer.schedule.config, {"step": "8"})
    return path


def fp16_weights(path):
    return {k: v.float() for k, v in split_prefix(read_checkpoint(path)[0], "ema").items()}


def test_the_first_checkpoint_is_the_init_itself(exported, tmp_path):
    trainer = Trainer.initialised_from(exported, images(), CONFIG)
    path = tmp_path / "run.safetensors"
    trainer.save(path)
    tensors, metadata = read_checkpoint(path)
    weights = fp16_weights(exported)
    fresh = Trainer(SMALL, images(), CONFIG).model.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in weights.items())  # not what a new run starts from
    for prefix in ("model", "ema"):
        saved = split_prefix(tensors, prefix)
        assert saved.keys() == weights.keys()
        assert all(torch.equal(saved[k], v) for k, v in weights.items()), prefix
    assert metadata["step"] == "0" and int(tensors["ema_updates"]) == 0 and len(tensors["history.loss"]) == 0
    assert not any(name.startswith("optim.") for name in tensors)  # fresh optimizer: no state yet
    origin = json.loads(metadata["init_from"])
    assert origin == {"path": str(exported), "sha256": hashlib.sha256(exported.read_bytes()).hexdigest(), "step": 8}


def test_training_from_the_init_warms_up_afresh_and_moves_the_weights(exported):
    trainer = Trainer.initialised_from(exported, images(), CONFIG)
    first = trainer.step()
    assert first.lr == pytest.approx(CONFIG.lr / CONFIG.warmup_steps) and trainer.step_count == 1
    assert all(float(s["step"]) == 1 for s in trainer.optimizer.state.values())
    for _ in range(3):
        trainer.step()
    weights = fp16_weights(exported)
    moved = max(float((p - weights[k]).abs().max()) for k, p in trainer.model.state_dict().items())
    assert moved > 1e-3
    # The EMA starts from the init, then follows the training weights.
    assert any(not torch.equal(trainer.ema.module.state_dict()[k], v) for k, v in weights.items())


def test_a_run_started_from_an_init_saves_and_resumes_exactly(exported, tmp_path):
    straight = Trainer.initialised_from(exported, images(), CONFIG)
    for _ in range(5):
        straight.step()
    first = Trainer.initialised_from(exported, images(), CONFIG)
    for _ in range(2):
        first.step()
    path = tmp_path / "run.safetensors"
    first.save(path)
    resumed = Trainer.resume(path, images())
    for _ in range(3):
        resumed.step()
    assert resumed.step_count == 5 and resumed.history.losses == straight.history.losses
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.init_origin == straight.init_origin and resumed.init_origin["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    resumed.save(path)
    assert json.loads(read_checkpoint(path)[1]["init_from"])["path"] == str(exported)


def test_a_training_checkpoint_gives_its_ema(tmp_path):
    source = Trainer(SMALL, images(), TrainConfig(batch_size=4, lr=3e-3, warmup_steps=1, ema_decay=0.5))
    for _ in range(4):
        source.step()
    path = tmp_path / "checkpoint.safetensors"
    source.save(path)
    trainer = Trainer.initialised_from(path, images(), CONFIG)
    for name, value in source.ema.module.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value) and torch.equal(trainer.ema.module.state_dict()[name], value)
    assert trainer.step_count == 0 and trainer.init_origin["step"] == 4


def one_line_error(call) -> str:
    with pytest.raises(CheckpointError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_mismatched_preset_is_one_clear_line(exported):
    other = dataclasses.replace(SMALL, base_channels=16)
    message = one_line_error(lambda: Trainer.initialised_from(exported, images(), CONFIG, model_config=other))
    assert str(exported) in message and "16 px model of another shape" in message
    message = one_line_error(lambda: Trainer.initialised_from(exported, images(size=32), CONFIG))
    assert "16 px" in message and "32 px" in message


def test_a_shipped_model_of_another_preset_is_named(tmp_path):
    path = tmp_path / "tiny.safetensors"
    tiny = Trainer(PRESETS["tiny"], images(size=32), CONFIG)
    export_weights(path, tiny.ema.module.state_dict(), PRESETS["tiny"], tiny.schedule.config)
    message = one_line_error(lambda: Trainer.initialised_from(path, images(size=64), CONFIG, model_config=PRESETS["kitty-64"]))
    assert "holds a tiny model, not the kitty-64 model asked for" in message


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04pickle"], ids=["empty", "garbage", "pickle"])
def test_a_bad_init_file_is_one_clear_line(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    assert str(path) in one_line_error(lambda: Trainer.initialised_from(path, images(), CONFIG))
    assert "no such checkpoint" in one_line_error(lambda: Trainer.initialised_from(tmp_path / "missing.safetensors", images(), CONFIG))
