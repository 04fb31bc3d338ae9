from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def kittyterm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps kittyterm's user files inside its own temporary folder."""
    home = tmp_path / "kittyterm-home"
    monkeypatch.setenv("KITTYTERM_HOME", str(home))
    return home


def two_tone_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A warm top half over a cool bottom half, with a little noise: easy structure to learn."""
    image = np.empty((size, size, 3), dtype=np.float64)
    image[: size // 2] = (220, 60, 40)
    image[size // 2 :] = (30, 60, 200)
    image += rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def two_tone_images(count: int = 24, size: int = 32) -> np.ndarray:
    """The images of `synthetic_folder`, (count, size, size, 3) uint8."""
    rng = np.random.default_rng(0)
    return np.stack([two_tone_image(rng, size) for _ in range(count)])


@pytest.fixture
def synthetic_folder(tmp_path: Path) -> Path:
    """24 small two-tone PNGs."""
    folder = tmp_path / "synthetic"
    folder.mkdir()
    for i, image in enumerate(two_tone_images()):
        Image.fromarray(image).save(folder / f"cat{i:02d}.png")
    return folder


@dataclass(frozen=True)
class TrainedTiny:
    """A `tiny` network that predicts something, saved as a training checkpoint and as the fp16
    export of its EMA. An untrained U-Net predicts ε = 0 exactly (its output layer starts at zero),
    so its cats depend on the seeds alone: `fresh_cats` draws those, for tests to show that what
    they sample comes from the weights."""

    checkpoint: Path
    weights: Path
    steps: int

    def fresh_cats(self, seeds: list[int], sampler: str, steps: int) -> np.ndarray:
        """The cats an untrained `tiny` model draws for `seeds`, (B, H, W, 3) uint8."""
        import torch

        from engine.generate import generate
        from engine.schedules import NoiseSchedule
        from engine.unet import PRESETS, UNet

        with torch.random.fork_rng():
            torch.manual_seed(0)
            fresh = UNet(PRESETS["tiny"]).eval()
        return generate(fresh, NoiseSchedule(), seeds, sampler, steps).permute(0, 2, 3, 1).numpy()

    def distance_from_fresh(self, cats: np.ndarray, seeds: list[int], sampler: str, steps: int) -> float:
        """Mean absolute difference (0…255) between `cats` (B, H, W, 3) and a fresh model's cats
        for the same seeds; over 20 for this network, about 0 for one that predicts nothing."""
        fresh = self.fresh_cats(seeds, sampler, steps).astype(np.float64)
        return float(np.abs(np.asarray(cats, dtype=np.float64) - fresh).mean())


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> TrainedTiny:
    """The `tiny` preset trained 30 steps (lr 2e-3, warm-up 1, batch 8) on the two-tone images of
    `synthetic_folder`, so its checkpoint also resumes on that folder; a few seconds, once."""
    import torch

    from engine.checkpoint import export_checkpoint
    from engine.trainer import TrainConfig, Trainer
    from engine.unet import PRESETS

    folder = tmp_path_factory.mktemp("trained-tiny")
    images = torch.from_numpy(two_tone_images()).permute(0, 3, 1, 2).contiguous()
    config = TrainConfig(batch_size=8, lr=2e-3, warmup_steps=1, ema_decay=0.9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps on a shared 2-core machine: one thread is fastest
    try:
        with torch.random.fork_rng():
            trainer = Trainer(PRESETS["tiny"], images, config, device="cpu")
            for _ in range(30):
                trainer.step()
            checkpoint = folder / "checkpoint.safetensors"
            trainer.save(checkpoint)
    finally:
        torch.set_num_threads(threads)
    weights = export_checkpoint(checkpoint, folder / "weights.safetensors").path  # as `kittyterm export` writes it
    return TrainedTiny(checkpoint, weights, trainer.step_count)
