"""The shipped model through the code that draws its cats, against real cats from the data folder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.checkpoint import load_model
from engine.generate import generate
from kittyterm import locations

CATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "catfaces64" / "train"


def colourfulness(images: torch.Tensor) -> float:
    """The mean of |each image's mean of each channel|, images in [−1, 1]: 0 for grey, 1 for a
    fully saturated single colour."""
    return float(images.float().mean((2, 3)).abs().mean())


@pytest.mark.skipif(not CATS.is_dir(), reason="the catfaces64 data folder is not beside the repository")
def test_the_first_estimate_is_no_more_colourful_than_real_cats():
    """At t = T−1 the ε-model's x̂0 = (x − σε̂)/α multiplies its error about 2·10⁴-fold. Clamped
    pixel by pixel, that error became a saturated colour (0.56 here against real cats' 0.28),
    and the later steps painted a teal or blue cat in it: the shipped model's colour casts.
    Dynamic thresholding keeps the first estimate as colourful as real cats at most."""
    files = sorted(CATS.iterdir())[:300]
    real = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    loaded = load_model(locations.shipped_model())
    first = {}
    generate(loaded.model, loaded.schedule, list(range(16)), grid=[loaded.schedule.num_steps - 1], callback=lambda i, x, x0: first.setdefault(i, x0))
    real_level = colourfulness(real / 127.5 - 1)
    assert 0.15 < real_level < 0.4
    assert colourfulness(first[0]) <= 1.1 * real_level, (colourfulness(first[0]), real_level)
