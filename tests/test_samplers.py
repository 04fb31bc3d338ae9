"""Samplers driven by the exact ε-predictor (or v-predictor) of Gaussian data.

For x0 ~ N(μ, s²I) and x_t = α x0 + σ ε (α = √ᾱ, σ = √(1−ᾱ)), the posterior mean of ε is
E[ε | x_t] = σ (x_t − α μ) / v with v = α² s² + σ², the minimiser of the DDPM loss. Along the
probability-flow ODE of this predictor u = x − α μ keeps u/√v fixed, so the exact map between
two timesteps is affine, per value: u' = u √(v'/v). Stochastic samplers must reproduce the
Gaussian's moments; deterministic ones must reproduce that map sample by sample.
"""

import math

import numpy as np
import pytest
import torch

from engine.samplers import DEFAULT_STEPS, GRID_KINDS, GRIDS, SAMPLERS, sampler_timesteps
from engine.samplers.common import CLIPS, DYNAMIC_PERCENTILE, clip_x0, gaussian_noise, karras_grid, log_snr_grid, predict, timestep_grid
from engine.schedules import NoiseSchedule, ScheduleConfig

STOCHASTIC = ["dpm++sde", "ddpm"]


def exact_eps_model(schedule: NoiseSchedule, mu: float, s: float):
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return model


def exact_v_network(schedule: NoiseSchedule, mu: float, s: float):
    """E[v | x_t] = α E[ε | x_t] − σ E[x0 | x_t], with E[x0 | x_t] = μ + α s² (x_t − α μ) / v."""

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        variance = a * s**2 + 1 - a
        x0 = mu + a.sqrt() * s**2 * (x - a.sqrt() * mu) / variance
        return a.sqrt() * exact_eps_model(schedule, mu, s)(x, t) - (1 - a).sqrt() * x0

    return network


def exact_model(schedule: NoiseSchedule, mu: float, s: float):
    """The exact predictor of what the schedule says the network predicts, turned into the ε the
    samplers take by `NoiseSchedule.eps_of`, as `engine.generate` turns a network's output."""
    if schedule.config.prediction == "eps":
        network = exact_eps_model(schedule, mu, s)
    else:
        network = exact_v_network(schedule, mu, s)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return schedule.eps_of(network(x, t), x, schedule.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1))

    return model


def exact_flow(schedule: NoiseSchedule, grid: list[int], x: torch.Tensor, mu: float, s: float, gain: float = 1.0) -> torch.Tensor:
    """Where every sampler should land: follow the probability-flow ODE exactly from grid[0] to
    grid[-1] (u' = u √(v'/v), times `gain`), then take x̂0 = μ + α s² u / v there, the last step
    all samplers share."""
    a0, a1 = float(schedule.alpha_bar(grid[0])), float(schedule.alpha_bar(grid[-1]))
    v0, v1 = a0 * s**2 + 1 - a0, a1 * s**2 + 1 - a1
    u = (x - a0**0.5 * mu) * (v1 / v0) ** 0.5 * gain
    return mu + a1**0.5 * s**2 * u / v1


def uneven_log_snr_grid(schedule: NoiseSchedule, steps: int) -> list[int]:
    """Steps alternating between h and 2.5 h in log-SNR, from λ = −6 to λ_20: unequal step ratios
    make every multistep coefficient count (on an even grid r₀ = r₁ hides some of them)."""
    lam = schedule.log_snr(torch.arange(schedule.num_steps))
    widths = torch.tensor([1.0 if i % 2 == 0 else 2.5 for i in range(steps - 1)], dtype=torch.float64)
    start, stop = -6.0, float(lam[20])
    targets = start + (stop - start) * torch.cat([torch.zeros(1, dtype=torch.float64), widths.cumsum(0) / widths.sum()])
    grid: list[int] = []
    for t in torch.searchsorted(-lam, -targets).tolist():
        if not grid or t < grid[-1]:
            grid.append(t)
    return grid


def flow_errors(name: str, grid_of, step_counts, mu=0.3, s=0.4, **options) -> list[float]:
    """Largest per-value distance between the sampler's output and the exact flow, per step count."""
    schedule = NoiseSchedule(ScheduleConfig())
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in step_counts:
        grid = grid_of(schedule, steps)
        out = SAMPLERS[name](exact_eps_model(schedule, mu, s), x.clone(), schedule, grid, clip=None, **options)
        errors.append(float((out - exact_flow(schedule, grid, x, mu, s)).abs().max()))
    return errors


# (sampler, grid, steps, relative tolerance on the std); the mean is held to 0.01 absolute. "own" is
# the sampler's own grid. On the even log-SNR grid the SDE solver is within 5 % from 20 steps; on
# its own grid (EDM's, dense at low noise) it overshoots the std by about 10 % at 10–20 steps and
# converges with more (test_the_sde_solver_converges_on_its_own_grid).
CASES = [
    ("dpm++sde", "log-snr", 20, 0.05),
    ("dpm++sde", "log-snr", 25, 0.05),
    ("dpm++sde", "own", 100, 0.02),
    ("unipc", "own", 15, 0.05),
    ("unipc", "own", 25, 0.05),
    ("dpm++", "own", 20, 0.05),
    ("dpm++", "own", 25, 0.05),
    ("ddim", "own", 200, 0.05),
    ("ddim", "own", 1000, 0.01),
    ("ddpm", "own", 1000, 0.03),
]


def gaussian_samples(schedule: NoiseSchedule, name: str, grid: list[int], mu: float, s: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 8, 8, generator=generator)  # 49,152 values
    return SAMPLERS[name](exact_model(schedule, mu, s), x, schedule, grid, noise=gaussian_noise(generator), clip=None)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("name,grid_kind,steps,tolerance", CASES)
@pytest.mark.parametrize("mu,s", [(0.1, 0.5), (0.3, 0.2)])
def test_sampler_recovers_gaussian_data(prediction, kind, name, grid_kind, steps, tolerance, mu, s):
    schedule = NoiseSchedule(ScheduleConfig(kind=kind, prediction=prediction))
    grid = sampler_timesteps(name, schedule, steps) if grid_kind == "own" else GRID_KINDS[grid_kind](schedule, steps)
    out = gaussian_samples(schedule, name, grid, mu, s)
    assert float(out.mean()) == pytest.approx(mu, abs=0.01)
    assert float(out.std()) == pytest.approx(s, rel=tolerance)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_sde_solver_converges_on_its_own_grid(kind):
    """The std's overshoot on EDM's grid shrinks as the steps grow, to under 2 % at 100."""
    schedule = NoiseSchedule(ScheduleConfig(kind=kind))
    overshoot = [float(gaussian_samples(schedule, "dpm++sde", sampler_timesteps("dpm++sde", schedule, steps), 0.1, 0.5).std()) / 0.5 - 1 for steps in (15, 25, 50, 100)]
    assert overshoot[0] < 0.15 and all(a > b for a, b in zip(overshoot, overshoot[1:])) and abs(overshoot[-1]) < 0.02, overshoot


def test_ddim_is_the_exact_flow_shrunk_by_the_cosines_of_its_steps():
    """Per sample, to round-off. Write α s = √v cos φ and σ = √v sin φ: DDIM's step
    x' = α' x̂0 + σ' ε̂ gives u' = u √(v'/v) cos(φ − φ'), the exact flow times the cosine of the
    angle it cuts. So DDIM over a grid is the exact map times ∏ cos Δφ, and that product goes
    to 1 as the grid refines (first order: halving the steps' size halves the gap).
    Seen to catch (then reverted): ε̂ weighted by √(1 − ᾱ_t) instead of √(1 − ᾱ_{t−1}), and
    the model called at t − 1 instead of t."""
    schedule = NoiseSchedule(ScheduleConfig())
    mu, s = 0.3, 0.4
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gaps = []
    for steps in (10, 50, 250, 1000):
        grid = timestep_grid(schedule, steps)
        a = [float(schedule.alpha_bar(t)) for t in grid]
        phi = [math.atan2((1 - ai) ** 0.5, ai**0.5 * s) for ai in a]
        gain = math.prod(math.cos(p - q) for p, q in zip(phi, phi[1:]))
        out = SAMPLERS["ddim"](exact_eps_model(schedule, mu, s), x.clone(), schedule, grid, clip=None)
        torch.testing.assert_close(out, exact_flow(schedule, grid, x, mu, s, gain), rtol=0, atol=1e-10)
        gaps.append(1 - gain)
    assert gaps[0] > 0.1 and gaps[-1] < 2e-3  # the factor matters, and vanishes with many steps
    assert [g / h for g, h in zip(gaps, gaps[1:])] == pytest.approx([5, 5, 4], rel=0.1)


@pytest.mark.parametrize(
    "name,options,order,largest_error",
    [("dpm++", {}, 2, 5e-4), ("unipc", {}, 3, 1e-4)],
)
def test_dpm_solvers_converge_to_the_exact_flow_at_their_order(name, options, order, largest_error):
    """Per sample, on an uneven grid: doubling the steps must divide the error by about 2^order,
    and 80 steps must land within `largest_error` of the exact flow.
    Seen to catch (then reverted), each failing the ratio check: in DPM-Solver++(2M), the
    1/(2r) of the multistep estimate written 1/(1.9r) (ratios 2.6, 2.4); in UniPC, the
    corrector's D₂ weighed by φ₃ instead of 2φ₃ (5.3, 4.4), D₂'s (x̂0_s − x̂0_{s−1})/r written
    × r (1.7, 1.9), the predictor's h/h₋₁ inverted (4.2, 4.1), the corrector left out (4.2,
    4.1), φ₃ = φ₂/h − 0.45 (2.6, 2.0); in both, the model called at t − 1 instead of t (the
    error stalls near 2e-3)."""
    errors = flow_errors(name, uneven_log_snr_grid, (20, 40, 80), **options)
    ratios = [e / f for e, f in zip(errors, errors[1:])]
    assert min(ratios) > 0.8 * 2**order, (errors, ratios)
    assert errors[-1] < largest_error, errors


@pytest.mark.parametrize("name,options", [("dpm++", {}), ("unipc", {})])
def test_dpm_solvers_on_their_own_grid_land_on_the_exact_flow(name, options):
    """The grid they run on by default (log-SNR, starting at T − 1 with its jump from λ ≈ −18)."""
    errors = flow_errors(name, log_snr_grid, (25, 100), **options)
    assert errors[0] < 2e-2 and errors[1] < 1e-3, errors


@pytest.mark.parametrize("name", ["dpm++", "dpm++sde", "unipc"])
def test_an_untrained_model_does_not_pass_the_gaussian_check(name):
    schedule = NoiseSchedule(ScheduleConfig())
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS[name](lambda x, t: torch.zeros_like(x), x, schedule, sampler_timesteps(name, schedule, 20), clip=None)
    assert abs(float(out.std()) - 0.5) > 0.1


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_grid_step_and_clipped_x0(name):
    schedule = NoiseSchedule(ScheduleConfig())
    seen = []
    x = torch.randn(2, 3, 8, 8)
    grid = sampler_timesteps(name, schedule, 10)
    SAMPLERS[name](exact_eps_model(schedule, 0.0, 3.0), x, schedule, grid, callback=lambda i, x_t, x0: seen.append((i, x0)))
    assert [i for i, _ in seen] == list(range(len(grid)))
    assert all(float(x0.abs().max()) <= 1.0 for _, x0 in seen)


def test_the_model_is_called_at_exactly_the_grid_timesteps():
    schedule = NoiseSchedule(ScheduleConfig())
    grid = [999, 700, 400, 120, 3]
    for name in SAMPLERS:
        called = []

        def model(x, t):
            called.append(int(t[0]))
            return torch.zeros_like(x)

        SAMPLERS[name](model, torch.randn(1, 3, 4, 4), schedule, grid)
        assert called == grid, name


def test_timestep_grids():
    schedule = NoiseSchedule(ScheduleConfig())
    assert timestep_grid(schedule, 1000) == list(range(999, -1, -1))
    grid = timestep_grid(schedule, 20)
    assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 20 and grid == sorted(grid, reverse=True)
    grid = log_snr_grid(schedule, 20)
    assert grid[0] == 999 and grid[-1] == 0 and len(set(grid)) == len(grid) == 20
    lam = schedule.log_snr(torch.tensor(grid[1:]))
    gaps = lam[1:] - lam[:-1]
    assert float(gaps.max() - gaps.min()) < 0.35 * float(gaps.mean())  # evenly spaced in log-SNR
    with pytest.raises(ValueError):
        timestep_grid(schedule, 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_karras_grid_takes_the_nearest_timesteps_to_edms_noise_levels(kind):
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,
    σ_max = 80, ρ = 7, σ_min the schedule's at t = 0; the first point moved to T−1."""
    schedule = NoiseSchedule(ScheduleConfig(kind=kind))
    sigma = np.sqrt((1 - schedule.alphas_cumprod.double().numpy()) / schedule.alphas_cumprod.double().numpy())
    for steps in (2, 8, 15, 25):
        grid = karras_grid(schedule, steps)
        assert grid[0] == 999 and grid[-1] == 0 and grid == sorted(set(grid), reverse=True)
        ramp = np.arange(steps) / (steps - 1)
        targets = (80 ** (1 / 7) + ramp * (sigma[0] ** (1 / 7) - 80 ** (1 / 7))) ** 7
        nearest = [int(np.abs(np.log(sigma) - np.log(target)).argmin()) for target in targets[1:]]
        assert grid[1:] == sorted(set(nearest), reverse=True), (steps, grid, nearest)
    assert len(karras_grid(schedule, 25)) == 25  # no repeats at the default's step counts
    with pytest.raises(ValueError):
        karras_grid(schedule, 0)


def test_each_sampler_has_its_grid_and_default_step_count():
    schedule = NoiseSchedule(ScheduleConfig())
    assert set(GRIDS) == set(SAMPLERS) == set(DEFAULT_STEPS)
    for name in SAMPLERS:
        assert sampler_timesteps(name, schedule) == GRIDS[name](schedule, DEFAULT_STEPS[name])
        assert sampler_timesteps(name, schedule, 7) == GRIDS[name](schedule, 7)
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_timesteps("euler", schedule, 10)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_follow_their_noise(name):
    schedule = NoiseSchedule(ScheduleConfig())
    model = exact_eps_model(schedule, 0.0, 0.5)
    x = torch.randn(2, 3, 4, 4)
    grid = sampler_timesteps(name, schedule, 50)
    run = lambda seed: SAMPLERS[name](model, x, schedule, grid, noise=gaussian_noise(torch.Generator().manual_seed(seed)))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_the_sde_solver_forgets_an_early_colour_shift_that_the_ode_solver_keeps():
    """Why dpm++sde is the default: push x̂0 off by +0.5 at the three steps where ᾱ goes from
    about 0.08 to 0.3 (where a model settles the overall colour) and compare the final mean with
    the exact one, 0. The ODE solvers (DPM-Solver++ and UniPC alike) carry the shift to the end;
    the SDE solver's fresh noise washes most of it out."""
    schedule = NoiseSchedule(ScheduleConfig())
    exact = exact_eps_model(schedule, 0.0, 0.5)
    grid = log_snr_grid(schedule, 25)
    noisy_steps = set(grid[9:12])

    def biased(x, t):
        a = schedule.alpha_bar(t).view(-1, 1, 1, 1)
        shift = 0.5 if int(t[0]) in noisy_steps else 0.0
        return exact(x, t) - shift * a.sqrt() / (1 - a).sqrt()  # x̂0 = exact x̂0 + shift

    x = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    drift = {
        name: abs(float(SAMPLERS[name](biased, x, schedule, grid, noise=gaussian_noise(torch.Generator().manual_seed(1)), clip=None).mean()))
        for name in ("dpm++", "unipc", "dpm++sde")
    }
    ode = min(drift["dpm++"], drift["unipc"])
    assert ode > 0.1 and drift["dpm++sde"] < 0.5 * ode, drift


def test_dynamic_thresholding_matches_its_formula():
    """Saharia et al. 2022, §2.3: s = max(1, 99.5th percentile of |x̂0|) per image, x̂0 ← clamp(x̂0, −s, s)/s."""
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 32, 32, generator=generator) * torch.tensor([3.0, 0.2, 40.0]).view(-1, 1, 1, 1)
    out = clip_x0(x0, "dynamic")
    for image, clipped in zip(x0, out):
        magnitudes = image.abs().flatten().double().numpy()
        s = max(1.0, float(np.quantile(magnitudes, DYNAMIC_PERCENTILE, method="inverted_cdf")))
        torch.testing.assert_close(clipped, image.clamp(-s, s) / s)
    assert torch.equal(out[1], x0[1])  # already within [−1, 1]: left as it is
    assert float(out[0].abs().max()) == 1.0 and float((out[0].abs() == 1).float().mean()) < 0.01


def test_dynamic_thresholding_is_per_image_and_static_clamps():
    """Each image's threshold is its own, so a seed draws the same cat in any batch."""
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 16, 16, generator=generator) * torch.tensor([1.0, 5.0, 0.5, 50.0]).view(-1, 1, 1, 1)
    together = clip_x0(x0, "dynamic")
    for i in range(4):
        assert torch.equal(together[i : i + 1], clip_x0(x0[i : i + 1], "dynamic"))
    assert torch.equal(clip_x0(x0, "static"), x0.clamp(-1, 1))
    assert clip_x0(x0, None) is x0
    with pytest.raises(ValueError, match="unknown clip"):
        clip_x0(x0, "percentile")


def model_of_x0(schedule: NoiseSchedule, x0: torch.Tensor):
    """The ε-model whose estimate of the clean image is `x0` at every timestep:
    ε = (x − √ᾱ x0)/√(1 − ᾱ)."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return model


@pytest.mark.parametrize("clip", CLIPS)
def test_a_clipped_x0_comes_with_the_noise_that_gives_back_x_t(clip):
    """x_t = √ᾱ x̂0 + √(1 − ᾱ) ε̂ (Ho et al., eq. 4) still holds once x̂0 is clipped, so a step
    built from (x̂0, ε̂) starts from the x_t it was given."""
    schedule = NoiseSchedule(ScheduleConfig())
    generator = torch.Generator().manual_seed(0)
    overshooting = 3 * torch.randn(2, 3, 8, 8, generator=generator)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    for t in (50, 500, 950):
        a = float(schedule.alpha_bar(t))
        eps, x0 = predict(model_of_x0(schedule, overshooting), x, t, a, clip)
        assert float(x0.abs().max()) <= 1.0 and not torch.allclose(x0, overshooting)
        torch.testing.assert_close(a**0.5 * x0 + (1 - a) ** 0.5 * eps, x, rtol=0, atol=1e-5)


def first_step(name: str, schedule: NoiseSchedule, grid: list[int], x0: torch.Tensor, x: torch.Tensor, z: torch.Tensor, **options) -> torch.Tensor:
    """x after the first step of sampler `name` over `grid`, driven by `model_of_x0(x0)`, every
    fresh noise draw being `z`."""
    steps = []
    SAMPLERS[name](model_of_x0(schedule, x0), x.clone(), schedule, grid, callback=lambda i, x_t, _: steps.append(x_t), noise=lambda like: z, clip=None, **options)
    return steps[0]


def fixed_draws():
    """(x̂0, x_t, z): a clean-image estimate, a latent and a noise draw, float64."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("grid", [[10, 9], [600, 300]], ids=["adjacent", "respaced"])
def test_a_ddpm_step_draws_from_the_exact_posterior(grid):
    """Ho et al. 2020, eqs. 6–7: x_{t−1} = μ̃ + √β̃ z with
    μ̃ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t and
    β̃ = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t, where α_t = 1 − β_t = ᾱ_t/ᾱ_{t−1} over the grid's step
    (the schedule's own β_t between adjacent timesteps)."""
    schedule = NoiseSchedule(ScheduleConfig(kind="linear"))
    x0, x, z = fixed_draws()
    a, a_prev = float(schedule.alpha_bar(grid[0])), float(schedule.alpha_bar(grid[1]))
    beta = 1 - a / a_prev
    if grid[1] == grid[0] - 1:
        assert beta == pytest.approx(1e-4 + (0.02 - 1e-4) * grid[0] / 999, rel=1e-9)
    mean = a_prev**0.5 * beta / (1 - a) * x0 + (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a) * x
    variance = (1 - a_prev) / (1 - a) * beta
    torch.testing.assert_close(first_step("ddpm", schedule, grid, x0, x, z), mean + variance**0.5 * z, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_a_ddim_step_with_eta_adds_the_noise_of_song_et_al(eta):
    """Song et al. 2021, eqs. 12 and 16: x_{t−1} = √ᾱ_{t−1} x̂0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z
    with σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})."""
    schedule = NoiseSchedule(ScheduleConfig())
    grid = [600, 300]
    x0, x, z = fixed_draws()
    a, a_prev = float(schedule.alpha_bar(grid[0])), float(schedule.alpha_bar(grid[1]))
    eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
    sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
    expected = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps + sigma * z
    torch.testing.assert_close(first_step("ddim", schedule, grid, x0, x, z, eta=eta), expected, rtol=0, atol=1e-10)
