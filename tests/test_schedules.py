import math

import pytest
import torch

from engine.schedules import NoiseSchedule, ScheduleConfig


def test_linear_schedule_matches_closed_form_product():
    schedule = NoiseSchedule(ScheduleConfig(kind="linear", num_steps=1000))
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    for t in (0, 1, 10, 500, 999):
        expected = math.prod(1 - b for b in betas[: t + 1])
        assert float(schedule.alpha_bar(t)) == pytest.approx(expected, rel=1e-10)
    assert torch.allclose(schedule.betas, torch.tensor(betas, dtype=torch.float64), atol=1e-12)


def test_cosine_schedule_matches_nichol_dhariwal_where_unclipped():
    T, s = 1000, 0.008
    schedule = NoiseSchedule(ScheduleConfig(kind="cosine", num_steps=T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900, 990):
        assert float(schedule.alpha_bar(t)) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    # β is clipped at 0.999, so the final ᾱ is the previous one times 0.001.
    assert float(schedule.betas.max()) == pytest.approx(0.999)
    assert float(schedule.alpha_bar(T - 1)) == pytest.approx(float(schedule.alpha_bar(T - 2)) * 0.001)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_decreases_and_snr_is_its_ratio(kind):
    schedule = NoiseSchedule(ScheduleConfig(kind=kind))
    a = schedule.alphas_cumprod
    assert (a[1:] < a[:-1]).all() and 0 < float(a[-1]) < float(a[0]) < 1
    t = torch.tensor([0, 250, 999])
    assert torch.allclose(schedule.snr(t), a[t] / (1 - a[t]))
    assert torch.allclose(schedule.log_snr(t), torch.log(a[t] / (1 - a[t])))


def test_forward_process_has_the_closed_form_moments():
    schedule = NoiseSchedule(ScheduleConfig(kind="cosine"))
    torch.manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.6)
    t = torch.full((20000,), 300)
    x_t, eps = schedule.q_sample(x0, t)
    a = float(schedule.alpha_bar(300))
    assert float(x_t.mean()) == pytest.approx(math.sqrt(a) * 0.6, abs=0.02)
    assert float(x_t.std()) == pytest.approx(math.sqrt(1 - a), rel=0.02)
    # x_t is exactly the reparameterisation with the returned ε, and predict_x0 inverts it.
    assert torch.allclose(x_t, math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, atol=1e-6)
    assert torch.allclose(schedule.predict_x0(x_t, t, eps), x0, atol=1e-5)


def test_bad_schedule_configs_are_rejected():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        ScheduleConfig(kind="sigmoid")
    with pytest.raises(ValueError):
        ScheduleConfig(num_steps=1)
