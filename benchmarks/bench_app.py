"""Benchmarks of the app: half-block preview frames and key latency while a tiny model trains.

    python benchmarks/bench_app.py [--data DIR] [--frames 60] [--keys 40] [--train-seconds 20]

1. Frame build: a 2×2 grid of 64×64 cats (132×132 px with its frame, 132×66 cells) turned into
   Strips by the half-block renderer: noise (x_t at the first step: every cell a new colour) and
   cats (real photos from --data when given, else synthetic ones).
2. Frame on screen: the same frames offered to the app the way the sampler thread offers them
   (frame slot → PreviewTick → preview widget), timed until the terminal driver has written the
   frame (Textual's compositor and the truecolor ANSI encoding included).
Wall times depend on what else runs on the machine; the CPU time of the thread doing the work is
what sets the frame rate on an otherwise idle core.
3. Key latency: the app trains the `tiny` preset (batch 64, one torch thread per free core, as the
   app does) while key presses are posted the way the terminal driver posts them; the time until
   the key's action has run.

Everything runs in a temporary $KITTYTERM_HOME. Prints a Markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(values: list[float], unit: float = 1e3) -> str:
    return f"median {statistics.median(values) * unit:.1f} ms, p95 {percentile(values, 95) * unit:.1f} ms, max {max(values) * unit:.1f} ms"


def cat_batches(data: Path | None, count: int) -> list[np.ndarray]:
    """`count` batches of four 64×64 cats (B, H, W, 3) uint8."""
    rng = np.random.default_rng(0)
    photos = []
    if data is not None and data.is_dir():
        from PIL import Image

        for path in sorted(data.iterdir())[: 4 * count]:
            with Image.open(path) as image:
                photos.append(np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BOX)))
    if len(photos) < 4 * count:
        y, x = np.mgrid[0:64, 0:64] / 63
        for _ in range(4 * count - len(photos)):
            base = rng.integers(30, 220, 3)
            image = np.stack([base[c] * (0.5 + 0.5 * x) + 40 * y for c in range(3)], -1)
            image[(x - 0.5) ** 2 + (y - 0.55) ** 2 < 0.08] = rng.integers(120, 255, 3)
            photos.append(np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8))
    return [np.stack(photos[4 * i : 4 * i + 4]) for i in range(count)]


def bench_frame_build(frames: int, data: Path | None) -> dict[str, list[float]]:
    from kittyterm.widgets.halfblock import StyleCache, render_strips
    from kittyterm.widgets.preview import compose_grid

    rng = np.random.default_rng(1)
    cache = StyleCache()
    results: dict[str, list[float]] = {"noise": [], "cats": [], "grid+strips (cats)": [], "cpu noise": [], "cpu cats": []}
    noise = [rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(frames)]
    cats = cat_batches(data, frames)
    for kind, batches in (("noise", noise), ("cats", cats)):
        for batch in batches:
            grid = compose_grid(batch, (64, 64), (18, 18, 18), selected=None)
            began, cpu = time.perf_counter(), time.thread_time()
            strips = render_strips(grid, cache)
            results[kind].append(time.perf_counter() - began)
            results[f"cpu {kind}"].append(time.thread_time() - cpu)
        assert len(strips) == 66 and strips[0].cell_length == 132
    for batch in cats:
        began = time.perf_counter()
        render_strips(compose_grid(batch, (64, 64), (18, 18, 18), selected=1), cache)
        results["grid+strips (cats)"].append(time.perf_counter() - began)
    return results


async def bench_frame_on_screen(frames: int, data: Path | None) -> dict[str, list[float]]:
    from tests.test_app_support import make_app

    app = make_app(None)
    results: dict[str, list[float]] = {"noise": [], "cats": [], "cpu noise": [], "cpu cats": []}
    rng = np.random.default_rng(2)
    async with app.run_test(size=(280, 80)) as pilot:
        await pilot.pause()
        from kittyterm.widgets.preview import CatGrid

        grid = app.main_screen.query_one(CatGrid)
        written: list[float] = []
        cpu_at_write: list[float] = []  # CPU time of the UI thread, which composes, encodes and writes
        sizes: list[int] = []

        # The headless test driver makes Textual skip encoding frames; this one says it is a real
        # terminal (so every frame is composed and encoded to ANSI) and notes when a frame is written.
        class TimingDriver(type(app._driver)):
            @property
            def is_headless(self) -> bool:
                return False

            def write(self, data: str) -> None:
                written.append(time.perf_counter())
                cpu_at_write.append(time.thread_time())
                sizes.append(len(data))

        app._driver.__class__ = TimingDriver
        assert app.console.color_system == "truecolor", app.console.color_system
        batches = {"noise": [rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(frames)], "cats": cat_batches(data, frames)}
        from kittyterm.messages import PreviewFrame

        for kind, items in batches.items():
            for step, batch in enumerate(items):
                count = len(written)
                began, cpu = time.perf_counter(), time.thread_time()
                # the path of a sampler step: the session's frame slot, a PreviewTick, the screen
                app.session._offer_frame(PreviewFrame(step + 1, len(items), batch, batch))
                while len(written) == count:
                    await asyncio.sleep(0.0005)
                results[kind].append(written[-1] - began)
                results[f"cpu {kind}"].append(cpu_at_write[-1] - cpu)
                await asyncio.sleep(0.01)
        assert grid.drawn_size() == (132, 132), grid.drawn_size()
        results["bytes"] = [float(statistics.median(sizes))]
    return results


async def bench_key_latency(keys: int, data: Path | None, warmup_steps: int) -> tuple[list[float], dict]:
    from kittyterm.app import KittytermApp, share_cpu_with_the_ui
    from tests.test_app_support import key_event, write_images

    share_cpu_with_the_ui()
    folder = data if data is not None and data.is_dir() else write_images(Path(tempfile.mkdtemp()) / "cats", 256)
    app = KittytermApp(folder, "tiny", session_options=dict(device="cpu"))
    latencies: list[float] = []
    info: dict = {}
    async with app.run_test(size=(120, 40)):
        app.post_message(key_event("space"))
        while app.session.trainer is None or app.session.trainer.step_count < warmup_steps:
            await asyncio.sleep(0.05)
        screen = app.main_screen
        first_step, began_all = app.session.trainer.step_count, time.perf_counter()
        for _ in range(keys):
            before = screen.show_x0
            began = time.perf_counter()
            app.post_message(key_event("x"))
            while screen.show_x0 is before:
                await asyncio.sleep(0.0005)
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(0.2)
        info["steps_during"] = app.session.trainer.step_count - first_step
        info["seconds"] = time.perf_counter() - began_all
        info["images_per_second"] = screen.stats.images_per_second
        info["num_images"] = app.session.trainer.num_images
        quit_began = time.perf_counter()
        app.post_message(key_event("q"))
        while app.is_running:
            await asyncio.sleep(0.01)
        info["quit_seconds"] = time.perf_counter() - quit_began
    return latencies, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of cat photos (real frames and real training)")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=3)
    args = parser.parse_args()
    os.environ["KITTYTERM_HOME"] = tempfile.mkdtemp(prefix="kittyterm-bench-")
    os.environ["KITTYTERM_GRAPHICS"] = "halfblock"
    os.environ["TEXTUAL_COLOR_SYSTEM"] = "truecolor"  # encode frames as a truecolor terminal gets them

    import textual
    import torch
    from _common import cpu_model

    build = bench_frame_build(args.frames, args.data)
    on_screen = asyncio.run(bench_frame_on_screen(args.frames, args.data))
    latencies, info = asyncio.run(bench_key_latency(args.keys, args.data, args.warmup_steps))

    print("```")
    print(f"$ python benchmarks/bench_app.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"hardware: {os.cpu_count()} cores, {cpu_model()}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} thread(s)), textual {textual.__version__}, numpy {np.__version__}")
    print()
    print("half-block frame build, 2×2 grid of 64×64 cats (132×132 px → 132×66 cells); wall time, then CPU time:")
    for kind, values in build.items():
        print(f"  {kind:20s} {summary(values)}  → {1 / statistics.median(values):.0f} frames/s")
    frame_bytes = on_screen.pop("bytes")[0]
    print(f"frame on screen (frame offered → composed, encoded, written; 280×80 app, ~{frame_bytes / 1024:.0f} KiB per frame); wall, then CPU of the UI thread:")
    for kind, values in on_screen.items():
        print(f"  {kind:20s} {summary(values)}  → {1 / statistics.median(values):.0f} frames/s")
    print(f"key latency while training tiny (batch 64, {info['num_images']} images, {info['steps_during']} steps in {info['seconds']:.0f} s, {info['images_per_second'] or 0:.0f} img/s):")
    print(f"  {len(latencies)} key presses: {summary(latencies)}")
    print(f"quit while training (stop, checkpoint, exit): {info['quit_seconds']:.2f} s")
    print("```")


if __name__ == "__main__":
    main()
