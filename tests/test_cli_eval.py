"""`kittyterm eval` end to end, with a cheap stand-in for the Inception network."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from engine import fid
from engine.checkpoint import export_weights
from engine.schedules import ScheduleConfig
from engine.unet import PRESETS, UNet
from kittyterm.cli import app
from kittyterm.jobs.timelapse import RunFrames
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

runner = CliRunner()


class PixelFeatures:
    """Features = a fixed random projection of the 299×299 input, so FID behaves like FID."""

    batch_size = 8
    identity = "pixel-features-test"

    def __init__(self, device="cpu", batch_size=8, weights=None):
        self.projection = torch.randn(3 * 16 * 16, 24, generator=torch.Generator().manual_seed(0))

    def __call__(self, batch):
        small = torch.nn.functional.adaptive_avg_pool2d(batch, 16).flatten(1)
        return (small @ self.projection).double().numpy()


@pytest.fixture
def pixel_features(monkeypatch):
    monkeypatch.setattr(fid, "InceptionFeatures", PixelFeatures)


def write_folder(path, seed, count=40, brightness=0):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = (rng.integers(0, 200, (32, 32, 3)) + brightness).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(path / f"{i}.png")
    return path


def run_eval(*args):
    result = runner.invoke(app, ["eval", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_eval_of_folders_ranks_the_closer_set_better(tmp_path, pixel_features):
    reference = write_folder(tmp_path / "ref", 0)
    same = run_eval("--reference", reference, "--images", reference)
    close = run_eval("--reference", reference, "--images", write_folder(tmp_path / "close", 1))
    far = run_eval("--reference", reference, "--images", write_folder(tmp_path / "far", 2, brightness=60))
    assert 0 <= same["fid"] < 1e-6  # rounding never takes it below 0
    assert same["fid"] < close["fid"] < far["fid"]
    assert close["kid_mean"] < far["kid_mean"]
    assert close["n_generated"] == 40 and close["n_reference"] == 40


def test_eval_of_fresh_samples_scores_a_trained_model_better_than_an_untrained_one(tmp_path, pixel_features, synthetic_folder, trained_tiny):
    """The model trained on the reference images scores far better than an untrained one, and
    drawing the samples inside `eval` scores exactly what `sample` writes for the same seeds."""
    untrained = tmp_path / "untrained.safetensors"
    export_weights(untrained, UNet(PRESETS["tiny"]).state_dict(), PRESETS["tiny"], ScheduleConfig())
    sampling = ("-n", 8, "--steps", 25, "--seed", 0, "--batch-size", 4)
    trained = run_eval("--reference", synthetic_folder, "--checkpoint", trained_tiny.checkpoint, *sampling)
    fresh = run_eval("--reference", synthetic_folder, "--checkpoint", untrained, *sampling)
    assert trained["n_generated"] == fresh["n_generated"] == 8 and trained["n_reference"] == 24
    assert trained["fid"] < 0.75 * fresh["fid"]  # about 0.56

    out = tmp_path / "cats"
    written = runner.invoke(app, ["sample", "--out", str(out), "--checkpoint", str(trained_tiny.checkpoint), *map(str, sampling)])
    assert written.exit_code == 0, written.output
    from_files = run_eval("--reference", synthetic_folder, "--images", out)
    assert from_files["n_generated"] == 8
    assert from_files["fid"] == pytest.approx(trained["fid"], rel=1e-6)


def test_eval_without_the_inception_weights_is_one_clean_line(tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise fid.EvalUnavailable(fid.WEIGHTS_MISSING)

    monkeypatch.setattr(fid, "InceptionFeatures", unavailable)
    reference = write_folder(tmp_path / "ref", 0, count=2)
    result = runner.invoke(app, ["eval", "--reference", str(reference), "--images", str(reference)])
    assert result.exit_code == 1 and "Inception weights" in result.output and "Traceback" not in result.output


def test_eval_argument_errors(tmp_path):
    result = runner.invoke(app, ["eval", "--reference", str(tmp_path / "missing"), "--images", str(tmp_path)])
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("option", ["--reference", "--images"])
def test_eval_of_a_folder_of_one_image_is_one_clean_line(tmp_path, pixel_features, option):
    """Seen: a one-image --reference ended in "unexpected ValueError: KID needs at least 2 samples"."""
    folders = {"--reference": write_folder(tmp_path / "ref", 0), "--images": write_folder(tmp_path / "gen", 1)}
    folders[option] = write_folder(tmp_path / "one", 2, count=1)
    result = runner.invoke(app, ["eval", "--reference", str(folders["--reference"]), "--images", str(folders["--images"])])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert errors == [f"error: {option} {tmp_path / 'one'}: only 1 image to score, and FID and KID need 2 or more"], result.output


def eval_output(*args):
    result = runner.invoke(app, ["eval", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_eval_scores_each_cat_once_not_the_sheets_and_animations_beside_it(tmp_path, pixel_features, synthetic_folder, trained_tiny, kittyterm_home):
    """Seen to catch: `sample --gif --grid` output scored as 2N + 1 cats (the GIFs start as noise)."""
    out, only_cats = tmp_path / "cats", tmp_path / "only-cats"
    drawing = ["--checkpoint", trained_tiny.checkpoint, "-n", 3, "--steps", 3, "--seed", 0]
    for folder, extra in ((out, ["--gif", "--grid"]), (only_cats, [])):
        written = runner.invoke(app, ["sample", "--out", str(folder), *map(str, drawing + extra)])
        assert written.exit_code == 0, written.output
    RunFrames(out, "dpm++sde", 3).write(10, np.zeros((4, 3, 32, 32), np.uint8))  # a timelapse strip: step-000010.png
    assert len(list(out.iterdir())) == 8
    everything, said = eval_output("--reference", synthetic_folder, "--images", out)
    cats_only, _ = eval_output("--reference", synthetic_folder, "--images", only_cats)
    assert everything["n_generated"] == 3 and everything["fid"] == pytest.approx(cats_only["fid"], rel=1e-9)
    assert ("--images: left out 5 files: cat-0.gif, cat-1.gif, cat-2.gif (an animation, not one image); grid-0.png (a contact sheet); "
            "step-000010.png (a timelapse strip)") in said


def test_eval_leaves_out_unreadable_files_by_name_and_goes_on(tmp_path, pixel_features, kittyterm_home):
    reference = write_folder(tmp_path / "ref", 0)
    images = write_folder(tmp_path / "images", 1)
    clean, _ = eval_output("--reference", reference, "--images", images)
    (reference / "notes.jpg").write_text("not a picture")
    (images / "empty.png").write_bytes(b"")
    result, said = eval_output("--reference", reference, "--images", images)
    assert result["fid"] == pytest.approx(clean["fid"], rel=1e-9) and result["n_reference"] == 40 == result["n_generated"]
    assert "--reference: left out 1 file: notes.jpg (not a recognised image)" in said
    assert "--images: left out 1 file: empty.png (empty file)" in said
    assert "FID from 40 images reads higher" in said


def test_eval_with_an_unwritable_cache_still_scores(tmp_path, pixel_features, kittyterm_home):
    reference = write_folder(tmp_path / "ref", 0)
    (kittyterm_home / "cache").mkdir(parents=True)
    (kittyterm_home / "cache" / "fid").write_text("a file where the cache folder would go")
    result, _ = eval_output("--reference", reference, "--images", reference)
    assert abs(result["fid"]) < 1e-6


def test_eval_refuses_a_bad_model_before_reading_any_image(tmp_path, pixel_features, kittyterm_home, monkeypatch):
    read = []
    monkeypatch.setattr(fid, "readable_images", lambda *args: read.append(args))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    reference = write_folder(tmp_path / "ref", 0, count=2)
    result = runner.invoke(app, ["eval", "--reference", str(reference), "--checkpoint", str(bad)])
    assert result.exit_code == 1 and "not a readable safetensors" in result.output and read == []
