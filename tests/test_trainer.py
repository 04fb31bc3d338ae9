import dataclasses

import numpy as np
import pytest
import torch

from engine.generate import generate
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS

from .conftest import two_tone_image

SIZE = 16
SMALL = dataclasses.replace(PRESETS["tiny"], image_size=SIZE)


def two_tone_images(n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([two_tone_image(rng, SIZE) for _ in range(n)])).permute(0, 3, 1, 2).contiguous()


def mean_image_error(trainer: Trainer, data: torch.Tensor) -> float:
    """RMS distance (in 0…255 units) between the mean of 32 samples and the mean training image."""
    samples = generate(trainer.ema.module.eval(), trainer.schedule, list(range(32)), "dpm++", 15)
    return float((samples.float().mean(0) - data.float().mean(0)).pow(2).mean().sqrt())


def test_a_tiny_model_learns_to_draw_the_training_images():
    data = two_tone_images(32)
    trainer = Trainer(SMALL, data, TrainConfig(batch_size=16, lr=2e-3, warmup_steps=20, ema_decay=0.95))
    untrained = mean_image_error(trainer, data)
    first_losses = []
    for _ in range(250):
        first_losses.append(trainer.step().loss)
    trained = mean_image_error(trainer, data)
    # An untrained model draws grey-ish noise ~80 units away from the two-tone mean image.
    assert untrained > 50
    assert trained < 0.35 * untrained
    assert np.mean(first_losses[-25:]) < 0.6 * np.mean(first_losses[:25])


def test_learning_rate_warms_up_linearly():
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, lr=1e-3, warmup_steps=10))
    assert trainer.learning_rate(0) == pytest.approx(1e-4)
    assert trainer.learning_rate(4) == pytest.approx(5e-4)
    assert trainer.learning_rate(50) == pytest.approx(1e-3)
    assert trainer.step().lr == pytest.approx(1e-4)


def test_min_snr_weights():
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, min_snr_gamma=5.0))
    t = torch.tensor([0, 999])
    snr = trainer.schedule.snr(t).float()
    weights = trainer.loss_weights(t)
    assert weights[0] == pytest.approx(5.0 / float(snr[0]), rel=1e-2)  # high SNR: down-weighted
    assert weights[1] == pytest.approx(1.0)  # low SNR: weight 1


def test_ema_warms_up_then_tracks_slowly():
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, ema_decay=0.999))
    name = "conv_in.weight"
    trainer.step()  # the first update copies the weights
    assert torch.equal(trainer.model.state_dict()[name], trainer.ema.module.state_dict()[name])
    previous_ema = trainer.ema.module.state_dict()[name].clone()
    trainer.step()
    # The second update uses decay (1 + 1)/(10 + 1) = 2/11, not 0.999.
    expected = torch.lerp(previous_ema, trainer.model.state_dict()[name], 1 - 2 / 11)
    assert torch.allclose(trainer.ema.module.state_dict()[name], expected, atol=1e-7)


def test_non_finite_loss_skips_the_step_and_keeps_weights(monkeypatch):
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    original_forward = trainer.forward
    trainer.forward = lambda x, t: original_forward(x, t) * float("nan")
    result = trainer.step()
    assert result.skipped and trainer.skipped_steps == 1 and trainer.step_count == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in trainer.ema.module.state_dict().items())
    trainer.forward = original_forward
    assert not trainer.step().skipped and trainer.step_count == 1


def test_images_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match="px"):
        Trainer(SMALL, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_a_failing_torch_compile_falls_back_to_eager_with_the_same_result(monkeypatch):
    """Compilation happens on first use; if it fails, training goes on eagerly and says why."""

    def broken_compile(module, **_):
        def compiled(*args):
            raise RuntimeError("inductor: no C compiler found\nlong details")

        return compiled

    data = two_tone_images(8)
    reference = Trainer(SMALL, data, TrainConfig(batch_size=4))
    expected = [reference.step().loss for _ in range(3)]
    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = Trainer(SMALL, data, TrainConfig(batch_size=4, compile=True))
    assert trainer.compile_failure is None
    losses = [trainer.step().loss for _ in range(3)]
    assert trainer.compile_failure == "inductor: no C compiler found"
    assert losses == expected and trainer.forward is trainer.model
