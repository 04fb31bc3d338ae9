import dataclasses

import pytest
import torch

from engine.unet import PRESETS, UNet, UNetConfig, count_parameters, saved_for_backward


@pytest.mark.parametrize("size", [32, 64])
def test_unet_keeps_the_image_shape(size):
    config = dataclasses.replace(PRESETS["tiny"], image_size=size)
    model = UNet(config)
    x = torch.randn(2, 3, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape


def test_kitty64_runs_at_64_px_and_scalar_t():
    model = UNet(PRESETS["kitty-64"])
    out = model(torch.randn(1, 3, 64, 64), torch.tensor(10))
    assert out.shape == (1, 3, 64, 64)


def test_preset_parameter_budgets():
    tiny = count_parameters(UNet(PRESETS["tiny"]))
    kitty = count_parameters(UNet(PRESETS["kitty-64"]))
    assert tiny < 1_000_000
    assert kitty * 2 <= 16 * 2**20  # fp16 weights fit in 16 MiB
    assert 4_000_000 < kitty <= 8_000_000


def test_output_depends_on_time_and_input_once_trained_weights_are_nonzero():
    torch.manual_seed(0)
    model = UNet(PRESETS["tiny"])
    # Zero-initialised output layers make a fresh model predict 0; perturb them.
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randn(1, 3, 32, 32)
    a = model(x, torch.tensor([10]))
    assert not torch.allclose(a, model(x, torch.tensor([900])))
    assert not torch.allclose(a, model(x + 0.1, torch.tensor([10])))


def test_config_round_trips_through_a_dict_and_validates():
    config = PRESETS["kitty-64"]
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=60, channel_mults=(1, 2, 2, 4))
    with pytest.raises(ValueError, match="unknown model config"):
        UNetConfig.from_dict({**config.to_dict(), "wings": 2})


def test_the_memory_saved_for_backward_is_counted_without_allocating_as_a_real_pass_saves_it():
    """`saved_for_backward` (meta device) against a real float32 forward pass on the CPU: the
    same bytes, counted the same way, and never below the distinct storages really kept."""
    config = dataclasses.replace(PRESETS["tiny"], image_size=16)
    model = UNet(config)
    counted, storages = [], {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            counted.append(tensor.numel() * tensor.element_size())
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999]))
    estimate = saved_for_backward(config, 3)
    assert estimate == sum(counted) and sum(storages.values()) <= estimate <= 1.3 * sum(storages.values())
    one, two = saved_for_backward(config, 1), saved_for_backward(config, 2)
    assert estimate - two == two - one > 0  # the same bytes for every image of the batch
