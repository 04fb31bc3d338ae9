import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kittyterm.cli import app
from kittyterm.cats import read_cat_info

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


def test_train_then_resume_carries_on(trained, synthetic_folder):
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 2)
    assert result.exit_code == 0, result.output
    assert "resuming run tiny-synthetic at step 3" in result.output
    from engine.checkpoint import read_checkpoint

    tensors, metadata = read_checkpoint(trained)
    assert metadata["step"] == "5" and len(tensors["history.loss"]) == 5


def test_fresh_keeps_the_old_run(trained, synthetic_folder):
    result = invoke("train", "--data", synthetic_folder, "--preset", "tiny", "--steps", 1, "--fresh")
    assert result.exit_code == 0, result.output
    archived = [p for p in trained.parent.parent.iterdir() if p.name.startswith("tiny-synthetic.")]
    assert len(archived) == 1 and (archived[0] / "checkpoint.safetensors").exists()


def test_sample_writes_pngs_with_metadata_and_never_overwrites(trained, tmp_path):
    out = tmp_path / "cats"
    result = invoke("sample", "--out", out, "-n", 3, "--steps", 5, "--seed", 7, "--grid")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cat-7.png", "cat-8.png", "cat-9.png", "grid-7.png"]
    info = read_cat_info(out / "cat-8.png")
    assert (info.seed, info.sampler, info.steps) == (8, "dpm++sde", 5) and len(info.model_sha256) == 64
    first = np.asarray(Image.open(out / "cat-7.png"))
    assert first.shape == (32, 32, 3)

    again = invoke("sample", "--out", out, "-n", 1, "--steps", 5, "--seed", 7, "--checkpoint", trained)
    assert again.exit_code == 0, again.output
    assert (out / "cat-7-2.png").exists()
    assert np.array_equal(np.asarray(Image.open(out / "cat-7-2.png")), first)  # same seed, same cat
    assert not np.array_equal(np.asarray(Image.open(out / "cat-8.png")), first)  # another seed, another cat
    other = invoke("sample", "--out", out, "-n", 1, "--steps", 5, "--seed", 7, "--sampler", "ddim")
    assert other.exit_code == 0 and read_cat_info(out / "cat-7-3.png").sampler == "ddim"


def test_sample_in_chunks_matches_one_batch(trained, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke("sample", "--out", a, "-n", 5, "--steps", 3, "--seed", 1).exit_code == 0
    assert invoke("sample", "--out", b, "-n", 5, "--steps", 3, "--seed", 1, "--batch-size", 2).exit_code == 0
    for i in range(1, 6):
        x = np.asarray(Image.open(a / f"cat-{i}.png")).astype(int)
        y = np.asarray(Image.open(b / f"cat-{i}.png")).astype(int)
        assert np.abs(x - y).max() <= 1


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


def test_export_writes_small_weights_that_sample(trained, tmp_path):
    weights = tmp_path / "w.safetensors"
    result = invoke("export", "--checkpoint", trained, "--out", weights)
    assert result.exit_code == 0, result.output
    assert weights.stat().st_size < trained.stat().st_size / 3
    assert invoke("export", "--checkpoint", trained, "--out", weights).exit_code == 1  # never overwrites
    out = tmp_path / "cats"
    assert invoke("sample", "--out", out, "-n", 1, "--steps", 2, "--checkpoint", weights).exit_code == 0


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "sample", "export"):
        assert command in result.output


def test_settings_in_png_are_json(trained, tmp_path):
    out = tmp_path / "cats"
    invoke("sample", "--out", out, "-n", 1, "--steps", 2, "--seed", 3)
    text = Image.open(out / "cat-3.png").info["kittyterm"]
    assert json.loads(text)["seed"] == 3
