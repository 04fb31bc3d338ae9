import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.ema import EMA, power_decay, sigma_rel_of_gamma, warmup_decay
from engine.generate import generate
from engine.schedules import ScheduleConfig
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


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_a_tiny_model_learns_to_draw_the_training_images(prediction):
    data = two_tone_images(32)
    config = TrainConfig(batch_size=16, lr=2e-3, warmup_steps=20, ema_decay=0.95)
    trainer = Trainer(SMALL, data, config, ScheduleConfig(prediction=prediction))
    untrained = mean_image_error(trainer, data)
    first_losses = []
    for _ in range(250):
        first_losses.append(trainer.step().loss)
    trained = mean_image_error(trainer, data)
    # An untrained model draws grey-ish noise ~80 units away from the two-tone mean image.
    assert untrained > 50
    assert trained < 0.35 * untrained
    assert np.mean(first_losses[-25:]) < 0.6 * np.mean(first_losses[:25])


def test_learning_rate_warms_up_linearly_and_stays_flat_while_open_ended():
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, lr=1e-3, warmup_steps=10))
    assert trainer.learning_rate(0) == pytest.approx(1e-4)
    assert trainer.learning_rate(4) == pytest.approx(5e-4)
    assert trainer.learning_rate(50) == pytest.approx(1e-3)
    assert trainer.learning_rate(10**7) == pytest.approx(1e-3)  # no budget: no decay
    assert trainer.step().lr == pytest.approx(1e-4)


def test_learning_rate_decays_to_the_floor_over_the_last_part_of_a_known_budget():
    """Warm-up–stable–decay: η(s) = η·min(1, (s+1)/W) until the last 20 % of H steps, then
    η·(f + (1 − f)(1 − √p)) with p = (s + 1 − 0.8 H)/(0.2 H), reaching f·η at the last step."""
    lr, warmup, floor, horizon = 1e-3, 10, 0.1, 100
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, lr=lr, warmup_steps=warmup, min_lr_ratio=floor))
    trainer.set_horizon(horizon)

    def expected(s):
        p = min(max((s + 1 - 0.8 * horizon) / (0.2 * horizon), 0), 1)
        return lr * min(1, (s + 1) / warmup) * (floor + (1 - floor) * (1 - math.sqrt(p)))

    for s in (0, 5, 9, 40, 79, 80, 85, 89, 95, 98, 99, 150):
        assert trainer.learning_rate(s) == pytest.approx(expected(s), rel=1e-12), s
    assert trainer.learning_rate(79) == pytest.approx(lr)  # plateau until the decay starts
    assert trainer.learning_rate(99) == pytest.approx(floor * lr)  # the floor at the budget's last step
    rates = [trainer.step().lr for _ in range(3)]  # the device computes the same schedule
    assert rates == pytest.approx([expected(s) for s in range(3)], rel=1e-6)


def test_a_cool_down_decays_from_the_current_step():
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, lr=1e-3, warmup_steps=1, min_lr_ratio=0.0))
    for _ in range(8):
        trainer.step()
    end = trainer.cool_down()
    assert end == 10 and trainer.horizon == 10  # 8 steps are 80 %: the decay takes the last 20 %
    assert trainer.learning_rate(7) == pytest.approx(1e-3)
    assert trainer.learning_rate(8) == pytest.approx(1e-3 * (1 - math.sqrt(0.5)))
    assert trainer.learning_rate(9) == 0.0


def test_min_snr_weights():
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, min_snr_gamma=5.0))
    t = torch.tensor([0, 999])
    snr = trainer.schedule.snr(t).float()
    weights = trainer.loss_weights(t)
    assert weights[0] == pytest.approx(5.0 / float(snr[0]), rel=1e-2)  # high SNR: down-weighted
    assert weights[1] == pytest.approx(1.0)  # low SNR: weight 1
    v = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, min_snr_gamma=5.0), ScheduleConfig(prediction="v"))
    weights = v.loss_weights(t)  # min(SNR, γ)/(SNR + 1) for the v target
    assert weights[0] == pytest.approx(5.0 / (float(snr[0]) + 1), rel=1e-2)
    assert weights[1] == pytest.approx(float(snr[1]) / (float(snr[1]) + 1), rel=1e-3)


class WithBuffers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, 2))
        self.register_buffer("running", torch.zeros(4))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def hand_average(values: list[np.ndarray], betas: list[float]) -> np.ndarray:
    """Σ_k (1 − β_k) Π_{j>k} β_j v_k: the EMA written as the weighted sum it is."""
    total = np.zeros_like(values[0])
    for k, value in enumerate(values):
        total += (1 - betas[k]) * np.prod(betas[k + 1 :]) * value
    return total


@pytest.mark.parametrize(
    "decay,beta",
    [
        (warmup_decay(0.9), lambda n: 0.0 if n == 1 else min(0.9, (1 + (n - 1)) / (10 + (n - 1)))),
        (power_decay(6.94), lambda n: (1 - 1 / n) ** 7.94),
    ],
    ids=["warm-up with cap 0.9", "power γ = 6.94"],
)
def test_ema_over_many_updates_is_the_hand_computed_average(decay, beta):
    """A known sequence of weights and float buffers, 200 updates (the warm-up's cap 0.9 holds
    from the 81st applied one on), some of them not applied: the average equals the weighted sum of the
    applied values with the schedule's β counted over applied updates only; the integer buffer
    follows the latest applied value.
    Seen to catch (then reverted): a zeroed decay (β = 0: the average is the last value), the
    cap left out (min(...) dropped), β counted over attempted instead of applied updates, and
    a skipped update that still moved the buffers."""
    model = WithBuffers()
    ema = EMA(model, decay)
    rng = np.random.default_rng(0)
    values, buffers, applied_flags = [], [], []
    for k in range(200):
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(rng.normal(k / 50, 1, (3, 2))))
            model.running.copy_(torch.from_numpy(rng.normal(-k / 50, 1, 4)))
            model.count.fill_(k)
        applied = k % 7 != 3
        if not applied:  # what a skipped step leaves in the weights is never averaged, NaN included
            with torch.no_grad():
                model.weight[0, 0] = float("nan")
        ema.update(model, torch.tensor(applied))
        if applied:
            values.append(model.weight.detach().double().numpy().copy())
            buffers.append(model.running.double().numpy().copy())
            applied_flags.append(k)
    betas = [beta(n) for n in range(1, len(values) + 1)]
    assert betas[0] == 0.0 and betas[-1] == (0.9 if beta(1000) == 0.9 else (1 - 1 / len(betas)) ** 7.94)
    np.testing.assert_allclose(ema.module.weight.double().numpy(), hand_average(values, betas), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ema.module.running.double().numpy(), hand_average(buffers, betas), rtol=1e-5, atol=1e-6)
    assert int(ema.module.count) == applied_flags[-1] and int(ema.updates) == len(values)


def test_the_ema_follows_weights_whose_layout_changed():
    """A model switched to channels-last after the average was made (as a benchmark does) is
    still averaged value by value, not in the wrong memory order."""
    model = torch.nn.Conv2d(3, 4, 3)
    ema = EMA(model, warmup_decay(0.9))
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 3, 3, 3))
    ema.update(model)
    assert torch.equal(ema.module.weight, model.weight)  # the first update copies


def test_power_ema_width_matches_the_paper():
    assert sigma_rel_of_gamma(6.94) == pytest.approx(0.10, abs=5e-4)
    assert sigma_rel_of_gamma(16.97) == pytest.approx(0.05, abs=5e-4)


def test_the_trainers_ema_averages_the_weights_after_each_step():
    """The trainer's EMA over 30 steps equals the hand-computed average of the model's weights
    recorded after every step: the first update copies them, then the warm-up schedule runs up
    to its cap (0.7, from step 21 on)."""
    config = TrainConfig(batch_size=2, lr=1e-3, warmup_steps=1, ema_decay=0.7)
    trainer = Trainer(SMALL, two_tone_images(4), config)
    name = "conv_in.weight"
    seen = []
    for _ in range(30):
        trainer.step()
        seen.append(trainer.model.state_dict()[name].double().numpy().copy())
    betas = [0.0] + [min(0.7, n / (9 + n)) for n in range(2, 31)]
    assert betas[-1] == 0.7
    np.testing.assert_allclose(trainer.ema.module.state_dict()[name].double().numpy(), hand_average(seen, betas), rtol=1e-5, atol=1e-7)


def reference_step(trainer: Trainer, optimizer: torch.optim.Optimizer, ema: torch.nn.Module, updates: list[int]) -> float:
    """The step as it was before it became sync-free, written out on the host: Python-float
    learning rate, foreach AdamW, a host check of loss, gradient norm and weights, and the
    warm-up EMA in Python floats. It draws from `trainer`'s batches and RNGs. The target is ε,
    or v = √ᾱ ε − √(1 − ᾱ) x0 (Salimans & Ho 2022, §4)."""
    config = trainer.config
    x0 = next(trainer.batches)
    t = torch.randint(0, trainer.schedule.num_steps, (x0.shape[0],), generator=trainer.noise_rng)
    noise = torch.randn(x0.shape, generator=trainer.noise_rng)
    a = trainer.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = noise if trainer.schedule.config.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    per_image = (trainer.model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t) - target).pow(2).mean(dim=(1, 2, 3))
    loss = (trainer.loss_weights(t) * per_image).mean()
    step = len(updates)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup_steps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), config.grad_clip)
    mse = float(per_image.detach().mean())
    if not (math.isfinite(mse) and math.isfinite(float(grad_norm))):
        return mse
    optimizer.step()
    decay = min(config.ema_decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in trainer.model.parameters()], 1 - decay)
    updates.append(step)
    return mse


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_sync_free_step_trains_like_the_host_checked_step(prediction):
    """Same seed, same batches: after 6 steps the parameters, the EMA and the losses agree to
    float rounding (fused against foreach AdamW, a float64 schedule against Python floats)."""
    config = TrainConfig(batch_size=4, lr=2e-3, warmup_steps=3, ema_decay=0.9)
    data = two_tone_images(8)
    trainer = Trainer(SMALL, data, config, ScheduleConfig(prediction=prediction))
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    reference = Trainer(SMALL, data, config, ScheduleConfig(prediction=prediction))
    optimizer = torch.optim.AdamW(reference.model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, foreach=True)
    ema, updates = copy.deepcopy(reference.model).requires_grad_(False), []
    losses = [trainer.step().loss for _ in range(6)]
    expected = [reference_step(reference, optimizer, ema, updates) for _ in range(6)]
    assert losses == pytest.approx(expected, rel=1e-4)
    # Adam divides by √v, which turns rounding in tiny gradients into ~5e-6: 1/400 of one step.
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(trainer.model.parameters(), initial))
    assert moved > 5e-3
    for (name, p), q in zip(trainer.model.named_parameters(), reference.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    for p, q in zip(trainer.ema.module.parameters(), ema.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_step_never_reads_a_tensor_back(monkeypatch):
    """No .item(), float(), bool(), .tolist() or .numpy() while stepping: all of it stays on the
    device until someone reads the metrics."""

    def refuse(*args, **kwargs):
        raise AssertionError("the step read a tensor back to the host")

    trainer = Trainer(SMALL, two_tone_images(8), TrainConfig(batch_size=4, warmup_steps=1))
    trainer.step()  # the first batch draws the epoch's order
    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    results = [trainer.step() for _ in range(3)]
    monkeypatch.undo()
    assert [r.step for r in results] == [2, 3, 4] and trainer.step_count == 4


def test_metrics_are_read_back_in_order_when_asked():
    trainer = Trainer(SMALL, two_tone_images(8), TrainConfig(batch_size=4, warmup_steps=2, lr=1e-3))
    results = [trainer.step() for _ in range(3)]
    metrics = trainer.read_metrics()
    assert [m.step for m in metrics] == [1, 2, 3] and not any(m.skipped for m in metrics)
    assert [m.loss for m in metrics] == [r.loss for r in results] == trainer.history.losses
    assert [m.lr for m in metrics] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert all(m.grad_norm > 0 for m in metrics) and trainer.read_metrics() == []


@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_a_non_finite_step_changes_no_weight_ema_or_optimizer_state(poison):
    """Seen to catch (then reverted): the found_inf input left out (AdamW writes NaN into the
    weights and moments), the EMA update not masked by the loss check, and the step counter
    advanced on a skipped step."""
    trainer = Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, warmup_steps=1))
    trainer.step()
    state = copy.deepcopy((trainer.model.state_dict(), trainer.ema.module.state_dict(), trainer.optimizer.state_dict()["state"]))
    original_forward = trainer.forward
    if poison == "loss":
        trainer.forward = lambda x, t: original_forward(x, t) * float("nan")
    else:
        hook = next(trainer.model.parameters()).register_hook(lambda g: g * float("inf"))
    result = trainer.step()
    assert result.skipped and trainer.skipped_steps == 1 and trainer.step_count == 1
    after = (trainer.model.state_dict(), trainer.ema.module.state_dict(), trainer.optimizer.state_dict()["state"])
    for before_part, after_part in zip(state[:2], after[:2]):
        assert all(torch.equal(before_part[k], v) for k, v in after_part.items())
    for index, values in state[2].items():
        for key, value in values.items():
            assert torch.equal(value, after[2][index][key]), (index, key)  # step count, moments
    assert float(trainer.ema.updates) == 1 and len(trainer.history.losses) == 1
    trainer.forward = original_forward
    if poison == "grad":
        hook.remove()
    assert not trainer.step().skipped and trainer.step_count == 2


def test_images_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match="px"):
        Trainer(SMALL, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_cuda_graphs_are_refused_without_a_gpu():
    with pytest.raises(ValueError, match="CUDA graphs need one CUDA device"):
        Trainer(SMALL, two_tone_images(4), TrainConfig(batch_size=2, cuda_graph=True), device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_graph_step_trains_like_the_eager_step():
    data = two_tone_images(64)
    runs = {}
    for graph in (False, True):
        trainer = Trainer(SMALL, data, TrainConfig(batch_size=16, warmup_steps=2, cuda_graph=graph), device="cuda")
        losses = [trainer.step() for _ in range(8)]
        runs[graph] = ([r.loss for r in losses], [p.detach().cpu() for p in trainer.ema.module.parameters()], trainer)
    assert runs[True][2].graph_failure is None and runs[True][2]._graph is not None
    assert runs[True][0] == pytest.approx(runs[False][0], rel=2e-2)
    for p, q in zip(runs[True][1], runs[False][1]):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_step_does_not_synchronise():
    trainer = Trainer(SMALL, two_tone_images(64), TrainConfig(batch_size=16), device="cuda")
    for _ in range(2):
        trainer.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer._train_step(*(lambda x0: (x0, torch.zeros(16, dtype=torch.long, device="cuda"), torch.randn_like(x0)))(torch.zeros(16, 3, SIZE, SIZE, device="cuda")))
    finally:
        torch.cuda.set_sync_debug_mode("default")


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
