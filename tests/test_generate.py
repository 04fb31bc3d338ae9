"""`engine.generate`: seeds → cats, reproducibly, for every sampler and precision."""

import dataclasses

import pytest
import torch

from engine.generate import SeededNoise, cpu_has_native_bf16, generate, starting_noise
from engine.samplers import SAMPLERS
from engine.schedules import NoiseSchedule
from engine.unet import PRESETS, UNet

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNet(SMALL).eval()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_seed_gives_the_same_cat_in_any_batch(model, sampler):
    """Stochastic samplers too: their fresh noise comes from each image's own seed."""
    schedule = NoiseSchedule()
    alone = generate(model, schedule, [7], sampler, 6, bf16=False)
    crowd = generate(model, schedule, [3, 7, 11], sampler, 6, bf16=False)
    assert torch.equal(crowd[1], alone[0])
    assert not torch.equal(crowd[0], crowd[1])


def test_seeded_noise_starts_with_the_starting_noise_then_moves_on():
    noise = SeededNoise([5, 6], (3, 4, 4))
    first = noise.draw()
    assert torch.equal(first, starting_noise([5, 6], 4))
    second = noise(torch.empty(2, 3, 4, 4, dtype=torch.float64))
    assert second.dtype == torch.float64 and not torch.equal(second.float(), first)


def test_bf16_sampling_stays_close_to_fp32(model):
    schedule = NoiseSchedule()
    seeds = list(range(8))
    exact = generate(model, schedule, seeds, "dpm++", 10, bf16=False).float()
    fast = generate(model, schedule, seeds, "dpm++", 10, bf16=True).float()
    assert (exact - fast).abs().mean() < 2.0  # out of 255
    auto = generate(model, schedule, seeds, "dpm++", 10).float()
    assert torch.equal(auto, fast if cpu_has_native_bf16() else exact)
