import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from kittyterm.cats import read_cat_info
from kittyterm.cli import app
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def trained(synthetic_folder, kittyterm_home):
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 3, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    checkpoint = kittyterm_home / "data" / "runs" / "tiny-synthetic" / "checkpoint.safetensors"
    assert checkpoint.exists()
    return checkpoint


@pytest.fixture
def latest_run(trained_tiny, kittyterm_home):
    """The shared trained model, installed as the latest training run (what `sample` uses by default)."""
    run = kittyterm_home / "data" / "runs" / "tiny-synthetic"
    run.mkdir(parents=True)
    shutil.copyfile(trained_tiny.checkpoint, run / "checkpoint.safetensors")
    return trained_tiny


def test_train_then_resume_carries_on(trained, synthetic_folder):
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 5)
    assert result.exit_code == 0, result.output
    assert "resuming run tiny-synthetic at step 3" in result.output
    from engine.checkpoint import read_checkpoint

    tensors, metadata = read_checkpoint(trained)
    assert metadata["step"] == "5" and len(tensors["history.loss"]) == 5


def test_steps_counts_the_whole_run_so_the_same_command_finishes_it(trained, synthetic_folder):
    """Seen to catch: `--steps N` counted from where a resumed run stood, so the same command
    after Ctrl+C trained N more steps and moved the learning rate's horizon past the planned end."""
    before = trained.read_bytes()
    again = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 3)
    assert again.exit_code == 0 and "has taken 3 steps, the --steps 3 asked for: nothing to train" in again.output, again.output
    assert "resuming" not in again.output
    assert trained.read_bytes() == before


def test_train_refuses_a_run_that_lost_its_data_order(trained, synthetic_folder):
    from engine.checkpoint import read_checkpoint, save_checkpoint

    tensors, metadata = read_checkpoint(trained)
    save_checkpoint(trained, {k: v for k, v in tensors.items() if not k.startswith("batches.")}, metadata)
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 1)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "lacks its data order" in result.output and "--fresh" in result.output
    assert read_checkpoint(trained)[1]["step"] == "3"  # left as it was


def test_minutes_budget_stops_training(synthetic_folder, kittyterm_home):
    """`--minutes` alone ends the run: without a working budget this would train until killed.
    Seen to catch: `--minutes` not passed on to the training thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KITTYTERM_HOME": str(kittyterm_home)}
    command = [sys.executable, "-m", "kittyterm", "train", "--data", str(synthetic_folder), "--preset", "tiny",
               "--batch-size", "4", "--device", "cpu", "--minutes", "0.01"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    checkpoint = kittyterm_home / "data" / "runs" / "tiny-synthetic" / "checkpoint.safetensors"
    from engine.checkpoint import read_checkpoint

    assert int(read_checkpoint(checkpoint)[1]["step"]) >= 1


def test_fresh_keeps_the_old_run(trained, synthetic_folder):
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 1, "--fresh")
    assert result.exit_code == 0, result.output
    archived = [p for p in trained.parent.parent.iterdir() if p.name.startswith("tiny-synthetic.")]
    assert len(archived) == 1 and (archived[0] / "checkpoint.safetensors").exists()


def read_cats(folder, seeds, suffix=""):
    return np.stack([np.asarray(Image.open(folder / f"cat-{seed}{suffix}.png")) for seed in seeds])


def test_sample_writes_pngs_with_metadata_and_never_overwrites(latest_run, tmp_path):
    """Seen to catch: `load_model` leaving the weights unloaded (an untrained model's cats)."""
    out = tmp_path / "cats"
    result = invoke("sample", "--out", out, "-n", 3, "--steps", 5, "--seed", 7, "--grid")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cat-7.png", "cat-8.png", "cat-9.png", "grid-7.png"]
    info = read_cat_info(out / "cat-8.png")
    assert (info.seed, info.sampler, info.steps) == (8, "dpm++sde", 5) and len(info.model_sha256) == 64
    first = read_cats(out, [7, 8, 9])
    assert first.shape == (3, 32, 32, 3)
    assert latest_run.distance_from_fresh(first, [7, 8, 9], "dpm++sde", 5) > 20  # drawn by the trained weights

    again = invoke("sample", "--out", out, "-n", 3, "--steps", 5, "--seed", 7, "--checkpoint", latest_run.checkpoint)
    assert again.exit_code == 0, again.output
    assert np.array_equal(read_cats(out, [7, 8, 9], "-2"), first)  # same seeds, same cats, nothing overwritten
    assert np.abs(first[0].astype(int) - first[1]).mean() > 20  # another seed, another cat
    other = invoke("sample", "--out", out, "-n", 1, "--steps", 5, "--seed", 7, "--sampler", "ddim")
    assert other.exit_code == 0 and read_cat_info(out / "cat-7-3.png").sampler == "ddim"
    assert "1 cat in " in other.output and "3 cats in " in again.output


def test_sample_in_chunks_matches_one_batch(latest_run, tmp_path):
    """Seen to catch: chunks that drop a seed or pair seeds with the wrong images."""
    a, b = tmp_path / "a", tmp_path / "b"
    seeds = [1, 2, 3, 4, 5]
    assert invoke("sample", "--out", a, "-n", 5, "--steps", 25, "--seed", 1).exit_code == 0
    assert invoke("sample", "--out", b, "-n", 5, "--steps", 25, "--seed", 1, "--batch-size", 2).exit_code == 0
    assert sorted(p.name for p in b.iterdir()) == [f"cat-{seed}.png" for seed in seeds]
    whole, chunked = read_cats(a, seeds).astype(int), read_cats(b, seeds).astype(int)
    assert latest_run.distance_from_fresh(whole, seeds, "dpm++sde", 25) > 20
    # Equal in fp32; bf16 kernels round differently for other batch sizes (a unit at most at 25 steps).
    for seed, x, y in zip(seeds, whole, chunked):
        assert np.abs(x - y).max() <= 2 and np.abs(x - y).mean() < 0.1, seed


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--data", "/nonexistent/folder"], "does not exist"),
        (["sample", "--out", "{tmp}/o", "--checkpoint", "/nonexistent.safetensors"], "no model"),
        (["sample", "--out", "{file}"], "not a folder"),
        (["sample", "--out", "{tmp}/o", "--checkpoint", "{file}"], "not a readable safetensors"),
    ],
)
def test_bad_input_is_one_clean_line(args, message, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("hello")
    args = [a.format(tmp=tmp_path, file=file) for a in args]
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["sample", "morph"])
def test_an_interrupted_drawing_removes_only_the_empty_folder_it_created(latest_run, tmp_path, monkeypatch, command):
    """Seen to catch: Ctrl+C during `sample --out new/` left an empty new/ behind."""
    import kittyterm.jobs.sampling
    import kittyterm.jobs.variations

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kittyterm.jobs.sampling, "draw_to_folder", interrupted)
    monkeypatch.setattr(kittyterm.jobs.variations, "to_folder", interrupted)
    arguments = {"sample": ["sample", "-n", 1], "morph": ["morph", 1, 2, "--frames", 2]}[command]
    new, kept = tmp_path / "new" / "cats", tmp_path / "kept"
    kept.mkdir()
    for out in (new, kept):
        result = invoke(*arguments, "--steps", 2, "--out", out)
        assert result.exit_code == 130, result.output  # as Ctrl+C exits
    assert not new.exists() and new.parent.is_dir() and kept.is_dir()


def test_a_damaged_latest_run_names_the_way_to_another_model(latest_run, kittyterm_home, tmp_path):
    checkpoint = kittyterm_home / "data" / "runs" / "tiny-synthetic" / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
    result = invoke("sample", "--out", tmp_path / "cats", "-n", 1)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not a readable safetensors" in result.output and "--checkpoint picks another" in result.output
    assert not (tmp_path / "cats").exists()


@pytest.mark.parametrize(
    "args", [["sample", "--out", "x", "-n", "0"], ["sample", "--out", "x", "--steps", "-3"], ["train", "--data", "x", "--steps", "abc"], ["sample", "--out", "x", "--sampler", "euler"]]
)
def test_bad_option_values_are_usage_errors(args):
    result = invoke(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_empty_data_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("train", "--data", empty, "--preset", "tiny", "--steps", 1)
    assert result.exit_code == 1 and "no images" in result.output


def test_export_writes_small_weights_that_sample(latest_run, tmp_path):
    checkpoint = latest_run.checkpoint
    weights = tmp_path / "w.safetensors"
    result = invoke("export", "--checkpoint", checkpoint, "--out", weights)
    assert result.exit_code == 0, result.output
    assert weights.stat().st_size < checkpoint.stat().st_size / 3
    assert invoke("export", "--checkpoint", checkpoint, "--out", weights).exit_code == 1  # never overwrites
    from_export, from_checkpoint = tmp_path / "from-export", tmp_path / "from-checkpoint"
    for out, model in ((from_export, weights), (from_checkpoint, checkpoint)):
        assert invoke("sample", "--out", out, "-n", 4, "--steps", 25, "--seed", 1, "--checkpoint", model).exit_code == 0
    exported, original = read_cats(from_export, [1, 2, 3, 4]).astype(int), read_cats(from_checkpoint, [1, 2, 3, 4]).astype(int)
    assert latest_run.distance_from_fresh(exported, [1, 2, 3, 4], "dpm++sde", 25) > 20
    assert np.abs(exported - original).mean() < 1  # fp16 weights: the same cats, give or take rounding


@pytest.mark.parametrize("others,chosen,expected", [(0, None, None), (2, None, "PASSIVE"), (2, "ACTIVE", "ACTIVE")])
def test_the_command_line_lets_idle_openmp_threads_sleep_beside_other_work(others, chosen, expected):
    """`kittyterm` picks the OpenMP wait policy before torch is imported (BENCHMARKS.md, "Beside
    another job"): passive when other tasks are running, libgomp's own on an idle machine, and an
    OMP_WAIT_POLICY the user set is kept."""
    script = (
        "import os, sys\n"
        "import kittyterm.openmp\n"
        f"kittyterm.openmp.others_running = lambda: {others}\n"
        "from kittyterm.cli import main\n"
        "print('torch' in sys.modules)\n"
        "sys.argv = ['kittyterm', '--version']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if chosen:
        env["OMP_WAIT_POLICY"] = chosen
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    lines = result.stdout.split()
    assert lines[0] == "False" and lines[-1] == str(expected), result.stdout + result.stderr


def test_others_running_counts_the_tasks_that_stay_runnable(tmp_path, monkeypatch):
    from kittyterm import openmp

    reads = iter(["0.5 0.4 0.3 4/90 100", "0.5 0.4 0.3 2/90 101", "0.5 0.4 0.3 3/90 102"])

    class Loadavg:
        def read_text(self):
            return next(reads)

    monkeypatch.setattr(openmp, "LOADAVG", Loadavg())
    assert openmp.others_running(interval=0) == 1  # the fewest runnable (2), less this process
    monkeypatch.setattr(openmp, "LOADAVG", tmp_path / "missing")
    assert openmp.others_running(interval=0) == 0


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "sample", "export"):
        assert command in result.output


@pytest.mark.parametrize("command", sorted(typer.main.get_command(app).commands))
def test_help_shows_every_option_whole_at_80_columns(command):
    """Seen to catch: `train --help` at 80 columns cut --checkpoint-minutes, --checkpoint-every and
    --timelapse-every to "--checkpoint-mi…" (the --x/--no-x columns took their width)."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": None})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    options = typer.main.get_command(app).commands[command].params
    names = [name for param in options if param.param_type_name == "option" for name in param.opts if name.startswith("--")]
    assert names and all(name in result.output for name in names), result.output


def test_settings_in_png_are_json(latest_run, tmp_path):
    out = tmp_path / "cats"
    assert invoke("sample", "--out", out, "-n", 1, "--steps", 2, "--seed", 3).exit_code == 0
    settings = json.loads(Image.open(out / "cat-3.png").info["kittyterm"])
    assert settings["seed"] == 3 and settings["steps"] == 2 and settings["sampler"] == "dpm++sde"
    assert settings["model_sha256"] == hashlib.sha256(latest_run.checkpoint.read_bytes()).hexdigest()


def test_a_step_budget_is_the_horizon_the_learning_rate_decays_to(trained, synthetic_folder):
    """Seen to catch: `train --steps` leaving the run open-ended, so its rate never decays."""
    from engine.checkpoint import read_checkpoint

    metadata = read_checkpoint(trained)[1]
    assert float(metadata["horizon"]) == 3.0
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 5)
    assert result.exit_code == 0, result.output
    assert float(read_checkpoint(trained)[1]["horizon"]) == 5.0  # the run now ends at step 5


def test_a_folder_that_cannot_train_names_its_files_and_leaves_no_run(kittyterm_home, tmp_path):
    """Seen: `train` on a folder of unreadable files said only "(1 files skipped)", and a failed
    start left a run folder (lock, run.json) that `kittyterm timelapse` then listed as a run."""
    from kittyterm import runs

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notacat.jpg").write_text("hello")
    result = invoke("train", "--data", bad, "--steps", 1, "--device", "cpu")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: no usable images in {bad}: notacat.jpg (not a recognised image)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("train", "--data", empty, "--steps", 1, "--device", "cpu").exit_code == 1
    assert runs.active_runs() == []

    Image.new("RGB", (32, 32), (200, 120, 40)).save(bad / "cat.png")
    mixed = invoke("train", "--data", bad, "--steps", 1, "--device", "cpu", "--batch-size", 1)
    assert mixed.exit_code == 0, mixed.output
    assert "warning: skipped 1 unusable file: notacat.jpg (not a recognised image)" in mixed.output
    assert runs.active_runs() == ["tiny-bad"]


def test_the_commands_train_suggests_run_as_printed(synthetic_folder, kittyterm_home):
    """Seen: `--run "sp ace"` printed `kittyterm timelapse sp ace --out sp ace.gif`, which a shell
    splits into other arguments."""
    import shlex

    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 1, "--batch-size", 2, "--run", "sp [ace]")
    assert result.exit_code == 0, result.output
    suggested = [line.split(": ", 1)[1] for line in result.output.splitlines() if line.startswith(("sample it with:", "timelapse:"))]
    assert [shlex.split(command) for command in suggested] == [
        ["kittyterm", "sample", "--checkpoint", str(kittyterm_home / "data" / "runs" / "sp [ace]" / "checkpoint.safetensors"), "--out", "cats/"],
        ["kittyterm", "timelapse", "sp [ace]", "--out", "sp [ace].gif"],
    ]


def test_the_app_without_a_terminal_is_one_line_not_a_hang(kittyterm_home, tmp_path):
    """Seen: `kittyterm </dev/null >out` ran until killed, writing escape codes into the file."""
    out = tmp_path / "out"
    env = {**os.environ, "KITTYTERM_HOME": str(kittyterm_home)}
    with open(os.devnull) as stdin, open(out, "w") as stdout:
        done = subprocess.run([sys.executable, "-m", "kittyterm"], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=60, text=True)
    assert done.returncode == 1 and out.read_text() == ""
    assert done.stderr.strip() == "error: the app needs a terminal to draw in and read keys from; in a script or a pipe, use a command (kittyterm --help)"


def test_a_cpu_batch_that_cannot_fit_in_memory_is_refused_before_anything(synthetic_folder, kittyterm_home, monkeypatch):
    """Seen: `train --batch-size 4096` on a CPU was killed by the kernel at 24 GB without a word,
    leaving a run folder behind."""
    from engine.unet import PRESETS, saved_for_backward
    from kittyterm.jobs import devices

    per_image = saved_for_backward(PRESETS["tiny"], 2) - saved_for_backward(PRESETS["tiny"], 1)
    monkeypatch.setattr(devices, "available_memory", lambda: 200 * per_image)
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--batch-size", 4096, "--device", "cpu")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    fits = int(result.output.split("--batch-size ")[-1].split()[0])
    assert "--batch-size 4096 would need about" in result.output and 100 < fits < 200  # numbers to paste: no commas
    assert not (kittyterm_home / "data" / "runs").exists()
    trained = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--batch-size", fits, "--steps", 1, "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    assert f"the batch of {fits} is larger than the" in trained.output and "every step repeats them" in trained.output


def test_ctrl_c_in_a_long_sample_says_what_it_kept(kittyterm_home, tmp_path):
    """Seen: Ctrl+C in `sample -n 100000` exited 130 without a word about the cats written."""
    import signal
    import time

    out = tmp_path / "many"
    env = {**os.environ, "KITTYTERM_HOME": str(kittyterm_home), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kittyterm", "sample", "--out", str(out), "-n", "100000", "--steps", "1",
               "--sampler", "ddim", "--batch-size", "1", "--seed", "5", "--device", "cpu"]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("cat-*.png"))) < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    kept = len(list(out.glob("cat-*.png")))
    assert child.returncode == 130 and kept >= 3, stderr
    said = [f"stopped after {count:,} cats of 100,000 (seeds 5–{4 + count}), kept in {out}" for count in (kept, kept - 1)]
    assert any(line in stderr for line in said), stderr  # one less if Ctrl+C came as a file was linked
