"""Colour casts: the share of cats whose overall colour real cats never have.

    python benchmarks/bench_colour.py --data ../shared/data/catfaces64/train --set "default=cats/"
    python benchmarks/bench_colour.py --quick             # CI smoke run: synthetic images

Each image is reduced to its mean colour in CIELAB (sRGB → L*a*b* under D50 through LittleCMS,
Pillow's `ImageCms`, averaged over the pixels). The band is fitted to the training part of the
data folder (`_common.held_out_split`): the Mahalanobis distance from the real cats' mean colour
under their covariance, cut at the distance that 99 % of them fall within. A set's score is the
fraction of its images outside the band; the held-out real cats, which the band never saw, score
about 1 % by construction. A teal, green, bright blue, acid yellow or near-black cat falls outside.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _common import HELD_OUT_CATS, header, held_out_split, table

import numpy as np
from PIL import Image, ImageCms

COVERAGE = 0.99


def mean_lab(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 sRGB images → (N, 3) mean L* (0–100), a*, b* per image."""
    transform = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    means = np.empty((len(images), 3))
    for i, image in enumerate(images):
        lab = np.asarray(ImageCms.applyTransform(Image.fromarray(image), transform))
        means[i] = lab[..., 0].mean() * (100 / 255), lab[..., 1].view(np.int8).mean(), lab[..., 2].view(np.int8).mean()
    return means


def read_images(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


@dataclass
class ColourBand:
    """The ellipsoid of mean colours holding `coverage` of the real cats it was fitted to."""

    centre: np.ndarray
    inverse_covariance: np.ndarray
    radius: float

    @classmethod
    def fit(cls, real_means: np.ndarray, coverage: float = COVERAGE) -> "ColourBand":
        centre = real_means.mean(0)
        inverse = np.linalg.inv(np.cov(real_means, rowvar=False))
        band = cls(centre, inverse, 0.0)
        band.radius = float(np.quantile(band.distance(real_means), coverage))
        return band

    def distance(self, means: np.ndarray) -> np.ndarray:
        offset = means - self.centre
        return np.sqrt(np.einsum("ni,ij,nj->n", offset, self.inverse_covariance, offset))

    def outside(self, means: np.ndarray) -> float:
        """The fraction of images whose mean colour lies outside the band."""
        return float((self.distance(means) > self.radius).mean())


def fit_band(data: Path, held_out: int = HELD_OUT_CATS) -> tuple[ColourBand, float]:
    """The band of the training part of `data`, and the held-out cats' score against it."""
    train, held = held_out_split(data, held_out)
    band = ColourBand.fit(mean_lab(read_images(train)))
    return band, band.outside(mean_lab(read_images(held)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="the folder of real cats")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=DIR", help="a folder of generated cats (repeatable)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: synthetic cats and a cast set")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            rng = np.random.default_rng(0)
            args.data = Path(scratch) / "real"
            cast = Path(scratch) / "cast"
            for folder, count in ((args.data, 300), (cast, 20)):
                folder.mkdir()
                for i in range(count):
                    tone = rng.normal((150, 120, 90), 25, 3) if folder == args.data else (40, 200, 180)
                    pixels = np.clip(tone + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"cat-{i}.png")
            args.sets = [f"teal={cast}"]
        elif args.data is None or not args.sets:
            parser.error("--data and at least one --set are needed (or --quick)")
        header("Colour casts", "cpu")
        band, held_score = fit_band(args.data, 100 if args.quick else HELD_OUT_CATS)
        rows = [["real cats held out from the band", f"{100 * held_score:.1f} %"]]
        for item in args.sets:
            name, folder = item.split("=", 1)
            paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            rows.append([f"{name} ({len(paths)} images)", f"{100 * band.outside(mean_lab(read_images(paths))):.1f} %"])
        print(table(["set", f"outside the band of {COVERAGE:.0%} of real cats"], rows))


if __name__ == "__main__":
    main()
