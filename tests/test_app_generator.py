"""Pilot tests of the generator controls: `o` chooses the model, sampler, steps, seed, how many cats
and the view; the choices are remembered, shown in the preview's caption, and kept with every cat
so that `kittyterm sample` draws it again; `r` re-rolls with a new seed."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json

import numpy as np
from PIL import Image
from textual.widgets import Checkbox, Input, Select
from typer.testing import CliRunner

from kittyterm import cats, locations, settings
from kittyterm.cli import app as cli
from kittyterm.screens.generator import FILE, GeneratorScreen
from kittyterm.settings import Generator
from kittyterm.widgets.preview import CatGrid, best_columns
from tests.test_app_support import (  # noqa: F401  (fixtures)
    home,
    make_app,
    one_torch_thread,
    screen_text,
    tap,
    tiny_run,
    wait_for,
    wait_for_cats,
)


def caption_of(app) -> str:
    return screen_text(app.main_screen, "#preview-caption")


async def choose(pilot, **fields) -> GeneratorScreen:
    """Open the dialog with `o` and fill in `fields` (widget id suffix → value); not applied."""
    await pilot.press("o")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, GeneratorScreen))
    dialog = pilot.app.screen
    for name, value in fields.items():
        dialog.query_one(f"#generator-{name}").value = value
    await pilot.pause()
    return dialog


def test_settings_chosen_in_the_app_draw_the_same_cat_as_kittyterm_sample(home, trained_tiny, tmp_path, one_torch_thread):
    """A model file, sampler, steps and a locked seed chosen in the dialog: the kept cat records
    them, and `kittyterm sample` with what it records draws the same pixels.
    Seen to catch: the app's batch seeds counted differently from `sample`'s (seed + i)."""
    weights = trained_tiny.weights

    async def scenario():
        app = make_app(None, session={"generator": None})  # as remembered (nothing yet: the defaults)
        async with app.run_test(size=(80, 24)) as pilot:
            await choose(pilot, model=FILE, file=str(weights), sampler="ddim", steps="4", seed="1234", locked=True, count=4)
            await pilot.click("#generator-apply")
            await wait_for(pilot, lambda: not isinstance(app.screen, GeneratorScreen))
            assert "weights.safetensors · ddim 4 steps · 4 cats · seed 1234 locked (o)" in caption_of(app)
            await tap(pilot, "s")
            await wait_for_cats(pilot)
            await pilot.press("4", "k")  # the fourth cat: seed 1237
            assert "cat 4/4 seed 1237 ✓ kept" in caption_of(app)
            return app.main_screen.query_one(CatGrid).images[3].copy()

    shown = asyncio.run(scenario())
    kept = locations.gallery_dir() / "cat-1237.png"
    info = cats.read_cat_info(kept)
    assert (info.seed, info.sampler, info.steps) == (1237, "ddim", 4)
    assert info.checkpoint == str(weights.resolve()) and info.model_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", info.checkpoint, "--seed", str(info.seed), "--sampler", info.sampler,
                                      "--steps", str(info.steps), "-n", "1", "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    again = np.asarray(Image.open(tmp_path / "again" / "cat-1237.png"))
    assert np.array_equal(again, np.asarray(Image.open(kept))) and np.array_equal(again, shown)
    assert trained_tiny.distance_from_fresh(again[None], [1237], "ddim", 4) > 20  # drawn by the chosen file


def test_the_choices_survive_a_restart_and_bad_ones_are_refused(home):
    """Every choice is written to the settings and comes back at the next launch, in the dialog and
    the caption; a bad field keeps the dialog open with one line; escape changes nothing.
    Seen to catch: the view (x₀) not remembered."""
    chosen = Generator(model="shipped", sampler="unipc", steps=7, seed=42, locked=True, count=9, view="x0")

    async def first():
        app = make_app(None, session={"generator": None})
        async with app.run_test(size=(80, 24)) as pilot:
            titles = {command.title for command in app.get_system_commands(app.main_screen)}
            assert {"Generator", "Re-roll"} <= titles  # in the command palette too
            dialog = await choose(pilot, steps="0")
            await pilot.press("ctrl+s")
            assert app.screen is dialog and "Steps must be between 1 and 1,000" in screen_text(dialog, "#generator-error")
            await pilot.press("escape")
            assert app.session.sampling.generator == Generator()
            await choose(pilot, model="shipped", sampler="unipc", steps="7", seed="42", locked=True, count=9, view="x0")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.session.sampling.generator == chosen)

    async def second():
        app = make_app(None, session={"generator": None})
        async with app.run_test(size=(80, 24)) as pilot:
            assert app.session.sampling.generator == chosen and app.main_screen.show_x0
            assert "kitty-64 · unipc 7 steps · 9 cats · seed 42 locked (o)" in caption_of(app)
            dialog = await choose(pilot)
            values = {name: dialog.query_one(f"#generator-{name}").value for name in ("model", "sampler", "steps", "seed", "locked", "count", "view")}
            assert values == {"model": "shipped", "sampler": "unipc", "steps": "7", "seed": "42", "locked": True, "count": 9, "view": "x0"}

    asyncio.run(first())
    saved = json.loads(locations.config_file().read_text())["generator"]
    assert saved == {"model": "shipped", "sampler": "unipc", "steps": 7, "seed": 42, "locked": True, "count": 9, "view": "x0"}
    asyncio.run(second())


def test_a_file_that_is_no_model_is_refused_in_the_dialog(home, tmp_path):
    """Seen: File… took a PNG and saved it to the settings; the error came only at the next `s`."""
    picture = tmp_path / "gray.png"
    Image.new("L", (8, 8)).save(picture)

    async def scenario():
        app = make_app(None, session={"generator": None})
        async with app.run_test(size=(100, 30)) as pilot:
            dialog = await choose(pilot, model=FILE, file=str(picture))
            await pilot.press("ctrl+s")
            assert app.screen is dialog and "not a readable safetensors file" in screen_text(dialog, "#generator-error")
            await pilot.press("escape")
            assert app.session.sampling.generator == Generator()

    asyncio.run(scenario())
    assert "generator" not in json.loads(locations.config_file().read_text() if locations.config_file().exists() else "{}")


def test_r_rerolls_with_the_same_settings_and_a_new_seed(home, tiny_run, one_torch_thread):
    """`s` repeats a locked seed; `r` draws a new one with everything else kept (still locked, now
    to the new seed, and remembered); unlocked, every `s` gets a new seed.
    Seen to catch: `r` repeating a locked seed."""
    start = Generator(sampler="ddim", steps=3, seed=5, locked=True, count=4)
    fresh = itertools.count(100, 100)

    async def scenario():
        app = make_app(None, session={"generator": start, "seed": lambda: next(fresh)})
        async with app.run_test(size=(80, 24)) as pilot:
            sampling = app.session.sampling
            batches = []

            async def sample(key: str) -> None:
                before = sampling.batch
                await tap(pilot, key)
                await wait_for(pilot, lambda: sampling.batch is not before and "done" in caption_of(app))

            for key in ("s", "s", "r", "s"):
                await sample(key)
                drawing = sampling.batch.drawing
                batches.append((drawing.seeds, drawing.sampler, drawing.steps))
            assert [seeds for seeds, _, _ in batches] == [(5, 6, 7, 8), (5, 6, 7, 8), (100, 101, 102, 103), (100, 101, 102, 103)]
            assert {(sampler, steps) for _, sampler, steps in batches} == {("ddim", 3)}
            assert sampling.generator == Generator(sampler="ddim", steps=3, seed=100, locked=True, count=4, view="x_t")
            assert settings.load().generator.seed == 100
            sampling.generator = Generator(sampler="ddim", steps=3, locked=False)
            await sample("s")
            assert sampling.batch.drawing.seeds[0] == 200
            await sample("s")
            assert sampling.batch.drawing.seeds[0] == 300

    asyncio.run(scenario())


def test_the_grid_takes_the_columns_that_draw_the_cats_largest():
    """9 and 16 cats fill a square-ish preview 3 and 4 across; 4 cats in a wide, low one stand in
    a row. Seen to catch: a fixed 2-column grid."""
    assert best_columns(1, (32, 32), (44, 21)) == 1
    assert best_columns(4, (32, 32), (44, 21)) == 2
    assert best_columns(9, (32, 32), (44, 21)) == 3
    assert best_columns(16, (64, 64), (78, 44)) == 4
    assert best_columns(4, (32, 32), (120, 12)) == 4


def test_damaged_generator_settings_give_the_defaults_field_by_field():
    data = {"model": "run:", "sampler": "euler", "steps": 0, "seed": -1, "locked": "yes", "count": 5, "view": "x1"}
    assert Generator.from_dict(data) == Generator()
    assert Generator.from_dict({"model": "run:tiny-cats", "steps": True, "count": 16}) == Generator(model="run:tiny-cats", count=16)
    assert Generator.from_dict(None) == Generator()
