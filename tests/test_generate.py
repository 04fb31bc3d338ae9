"""`engine.generate`: seeds → cats, reproducibly, for every sampler and precision."""

import dataclasses

import pytest
import torch

from engine.generate import SeededNoise, cpu_has_native_bf16, generate, starting_noise
from engine.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_timesteps
from engine.schedules import NoiseSchedule
from engine.unet import PRESETS, UNet

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


def predicting_model(seed: int = 0) -> UNet:
    """A U-Net whose every layer has non-zero weights, so that it predicts something: a fresh
    one starts its residual branches and output at zero and predicts exactly 0."""
    torch.manual_seed(seed)
    model = UNet(SMALL).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def model():
    return predicting_model()


def test_the_test_model_predicts_something(model):
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([500, 900])
    with torch.no_grad():
        assert float(model(x, t).std()) > 0.2
        assert float(UNet(SMALL)(x, t).abs().max()) == 0.0  # the fresh model it replaces


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_seed_gives_the_same_cat_in_any_batch(model, sampler):
    """Stochastic samplers too: their fresh noise comes from each image's own seed. The network
    predicts something, so the whole path (network, sampler, noise) must be batch-independent."""
    schedule = NoiseSchedule()
    alone = generate(model, schedule, [7], sampler, 6, bf16=False)
    crowd = generate(model, schedule, [3, 7, 11], sampler, 6, bf16=False)
    assert torch.equal(crowd[1], alone[0])
    assert not torch.equal(crowd[0], crowd[1])
    fresh = generate(UNet(SMALL).eval(), schedule, [7], sampler, 6, bf16=False)
    assert (fresh.float() - alone.float()).abs().mean() > 5  # the network shaped this cat


def test_the_default_sampler_reproduces_each_seed_in_any_batch(model):
    schedule = NoiseSchedule()
    crowd = generate(model, schedule, [2, 3, 4], bf16=False)
    assert torch.equal(generate(model, schedule, [3], bf16=False)[0], crowd[1])


def test_generate_runs_the_grid_it_is_given(model):
    schedule = NoiseSchedule()
    grid = sampler_timesteps(DEFAULT_SAMPLER, schedule, 5)
    seen = []
    by_grid = generate(model, schedule, [1, 2], grid=grid, bf16=False, callback=lambda i, x, x0: seen.append(i))
    assert seen == list(range(len(grid)))
    assert torch.equal(by_grid, generate(model, schedule, [1, 2], DEFAULT_SAMPLER, 5, bf16=False))
    other = generate(model, schedule, [1, 2], grid=[999, 500, 0], bf16=False)
    assert not torch.equal(other, by_grid)
    with pytest.raises(ValueError, match="steps or a grid"):
        generate(model, schedule, [1], steps=5, grid=grid)


def test_seeded_noise_starts_with_the_starting_noise_then_moves_on():
    noise = SeededNoise([5, 6], (3, 4, 4))
    first = noise.draw()
    assert torch.equal(first, starting_noise([5, 6], 4))
    second = noise(torch.empty(2, 3, 4, 4, dtype=torch.float64))
    assert second.dtype == torch.float64 and not torch.equal(second.float(), first)


def test_bf16_sampling_stays_close_to_fp32(model):
    """The deterministic sampler, so that only rounding separates the two; the gap is real (the
    network computes in bf16) but small."""
    schedule = NoiseSchedule()
    seeds = list(range(8))
    exact = generate(model, schedule, seeds, "dpm++", 10, bf16=False).float()
    fast = generate(model, schedule, seeds, "dpm++", 10, bf16=True).float()
    gap = (exact - fast).abs().mean()
    assert 0 < gap < 2.0  # out of 255
    auto = generate(model, schedule, seeds, "dpm++", 10).float()
    assert torch.equal(auto, fast if cpu_has_native_bf16() else exact)
