"""Driving `kittyterm serve` from headless Chromium (Playwright with the system's browser).

Shared by tests/test_serve.py and docs/browser-screenshot.py. xterm.js draws the terminal on a
canvas, so the text on screen is read from the xterm `Terminal` object itself: textual-serve's
page keeps it in a closure, and an init script catches it as it is assigned (`this.terminal = new
Terminal(…)`) through a setter on Object.prototype.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Without the background-networking flags Chromium's own connections get refused on a closed
# network and page loads stall; the GPU and the sandbox are not there in containers.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CATCH_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  set(value) {
    if (value && value.buffer && !window.kittytermTerminal) window.kittytermTerminal = value;
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
  },
});
"""

READ_SCREEN = """() => {
  const terminal = window.kittytermTerminal;
  if (!terminal) return "";
  const buffer = terminal.buffer.active, lines = [];
  for (let y = 0; y < terminal.rows; y++) {
    const line = buffer.getLine(buffer.viewportY + y);
    lines.push(line ? line.translateToString(true) : "");
  }
  return lines.join("\\n");
}"""

TRAINING_STEP = re.compile(r"● training\s+step ([\d,]+)")


def find_chromium() -> str | None:
    """Debian's `chromium` (or whatever $KITTYTERM_CHROMIUM names), None where there is none."""
    path = os.environ.get("KITTYTERM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`kittyterm serve` in a subprocess on a free port, its output in `log`; `stop` sends the
    SIGINT of a Ctrl+C."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "kittyterm", "serve", "--port", str(self.port), *args]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "kittyterm is at" not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"kittyterm serve did not start: {self.output}")
            time.sleep(0.1)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 90) -> int:
        """SIGINT, then wait for the server (which waits for its apps); its exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Tab:
    """One browser tab on the server: loads textual-serve's start screen and presses its Start
    button, which starts an app for this tab; `ready` waits for the app."""

    def __init__(self, context, url: str) -> None:
        self.page = context.new_page()
        self.page.add_init_script(CATCH_TERMINAL)
        self.page.goto(f"{url}/?delay=1", wait_until="domcontentloaded")  # ?delay: the start screen
        self.page.click("#start")

    def ready(self, timeout: float = 60) -> None:
        """Wait for the app's main screen, then give it the keyboard."""
        self.wait_for(lambda screen: "Preview ·" in screen, timeout)
        self.page.click("#terminal")

    def screen(self) -> str:
        return self.page.evaluate(READ_SCREEN)

    def wait_for(self, predicate: Callable[[str], object], timeout: float = 60) -> str:
        """Poll the screen until `predicate(screen)` holds; the screen then. Fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s; the screen:\n{screen}")
            self.page.wait_for_timeout(100)

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)


def training_step(screen: str) -> int | None:
    """The step the training panel shows while it trains, else None."""
    found = TRAINING_STEP.search(screen)
    return int(found.group(1).replace(",", "")) if found else None
