"""Sample quality: FID and KID of folders of generated cats against a reference folder, at equal
sample counts, so that samplers (or models) measured with different numbers of images compare.

    python benchmarks/bench_fid.py --reference ../shared/data/catfaces64/train \\
        --set "dpm++sde 25=cats/sde" --set "ddpm 1000=cats/ddpm" --counts 1000 5000
    python benchmarks/bench_fid.py --quick                # CI smoke run: random features

Each folder's Inception features are computed once and cached, like the reference's, with the
same `engine.fid` code as `kittyterm eval`; FID is biased upwards at small
sample counts, so each row uses the first N images of every set, ordered by the seed in their
names (`cat-SEED.png`), and a set with fewer than N images is left out of that row. KID is
unbiased and comparable across counts. For scale, each row also scores N real images from one
random half of the reference folder against the other half.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from _common import header, table

import numpy as np

from engine import fid
from kittyterm import locations


def seed_order(paths: list[Path]) -> list[Path]:
    """Paths sorted by the number in their names (cat-12.png before cat-100.png)."""

    def key(path: Path):
        match = re.search(r"(\d+)", path.stem)
        return (int(match.group(1)) if match else -1, path.name)

    return sorted(paths, key=key)


def folder_features(folder: Path, extractor, label: str, cache_dir: Path) -> np.ndarray:
    """Features of every image in `folder`, in seed order, cached like the reference's."""
    paths = seed_order(fid.image_files(folder))

    def report(done: int, total: int) -> None:
        if done == total or done % (20 * extractor.batch_size) == 0:
            print(f"  {label}: {done}/{total} images", flush=True)

    return fid.cached_features(folder, paths, extractor, cache_dir, report)


class RandomFeatures:
    """A stand-in extractor for --quick: 16-d features drawn from the image statistics."""

    batch_size = 8
    identity = "quick-random"

    def __call__(self, batch):
        x = batch.flatten(1)
        return np.stack([x[:, i::16].mean(1).numpy() for i in range(16)], axis=1).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="folder of real images")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=DIR", help="a generated set (repeatable)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 2000, 5000], help="sample counts to compare at")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny synthetic folders, random features")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            from PIL import Image

            rng = np.random.default_rng(0)
            folders = {}
            for name, scale in (("reference", 255), ("a", 255), ("b", 60)):
                folders[name] = Path(scratch) / name
                folders[name].mkdir()
                for i in range(12):
                    Image.fromarray(rng.integers(0, scale + 1, (8, 8, 3), dtype=np.uint8)).save(folders[name] / f"cat-{i}.png")
            args.reference = folders["reference"]
            args.sets = [f"a={folders['a']}", f"b={folders['b']}"]
            args.counts = [6, 12]
            extractor = RandomFeatures()
            cache_dir = Path(scratch) / "features"
            reference = folder_features(args.reference, extractor, "reference", cache_dir)
        else:
            if args.reference is None or not args.sets:
                parser.error("--reference and at least one --set are needed (or --quick)")
            extractor = fid.InceptionFeatures(args.device)
            cache_dir = locations.cache_dir() / "fid"
            reference = fid.reference_features(args.reference, extractor, cache_dir)
        sets = dict(item.split("=", 1) for item in args.sets)

        header("Sample quality (FID / KID)", args.device)
        features = {name: folder_features(Path(folder), extractor, name, cache_dir) for name, folder in sets.items()}
        # A floor for scale: real cats from one random half of the reference against the other half.
        order = np.random.default_rng(0).permutation(len(reference))
        half, other_half = reference[order[: len(order) // 2]], reference[order[len(order) // 2 :]]
        rows = []
        for count in args.counts:
            if count <= len(half):
                result = fid.evaluate(half[:count], other_half)
                rows.append(["real (one half vs the other)", count, len(other_half), f"{result['fid']:.2f}", f"{result['kid_mean'] * 1000:.2f} ± {result['kid_std'] * 1000:.2f}"])
            for name, feats in features.items():
                if len(feats) < count:
                    continue
                result = fid.evaluate(feats[:count], reference)
                rows.append([name, count, len(reference), f"{result['fid']:.2f}", f"{result['kid_mean'] * 1000:.2f} ± {result['kid_std'] * 1000:.2f}"])
        print()
        print(table(["set", "generated", "reference", "FID", "KID ×10³"], rows))


if __name__ == "__main__":
    main()
