"""`kittyterm vary` (SDEdit variations of a picture) and `kittyterm morph` (slerp between two
seeds), with the shared trained model; slerp and the SDEdit grid against their closed forms."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from engine.generate import SeededNoise, SlerpNoise, sdedit_grid, slerp
from engine.samplers import sampler_timesteps
from engine.schedules import NoiseSchedule
from kittyterm.cats import METADATA_KEY, read_cat_info, read_metadata
from kittyterm.cli import app
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

STEPS = 4


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture
def kept_cat(trained_tiny, tmp_path):
    """cat-11.png, drawn by the shared trained model as `sample` draws it."""
    out = tmp_path / "kept"
    assert invoke("sample", "--out", out, "-n", 1, "--steps", STEPS, "--seed", 11, "--checkpoint", trained_tiny.checkpoint).exit_code == 0
    return out / "cat-11.png"


# ---------------------------------------------------------------------------- vary


def test_vary_at_strength_0_gives_the_picture_back_even_a_photo_of_another_size(trained_tiny, kept_cat, tmp_path):
    """Seen to catch: strength 0 still running the last grid step (t = 0 ≤ 0·T), which repaints the picture."""
    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo, quality=95)  # wider than high
    from engine.data import decode_image

    for picture, expected in ((kept_cat, pixels(kept_cat)), (photo, decode_image(photo, 32).astype(int))):
        out = tmp_path / f"vary-{picture.stem}"
        result = invoke("vary", picture, "--out", out, "-n", 2, "--strength", 0, "--seed", 5, "--steps", STEPS,
                        "--checkpoint", trained_tiny.checkpoint)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == [f"{picture.stem}-vary-5.png", f"{picture.stem}-vary-6.png"]
        for path in out.iterdir():
            assert np.array_equal(pixels(path), expected), path.name


def test_vary_at_strength_1_is_fresh_sampling_and_records_its_source(trained_tiny, kept_cat, tmp_path):
    """Seen to catch: x_T keeping a trace √ᾱ_T·x0 of the picture (strength 1 then drew cats up to
    8 levels off `sample`'s)."""
    fresh, varied = tmp_path / "fresh", tmp_path / "varied"
    model = ["--steps", STEPS, "--checkpoint", trained_tiny.checkpoint]
    assert invoke("sample", "--out", fresh, "-n", 2, "--seed", 20, *model).exit_code == 0
    result = invoke("vary", kept_cat, "--out", varied, "-n", 2, "--strength", 1, "--seed", 20, *model)
    assert result.exit_code == 0, result.output
    for seed in (20, 21):
        cat, variation = pixels(fresh / f"cat-{seed}.png"), pixels(varied / f"cat-11-vary-{seed}.png")
        assert np.array_equal(cat, variation)
    info, meta = read_cat_info(varied / "cat-11-vary-21.png"), read_metadata(varied / "cat-11-vary-21.png")
    assert (info.seed, info.sampler, info.steps) == (21, "dpm++sde", STEPS) and info.model_sha256 == read_cat_info(kept_cat).model_sha256
    assert meta["source"] == "cat-11.png" and meta["strength"] == 1.0
    assert meta["source_sha256"] == hashlib.sha256(kept_cat.read_bytes()).hexdigest()


def test_vary_changes_the_picture_more_as_the_strength_rises(trained_tiny, kept_cat, tmp_path):
    """Seen to catch: the variation started from pure noise, forgetting the picture."""
    model = ["--steps", 10, "--checkpoint", trained_tiny.checkpoint, "--seed", 30, "-n", 3]
    for strength in (0.25, 0.5):
        assert invoke("vary", kept_cat, "--out", tmp_path / str(strength), "--strength", strength, *model).exit_code == 0
    assert invoke("sample", "--out", tmp_path / "fresh", *model).exit_code == 0
    source = pixels(kept_cat)
    for seed in (30, 31, 32):
        weak, strong = (pixels(tmp_path / s / f"cat-11-vary-{seed}.png") for s in ("0.25", "0.5"))
        cat = pixels(tmp_path / "fresh" / f"cat-{seed}.png")
        changed = [np.abs(image - source).mean() for image in (weak, strong, cat)]
        assert 0 < changed[0] < changed[1] < changed[2] and changed[0] < 0.5 * changed[2], (seed, changed)
        assert read_metadata(tmp_path / "0.5" / f"cat-11-vary-{seed}.png")["strength"] == 0.5


@pytest.mark.parametrize("content,words", [(b"not a picture", "not a recognised image"), (None, "No such file"),
                                           ("truncated", "corrupt image")])
def test_vary_refuses_a_bad_picture_in_one_line_writing_nothing(trained_tiny, kept_cat, tmp_path, content, words):
    """Seen to catch: the output folder created before the picture was read (left behind, empty)."""
    picture = tmp_path / "bad.png"
    if content == "truncated":
        picture.write_bytes(kept_cat.read_bytes()[:200])
    elif content is not None:
        picture.write_bytes(content)
    result = invoke("vary", picture, "--out", tmp_path / "out", "--checkpoint", trained_tiny.checkpoint)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and str(picture) in errors[0], result.output
    assert not (tmp_path / "out").exists()


def test_sdedit_grid_keeps_the_timesteps_below_the_strength():
    """Seen to catch: `≤` for `<` (strength 0 kept t = 0)."""
    grid = sampler_timesteps("ddim", NoiseSchedule(), 11)  # 999, 899, …, 0
    assert sdedit_grid(grid, 1.0, 1000) == grid
    assert sdedit_grid(grid, 0.0, 1000) == []
    assert grid[5] == 500 and sdedit_grid(grid, 0.5, 1000) == [400, 300, 200, 100, 0]
    assert sdedit_grid(grid, 0.501, 1000) == [500, 400, 300, 200, 100, 0]
    with pytest.raises(ValueError):
        sdedit_grid(grid, 1.5, 1000)


# ---------------------------------------------------------------------------- morph


def test_morph_ends_on_the_two_seeds_cats_and_writes_a_gif(trained_tiny, tmp_path):
    """Seen to catch: both ends' noise drawn from seed A's generator (the last frame then not
    seed B's cat)."""
    model = ["--steps", STEPS, "--checkpoint", trained_tiny.checkpoint]
    assert invoke("sample", "--out", tmp_path / "cats", "-n", 1, "--seed", 3, *model).exit_code == 0
    assert invoke("sample", "--out", tmp_path / "cats", "-n", 1, "--seed", 9, *model).exit_code == 0
    result = invoke("morph", 3, 9, "--out", tmp_path / "morph", "--frames", 5, "--gif", *model)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "morph").iterdir())
    assert names == [f"morph-3-9-0{k}.png" for k in range(5)] + ["morph-3-9.gif"]
    frames = [pixels(tmp_path / "morph" / f"morph-3-9-0{k}.png") for k in range(5)]
    first, last = pixels(tmp_path / "cats" / "cat-3.png"), pixels(tmp_path / "cats" / "cat-9.png")
    assert np.abs(frames[0] - first).max() <= 2 and np.abs(frames[-1] - last).max() <= 2  # fp32 in another batch: equal or a unit off
    middle = frames[2]
    assert np.abs(middle - first).mean() > 5 and np.abs(middle - last).mean() > 5
    meta = read_metadata(tmp_path / "morph" / "morph-3-9-02.png")
    assert meta["morph"] == [3, 9] and meta["fraction"] == 0.5 and meta["frame"] == 2 and meta["steps"] == STEPS
    assert read_cat_info(tmp_path / "morph" / "morph-3-9-02.png") is None  # no one seed made it
    with Image.open(tmp_path / "morph" / "morph-3-9.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (256, 256)  # there and back: 0 1 2 3 4 3 2 1
        assert json.loads(gif.info["comment"])["morph"] == [3, 9]


def test_a_second_morph_of_the_same_cats_takes_one_new_name_for_all_its_files(trained_tiny, tmp_path):
    """Seen: `morph 1 2 --frames 2` then `--frames 3` in one folder gave morph-1-2-00-2.png,
    morph-1-2-01-2.png and morph-1-2-02.png, the last looking like the first morph's."""
    model = ["--steps", 1, "--checkpoint", trained_tiny.checkpoint, "--out", tmp_path]
    assert invoke("morph", 1, 2, "--frames", 2, "--gif", *model).exit_code == 0
    result = invoke("morph", 1, 2, "--frames", 3, "--gif", *model)
    assert result.exit_code == 0, result.output
    first = ["morph-1-2-00.png", "morph-1-2-01.png", "morph-1-2.gif"]
    second = ["morph-1-2-2-00.png", "morph-1-2-2-01.png", "morph-1-2-2-02.png", "morph-1-2-2.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(first + second)
    assert read_metadata(tmp_path / "morph-1-2-2-02.png")["frames"] == 3


def test_morph_refuses_two_cats_of_different_models(tmp_path):
    """Seen to catch: a morph between cats of two models drew both ends with the first cat's
    model, so it never reached the second cat."""
    from kittyterm.cats import CatInfo, save_cat
    from kittyterm.errors import UserError
    from kittyterm.jobs.variations import morph_ends

    image = np.zeros((3, 8, 8), np.uint8)
    one = save_cat(tmp_path, image, CatInfo(1, "dpm++sde", 15, "a" * 64, "kitty-64.safetensors @ step 9"), stem="one")
    same = save_cat(tmp_path, image, CatInfo(2, "dpm++sde", 15, "a" * 64, "kitty-64.safetensors @ step 9"), stem="same")
    other = save_cat(tmp_path, image, CatInfo(3, "dpm++sde", 15, "b" * 64, "mine.safetensors @ step 5"), stem="other")
    ema = save_cat(tmp_path, image, CatInfo(4, "dpm++sde", 15, "", "tiny-cats EMA @ step 40"), stem="ema")
    assert [info.seed for info in morph_ends(one, same)] == [1, 2]
    for second, words in ((other, "mine.safetensors @ step 5"), (ema, "tiny-cats EMA @ step 40")):
        with pytest.raises(UserError, match="different models") as refused:
            morph_ends(one, second)
        assert "kitty-64.safetensors @ step 9" in str(refused.value) and words in str(refused.value)


def test_slerp_against_the_closed_form():
    """Seen to catch: a straight line in place of the arc (its middle shorter by √2)."""
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for f in (0.0, 0.25, 0.5, 0.9, 1.0):
        expected = torch.tensor([math.cos(f * math.pi / 2), math.sin(f * math.pi / 2), 0.0])
        assert torch.allclose(slerp(a, b, f), expected, atol=1e-7)
        assert abs(float(slerp(3 * a, 3 * b, f).norm()) - 3) < 1e-6  # orthogonal, equal norms: the norm is kept
    x, y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(slerp(x, y, 0.0), x) and torch.equal(slerp(x, y, 1.0), y)  # exactly the two ends
    theta = math.acos(float((x.flatten() @ y.flatten()) / (x.norm() * y.norm())))
    closed = (math.sin(0.3 * theta) * x + math.sin(0.7 * theta) * y) / math.sin(theta)
    assert torch.allclose(slerp(x, y, 0.7), closed, atol=1e-5)
    assert torch.equal(slerp(x, 2 * x, 0.5), 1.5 * x)  # parallel: the straight line


def test_slerp_noise_draws_each_seeds_own_stream_at_the_ends():
    """Seen to catch: both ends drawn from one generator (seed B's stream shifted by seed A's draws)."""
    shape = (3, 4, 4)
    morph, a, b = SlerpNoise(5, 6, [0.0, 0.5, 1.0], shape), SeededNoise([5], shape), SeededNoise([6], shape)
    for _ in range(3):  # x_T, then the stochastic samplers' draws
        draw, first, last = morph.draw(), a.draw()[0], b.draw()[0]
        assert torch.equal(draw[0], first) and torch.equal(draw[2], last)
        assert torch.allclose(draw[1], slerp(first, last, 0.5))
    assert morph.seeds == (5, 6) and METADATA_KEY == "kittyterm"
