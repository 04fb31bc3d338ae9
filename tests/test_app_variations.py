"""Pilot tests of `a` (save the denoising as a GIF), and of `v` (variations) and `m` (morph) in
the gallery, with the shared trained model installed as the latest run."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
from PIL import Image

from kittyterm import cats, locations
from kittyterm.screens.gallery import GalleryScreen
from kittyterm.widgets.preview import CatGrid
from tests.test_app_support import (  # noqa: F401  (fixtures)
    home,
    make_app,
    one_torch_thread,
    tap,
    tiny_run,
    wait_for,
    wait_for_cats,
    wait_until_exited,
    write_gallery,
)

STEPS = 3  # the app tests' sampler steps (tests/test_app_support.py)


def status_of(app) -> str:
    return app.main_screen.status.text


def gif_frames(path) -> tuple[list[np.ndarray], list[int], dict]:
    """The frames of a GIF at the model's size (32 px; the GIF's are 256), the durations, the metadata."""
    with Image.open(path) as gif:
        scale = gif.size[0] // 32
        frames, durations = [], []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB"))[::scale, ::scale].astype(int))
            durations.append(gif.info["duration"])
        return frames, durations, json.loads(gif.info["comment"])


def loaded_run():
    from engine.checkpoint import load_model
    from kittyterm import runs

    return load_model(runs.checkpoint_path("tiny-cats"), "cpu")


def test_a_saves_the_selected_cats_denoising_as_shown(tiny_run, one_torch_thread):
    """Seen to catch: the GIF of cat 1 whichever cat was selected, and x̂0 frames recorded as x_t."""
    from engine.generate import generate, starting_noise
    from kittyterm.jobs.animation import hwc_uint8

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("a")
            assert "Nothing to save yet" in status_of(app)
            await tap(pilot, "s")
            await wait_for_cats(pilot)
            await pilot.press("right", "a")
            assert "Saved the denoising (xₜ) of cat 2/4 seed 2 to" in status_of(app)
            assert str(locations.gallery_dir() / "cat-2.gif") in status_of(app)
            await pilot.press("x", "a")
            assert str(locations.gallery_dir() / "cat-2-x0.gif") in status_of(app)
            shown = app.main_screen.query_one(CatGrid).images.copy()
            await tap(pilot, "q")
            await wait_until_exited(app)
        return shown

    shown = asyncio.run(scenario())
    loaded = loaded_run()
    expected = {"x_t": [hwc_uint8(starting_noise([1, 2, 3, 4], 32))[1]], "x0": [hwc_uint8(starting_noise([1, 2, 3, 4], 32))[1]]}

    def record(i, x_t, x0):
        expected["x_t"].append(hwc_uint8(x_t)[1])
        expected["x0"].append(hwc_uint8(x0)[1])

    generate(loaded.model, loaded.schedule, [1, 2, 3, 4], "dpm++sde", STEPS, callback=record)
    for name, shows in (("cat-2.gif", "x_t"), ("cat-2-x0.gif", "x0")):
        frames, durations, info = gif_frames(locations.gallery_dir() / name)
        assert len(frames) == STEPS + 1 and durations[-1] == 1000
        colours = [np.asarray(cats.gif_frame(f, held=i == STEPS).convert("RGB")).astype(int) for i, f in enumerate(expected[shows])]
        assert all(np.array_equal(frame, colour) for frame, colour in zip(frames, colours)), name
        assert info["seed"] == 2 and info["shows"] == shows and info["steps"] == STEPS and len(info["model_sha256"]) == 64
        assert np.abs(frames[-1] - shown[1]).mean() < 10  # ends on the cat shown (in a GIF's 256 colours)
    assert sorted(p.name for p in locations.gallery_dir().iterdir()) == ["cat-2-x0.gif", "cat-2.gif"]  # no PNG: the gallery lists kept cats


def test_v_in_the_gallery_shows_variations_of_the_selected_cat(tiny_run, one_torch_thread):
    """Seen to catch: variations of the first cat in the gallery whichever was selected."""
    from kittyterm.jobs import drawings, variations

    gallery = write_gallery(locations.gallery_dir(), 2)  # cat-101 is the newest: shown first

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g")
            assert isinstance(app.screen, GalleryScreen)
            await pilot.press("right", "v")  # cat-100
            assert app.screen is app.main_screen
            await wait_for_cats(pilot)
            assert "4 variations of cat-100.png in" in status_of(app)
            assert "variation 1/4 seed 1" in str(app.main_screen.query_one("#preview-caption").content)
            shown = app.main_screen.query_one(CatGrid).images.copy()
            await pilot.press("right", "k")
            assert "Kept cat-100-vary-2.png" in status_of(app)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return shown

    shown = asyncio.run(scenario())
    loaded = loaded_run()
    picture = variations.read_picture(gallery[0], 32)
    drawing = variations.variations(loaded.model, loaded.schedule, picture, [1, 2, 3, 4], "dpm++sde", STEPS, variations.STRENGTH)
    expected = drawings.draw(drawing, loaded.model, loaded.schedule, "cpu").transpose(0, 2, 3, 1)
    assert np.array_equal(shown, expected)
    meta = cats.read_metadata(locations.gallery_dir() / "cat-100-vary-2.png")
    assert meta["seed"] == 2 and meta["strength"] == variations.STRENGTH and meta["source"] == "cat-100.png"
    assert meta["source_sha256"] == picture.sha256 and len(meta["model_sha256"]) == 64


def test_m_in_the_gallery_morphs_into_the_next_cat_and_saves_the_gif(tiny_run, one_torch_thread):
    """Seen to catch: a morph drawn by the latest run's model instead of the one that made the
    cats (its ends then not the kept cats)."""
    import torch

    from engine.samplers import sampler_timesteps
    from engine.trainer import TrainConfig, Trainer
    from engine.unet import PRESETS
    from kittyterm import runs
    from kittyterm.jobs.models import ModelCache
    from kittyterm.jobs.sampling import draw_to_folder

    older = runs.checkpoint_path("untrained")  # an older run than tiny-cats, whose cats come from the seeds alone
    older.parent.mkdir(parents=True)
    with torch.random.fork_rng():
        Trainer(PRESETS["tiny"], torch.zeros((2, 3, 32, 32), dtype=torch.uint8), TrainConfig(batch_size=2), device="cpu").save(older)
    os.utime(older, (1_000_000_000, 1_000_000_000))
    folder = locations.gallery_dir()
    model = ModelCache().load(older)
    draw_to_folder(model, folder, [5, 6], "ddim", 2, sampler_timesteps("ddim", model.schedule, 2), "cpu", 2, model_name="untrained")
    for seed, stamp in ((5, 2_000_000_000), (6, 1_900_000_000)):  # cat-5 first, then cat-6
        os.utime(folder / f"cat-{seed}.png", (stamp, stamp))
    ends = [np.asarray(Image.open(folder / f"cat-{seed}.png")).astype(int) for seed in (5, 6)]

    async def scenario():
        app = make_app(None, session={"morph_frames": 4})
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.main_screen
            await pilot.press("g", "m")
            assert app.screen is screen
            await wait_for(pilot, lambda: "saved to" in status_of(app))
            assert "A 4-frame morph from seed 5 to 6" in status_of(app) and str(folder / "morph-5-6.gif") in status_of(app)
            batch = app.session.sampling.batch
            grid = screen.query_one(CatGrid)
            seen = set()
            await wait_for(pilot, lambda: seen.add(screen.morph_frame) or len(seen) == 4)  # it plays, frame by frame
            assert grid.images.shape == (1, 32, 32, 3)
            await pilot.press("k")
            assert "A morph is not kept" in status_of(app)
            await tap(pilot, "q")
            await wait_until_exited(app)
        return batch

    batch = asyncio.run(scenario())
    images = batch.images.transpose(0, 2, 3, 1).astype(int)
    assert np.abs(images[0] - ends[0]).max() <= 2 and np.abs(images[-1] - ends[1]).max() <= 2  # in another batch: a unit off at most
    assert tiny_run.distance_from_fresh(images[1:3], [5, 6], "ddim", 2) > 5  # between the two, not either cat
    assert batch.model_sha256 == cats.read_cat_info(folder / "cat-5.png").model_sha256
    frames, durations, info = gif_frames(folder / "morph-5-6.gif")
    assert len(frames) == 6 and info["morph"] == [5, 6] and info["sampler"] == "ddim" and info["steps"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["cat-5.png", "cat-6.png", "morph-5-6.gif"]


def test_m_needs_two_cats_made_from_seeds(home):
    """Seen to catch: a morph started from a picture without a seed (an untitled PNG)."""
    folder = locations.gallery_dir()
    write_gallery(folder, 1)

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g", "m")
            status = app.screen.query_one("#gallery-status")
            assert "needs two kept cats" in status.text
            Image.new("RGB", (32, 32), "red").save(folder / "photo.png")
            os.utime(folder / "photo.png", (2_000_000_000, 2_000_000_000))
            await pilot.press("r", "m")
            assert isinstance(app.screen, GalleryScreen)
            assert "photo.png does not say which seed made it" in status.text
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "sha256, model, message",
    [
        ("", "tiny-cats EMA @ step 23", "was drawn by tiny-cats EMA @ step 23, which has trained on since"),
        ("ab" * 32, "gone @ step 500", "The model that drew cat-101.png (gone @ step 500) is no longer here"),
    ],
)
def test_m_refuses_cats_whose_model_is_gone(home, sha256, model, message):
    """Seen to catch: a morph between two cats of a training EMA (no file, so no sha256) or of a
    deleted file drawn by whatever model was current, its ends then not the kept cats."""
    from kittyterm.cats import CatInfo, save_cat
    from tests.test_app_support import synthetic_cat

    folder = locations.gallery_dir()
    for i in range(2):
        save_cat(folder, synthetic_cat(i, 32).transpose(2, 0, 1), CatInfo(100 + i, "dpm++", 20, sha256, model))

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g", "m")
            await wait_for(pilot, lambda: message in status_of(app))
            assert app.session.sampling.batch is None
            await tap(pilot, "q")
            await wait_until_exited(app)

    asyncio.run(scenario())
