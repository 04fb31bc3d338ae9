"""The README's picture of kittyterm in a browser tab: `kittyterm serve` in headless Chromium,
the shipped model's cats in the preview and the `tiny` preset training beside them.

    python docs/browser-screenshot.py [--data DIR] [--train-seconds 60] [--out docs/in-a-browser.png]

Needs Debian's chromium and Playwright for Python, as tests/test_serve.py does. Everything runs in
a temporary $KITTYTERM_HOME; without --data the model trains on synthetic two-tone images. The PNG
is reduced to 128 colours to stay small.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser import CHROMIUM_ARGS, Server, Tab, find_chromium, training_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="images to train on (default: synthetic ones)")
    parser.add_argument("--train-seconds", type=float, default=60.0, help="how long to train before the picture")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "in-a-browser.png")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no chromium found: install Debian's `chromium` or set KITTYTERM_CHROMIUM")
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        data = args.data
        if data is None:
            from tests.conftest import two_tone_images

            data = root / "cats"
            data.mkdir()
            for i, image in enumerate(two_tone_images(64, 32)):
                Image.fromarray(image).save(data / f"cat{i:02d}.png")
        env = dict(os.environ, KITTYTERM_HOME=str(root / "home"))
        server = Server(root / "serve.log", "--data", str(data.resolve()), "--preset", "tiny", env=env)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch_persistent_context(
                    str(root / "profile"), executable_path=chromium, args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 660}
                )
                tab = Tab(browser, server.url)
                tab.ready()
                tab.press("s")
                tab.wait_for(lambda screen: "Preview · done" in screen, timeout=600)
                tab.press(" ")
                tab.wait_for(lambda screen: training_step(screen) is not None, timeout=600)
                began = time.monotonic()
                while time.monotonic() - began < args.train_seconds:
                    tab.page.wait_for_timeout(1000)
                shot = root / "shot.png"
                tab.page.screenshot(path=str(shot))
                browser.close()
        finally:
            server.stop()
        Image.open(shot).convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
