"""Shared helpers and fixtures for the app tests (no tests here).

Everything is synthetic and small: 16 random 32×32 PNGs, the `tiny` preset with a batch of 4,
samplers with 3 steps, batches from seed 1, and $KITTYTERM_HOME in a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kittyterm.settings import Generator

TEST_SESSION = dict(device="cpu", batch_size=4, generator=Generator(steps=3), frame_interval=0.0, seed=lambda: 1)


@pytest.fixture
def home(kittyterm_home, monkeypatch) -> Path:
    """$KITTYTERM_HOME (set by conftest for every test), with graphics forced to half-blocks."""
    monkeypatch.setenv("KITTYTERM_GRAPHICS", "halfblock")
    return kittyterm_home


@pytest.fixture
def data_folder(tmp_path) -> Path:
    return write_images(tmp_path / "cats")


@pytest.fixture
def one_torch_thread():
    """Train with one intra-op thread (as the app does on a 2-core CPU), restoring the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def key_event(key: str):
    from textual import events

    char = {"space": " ", "escape": "\x1b", "question_mark": "?"}.get(key, key if len(key) == 1 else None)
    return events.Key(key, char)


async def tap(pilot, *keys: str) -> None:
    """Press keys the way the terminal driver delivers them, then let the app handle them.

    Unlike `Pilot.press`, this does not wait for the CPU to go idle, which never happens while
    a model trains in the same process (Pilot would add about 2 s per key).
    """
    for key in keys:
        pilot.app.post_message(key_event(key))
        await pilot.pause(0)


async def tap_and_confirm(pilot, key: str) -> None:
    """Press `key`, wait for the question it asks, answer y and wait for the answer to be taken
    (a y sent at once can reach the screen below before the question is up, on a busy machine)."""
    from kittyterm.screens.confirm import ConfirmScreen

    await tap(pilot, key)
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
    await tap(pilot, "y")
    await wait_for(pilot, lambda: not isinstance(pilot.app.screen, ConfirmScreen))


def write_images(folder: Path, count: int = 16, size: int = 32, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"cat{i:02d}.png")
    return folder


def synthetic_cat(seed: int, size: int = 32) -> np.ndarray:
    """A deterministic smooth picture (gradient, disc and two 'ears'), (size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    base = rng.integers(40, 200, 3)
    image = np.empty((size, size, 3))
    for c in range(3):
        image[..., c] = base[c] * (0.6 + 0.4 * x) + 30 * y
    disc = (x - 0.5) ** 2 + (y - 0.58) ** 2 < 0.09
    ears = ((np.abs(x - 0.3) + (y - 0.1) < 0.15) | (np.abs(x - 0.7) + (y - 0.1) < 0.15)) & (y > 0.05)
    image[disc | ears] = rng.integers(150, 255, 3)
    image[(np.abs(x - 0.4) < 0.05) & (np.abs(y - 0.5) < 0.05)] = 20
    image[(np.abs(x - 0.6) < 0.05) & (np.abs(y - 0.5) < 0.05)] = 20
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_batch(seed: int = 0, size: int = 32, noise: float = 0.0) -> np.ndarray:
    """Four synthetic cats (B, H, W, 3), optionally mixed with seeded noise (a mid-sampling x_t)."""
    cats = np.stack([synthetic_cat(seed + i, size) for i in range(4)]).astype(np.float64)
    if noise:
        rng = np.random.default_rng(seed + 100)
        cats = (1 - noise) * cats + noise * rng.integers(0, 256, cats.shape)
    return np.clip(cats, 0, 255).astype(np.uint8)


def write_gallery(folder: Path, count: int = 3) -> list[Path]:
    """Cats saved the way the app and `kittyterm sample` save them, with fixed modification times."""
    from kittyterm.cats import CatInfo, save_cat

    paths = []
    for i in range(count):
        info = CatInfo(seed=100 + i, sampler="dpm++", steps=20, model_sha256="ab" * 32, model="tiny-cats @ step 500")
        path = save_cat(folder, synthetic_cat(i, 64).transpose(2, 0, 1), info)
        stamp = 1_700_000_000 + i * 60
        os.utime(path, (stamp, stamp))
        paths.append(path)
    return paths


def install_run(checkpoint: Path, name: str = "tiny-cats") -> Path:
    """Put a training checkpoint in the runs folder as run `name` (the latest run, which the app
    samples when it has no trainer of its own)."""
    from kittyterm import runs

    path = runs.run_dir(name) / runs.CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, path)
    return path


@pytest.fixture
def tiny_run(home, trained_tiny):
    """The shared trained `tiny` model (tests/conftest.py) installed as run `tiny-cats`."""
    install_run(trained_tiny.checkpoint)
    return trained_tiny


def training_step(app) -> int | None:
    """The step the app's trainer has reached, None before it is built: read from the session,
    which the stats panel follows only a UI tick later."""
    trainer = app.session.trainer
    return None if trainer is None else trainer.step_count


def screen_text(screen, selector: str) -> str:
    """The plain text a Static of `screen` shows (markup, Rich Text and Rich tables alike)."""
    from rich.console import Console

    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(screen.query_one(selector).content)
    return console.export_text()


async def wait_for_cats(pilot, timeout: float = 60.0) -> None:
    """Wait until the main screen shows a finished batch of cats."""
    screen = pilot.app.main_screen
    await wait_for(pilot, lambda: "done" in screen_text(screen, "#preview-caption"), timeout)


def kept_cats(seeds: list[int]) -> np.ndarray:
    """The gallery's cat-SEED.png files, (B, H, W, 3) uint8."""
    from kittyterm import locations

    return np.stack([np.asarray(Image.open(locations.gallery_dir() / f"cat-{seed}.png")) for seed in seeds])


def make_app(data_folder: Path | None = None, **options):
    from kittyterm.app import KittytermApp

    session = dict(TEST_SESSION)
    session.update(options.pop("session", {}))
    return KittytermApp(data_folder, options.pop("preset", "tiny"), session_options=session, **options)


async def wait_for(pilot, predicate, timeout: float = 60.0, step: float = 0.05) -> None:
    """Let the app run until `predicate()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        await pilot.pause(step)


async def wait_until_exited(app, timeout: float = 30.0) -> float:
    began = time.monotonic()
    while app.is_running and time.monotonic() - began < timeout:
        await asyncio.sleep(0.02)
    return time.monotonic() - began
