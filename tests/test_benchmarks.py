"""The benchmark scripts run (quick mode: small sizes, one iteration) and print markdown tables.

Nothing here asserts a speed: CI machines vary. The start-up benchmark does check that
`kittyterm --help` never imports torch, which is a property, not a speed.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_quick(script: str, *arguments: str) -> str:
    # One intra-op thread: CI has 2 shared cores, where spinning OpenMP threads only slow things down.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def assert_has_table(output: str) -> None:
    lines = output.splitlines()
    assert any(line.startswith("|---") for line in lines), output
    assert any(line.startswith("- command:") for line in lines), output  # the BENCHMARKS.md header


def test_steps_benchmark_picks_no_default_that_adds_colour_casts(monkeypatch):
    """Seen to catch: a choice by FID alone, which took 10 steps that score lower FID with more casts."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bench_steps import fewest_steps

    measured = {  # (FID, colour casts) of the shipped model, BENCHMARKS.md "Quality against sampler steps"
        ("dpm++sde", 25): (35.79, 0.166), ("dpm++sde", 10): (33.99, 0.234), ("dpm++sde", 12): (35.30, 0.201),
        ("dpm++sde", 15): (36.52, 0.164), ("dpm++sde", 20): (36.05, 0.161), ("unipc", 10): (115.77, 0.606),
    }
    assert fewest_steps(measured) == ("dpm++sde", 15)
    assert fewest_steps({**measured, ("dpm++sde", 15): (36.80, 0.164)}) == ("dpm++sde", 20)  # FID 1.01 above
    assert fewest_steps({("dpm++sde", 25): (35.79, 0.166)}) == ("dpm++sde", 25)


def test_train_benchmark_quick():
    output = run_quick("bench_train.py")
    assert_has_table(output)
    assert "| tiny | 4 | default |" in output and "| tiny | 4 | all on |" in output
    assert "forward GFLOP/image" in output


def test_sample_benchmark_quick():
    output = run_quick("bench_sample.py", "--busy-threads", "1", "--compare-waiting")
    assert_has_table(output)
    for policy in ("kittyterm's choice", "`OMP_WAIT_POLICY=` (libgomp's own)", "`OMP_WAIT_POLICY=PASSIVE`"):
        assert f"| --steps 1, {policy} | 1 |" in output
    assert "while another process keeps 1 torch thread busy:" in output
    for sampler in ("dpm++sde", "unipc", "dpm++", "ddim", "ddpm"):
        assert f"| {sampler}" in output
    assert "+bf16" in output or "−bf16" in output  # bf16 flipped against the engine's choice


def test_diffusers_comparison_quick_runs_or_skips_cleanly():
    output = run_quick("bench_diffusers.py")
    if importlib.util.find_spec("diffusers") is None:
        assert "diffusers is not installed" in output
        pytest.skip("diffusers is not installed: only the clean skip was checked")
    assert_has_table(output)
    assert "| tiny | ours |" in output and "| tiny | diffusers |" in output


def test_startup_benchmark_quick_and_help_does_not_import_torch():
    output = run_quick("bench_startup.py")
    assert_has_table(output)
    assert "torch imported: no" in output



def test_fid_benchmark_quick_ranks_the_unlike_set_worse():
    output = run_quick("bench_fid.py")
    assert_has_table(output)
    rows = [line.split("|")[1:-1] for line in output.splitlines() if line.startswith("| a |") or line.startswith("| b |")]
    fids = {(name.strip(), int(count)): float(value) for name, count, _, value, _ in rows}
    assert set(fids) == {("a", 6), ("b", 6), ("a", 12), ("b", 12)}
    assert fids[("b", 12)] > fids[("a", 12)] + 1  # darker images, farther from the reference


def test_colour_benchmark_quick_flags_a_teal_set():
    output = run_quick("bench_colour.py")
    assert_has_table(output)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in output.splitlines() if line.startswith("| ") and "%" in line}
    assert rows["teal (20 images)"] == "100.0 %"
    assert float(rows["real cats held out from the band"].rstrip(" %")) < 10


def test_steps_benchmark_quick():
    output = run_quick("bench_steps.py", "--precisions", "fp32", "bf16")
    assert_has_table(output)
    for precision, sampler in itertools.product(("fp32", "bf16"), ("dpm++sde", "unipc")):
        assert f"| {precision} | {sampler} | 2 | 8 |" in output and f"| {precision} | {sampler} | 3 | 8 |" in output
    assert "| real cats (held out) |" in output


def test_recipe_benchmark_quick():
    output = run_quick("bench_recipe.py")
    assert_has_table(output)
    assert "| constant | 2 | 8 |" in output and "| wsd | 2 | 8 |" in output


def test_fine_tune_benchmark_quick():
    output = run_quick("bench_fine_tune.py")
    assert "| shipped kitty-64 |" in output and "| after 2 steps |" in output
    shipped, after = [line for line in output.splitlines() if line.startswith("| shipped") or line.startswith("| after")]
    assert set(shipped.split("|")[4].split()) == {"0.0"}  # the shipped cats against themselves
    assert any(float(change) > 0 for change in after.split("|")[4].split())  # two steps changed the cats


def test_memory_benchmark_quick():
    output = run_quick("bench_memory.py")
    assert_has_table(output)
    assert "| tiny | 4 |" in output
