"""`kittyterm serve`: the app in browser tabs.

The end-to-end test runs `kittyterm serve` and drives it from headless Chromium (tests/browser.py);
the others check what `serve` does before any browser: the command line each app gets, the
warning for a server other machines can reach, a port in use, and the gallery's export as a
download when the app runs in a browser.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.checkpoint import read_checkpoint
from engine.files import RunLock
from kittyterm import locations, runs, settings
from kittyterm.cli import app as cli
from kittyterm.serve import KittytermServer, app_command
from tests.browser import CHROMIUM_ARGS, ROOT, Server, Tab, find_chromium, training_step
from tests.test_app_support import home, install_run, make_app, wait_until_exited, write_gallery  # noqa: F401

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and sessions")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.1)


def saved_step(run: str) -> int:
    return int(read_checkpoint(runs.checkpoint_path(run))[1]["step"])


def test_two_tabs_one_run_in_a_real_browser(kittyterm_home, synthetic_folder, trained_tiny, tmp_path):
    """The app in Chromium: s draws half-blocks, space trains; a second tab finds the run busy and
    downloads a cat from the gallery; closing the first tab saves its run and hands it over; Ctrl+C
    stops the server and the second app, which saves too. The run starts as the shared trained
    model (batch 8), which resumes on `synthetic_folder`: quick steps on a busy CPU."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium to drive: install Debian's `chromium` (or set KITTYTERM_CHROMIUM to a Chromium binary)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="drives Chromium with Playwright for Python: pip install playwright")
    cat = write_gallery(locations.gallery_dir(), 1)[0]
    run = runs.run_name("tiny", synthetic_folder)
    install_run(trained_tiny.checkpoint, run)
    server = Server(tmp_path / "serve.log", "--data", str(synthetic_folder), "--preset", "tiny", env=dict(os.environ, OMP_NUM_THREADS="1"))
    apps: list[int] = []
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=chromium, args=CHROMIUM_ARGS, viewport={"width": 800, "height": 480}
            )
            first, second = Tab(browser, server.url), Tab(browser, server.url)  # two apps start side by side
            first.ready()
            first.press("s")
            first.wait_for(lambda screen: re.search(r"Preview · (step \d+/\d+|done)", screen) and "▀" in screen)
            first.press("Escape")  # cancel the sampler if it still runs: fewer frames for the browser to draw
            first.press(" ")
            began = training_step(first.wait_for(lambda screen: training_step(screen) is not None))
            step = training_step(first.wait_for(lambda screen: training_step(screen) > began))
            apps.append(first_app := RunLock(runs.run_dir(run)).holder())

            second.ready()
            second.press(" ")
            busy = second.wait_for(lambda screen: "being trained by process" in screen)
            assert f"being trained by process {first_app}" in busy
            second.press("g")
            second.wait_for(lambda screen: cat.name in screen)
            with second.page.expect_download() as download:
                second.press("e")
            assert download.value.suggested_filename == cat.name
            assert Path(download.value.path()).read_bytes() == cat.read_bytes()
            second.press("Escape")
            second.wait_for(lambda screen: "Preview ·" in screen)

            step = training_step(first.screen()) or step
            first.page.close()
            wait_until_gone(first_app)
            assert saved_step(run) >= step
            assert server.process.poll() is None and urllib.request.urlopen(server.url, timeout=10).status == 200

            second.press(" ")  # the run is free now: the second tab resumes it
            second.wait_for(lambda screen: (training_step(screen) or 0) > saved_step(run))
            apps.append(second_app := RunLock(runs.run_dir(run)).holder())
            assert second_app != first_app
            step = training_step(second.screen())
            assert server.stop() == 0
            assert "stopping 1 app: each saves its checkpoint" in server.output and "Traceback" not in server.output
            second.page.wait_for_selector("body.-closed")  # the page says the session ended
            browser.close()
        assert not alive(second_app) and saved_step(run) >= step
    finally:
        server.kill()
        for pid in apps:
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- without a browser


def run_serve(monkeypatch, *args) -> tuple[object, list[str]]:
    """`kittyterm serve ARGS` with the server's run replaced: (result, the app command it got)."""
    commands = []
    monkeypatch.setattr(KittytermServer, "run", lambda self, report: commands.append(self.command))
    return CliRunner().invoke(cli, ["serve", *map(str, args)]), commands


def test_each_app_gets_the_data_folder_and_preset_quoted_for_the_shell(tmp_path, monkeypatch):
    """textual-serve starts apps through /bin/sh: a folder with spaces and quotes stays one word."""
    from PIL import Image

    data = tmp_path / "my cats' \"best\" $HOME"
    data.mkdir()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(data / "cat.png")  # serve refuses a folder with no image
    result, commands = run_serve(monkeypatch, "--data", data, "--preset", "kitty-64")
    assert result.exit_code == 0, result.output
    assert shlex.split(commands[0]) == ["exec", sys.executable, "-m", "kittyterm", "--data", str(data.resolve()), "--preset", "kitty-64"]
    result, commands = run_serve(monkeypatch)
    assert shlex.split(commands[0]) == ["exec", sys.executable, "-m", "kittyterm"]  # the app's own defaults

    echo = tmp_path / "python with spaces"  # stands in for the interpreter: prints its arguments
    echo.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    echo.chmod(0o755)
    shell = subprocess.run(["/bin/sh", "-c", app_command(data, "tiny", python=str(echo))], capture_output=True, text=True, check=True)
    assert shell.stdout.splitlines() == ["-m", "kittyterm", "--data", str(data), "--preset", "tiny"]


def test_a_missing_data_folder_is_refused_before_serving(tmp_path, monkeypatch):
    result, commands = run_serve(monkeypatch, "--data", tmp_path / "missing")
    assert result.exit_code == 1 and "does not exist" in result.output and commands == []


@pytest.mark.parametrize(
    "host,warned", [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("box.local", True)]
)
def test_a_server_other_machines_can_reach_says_so_in_one_line(host, warned, monkeypatch):
    result, commands = run_serve(monkeypatch, "--host", host)
    assert result.exit_code == 0 and len(commands) == 1, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    if warned:
        assert warnings == [f"warning: listening on {host}: anyone on the network can drive training and read the gallery"]
    else:
        assert warnings == [] and result.output == ""


def test_a_port_in_use_is_one_line_and_a_failure(kittyterm_home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "kittyterm", "serve", "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: 127.0.0.1 port {port} is already in use: choose another with --port"]
    assert time.monotonic() - began < 30


def test_in_a_browser_the_gallery_exports_as_downloads(home, tmp_path, monkeypatch):
    """Under textual-serve `e` and `E` hand the PNG to the browser; nothing is written on the server."""
    from kittyterm.app import KittytermApp

    cats = write_gallery(locations.gallery_dir(), 2)
    export = tmp_path / "exported"
    settings.update(export_folder=str(export))
    delivered = []

    def deliver_binary(self, file, *, save_filename=None, mime_type=None, **options):
        delivered.append((file.read(), save_filename, mime_type))

    monkeypatch.setattr(KittytermApp, "is_web", property(lambda self: True))
    monkeypatch.setattr(KittytermApp, "deliver_binary", deliver_binary)

    async def scenario():
        app = make_app(None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("g", "e", "E")
            status = app.screen.query_one("#gallery-status").text
            await pilot.press("escape", "q")
            await wait_until_exited(app)
        return status

    status = asyncio.run(scenario())
    assert delivered[0] == (cats[1].read_bytes(), "cat-101.png", "image/png")  # the newest, selected first
    sheet, name, mime = delivered[1]
    assert sheet.startswith(b"\x89PNG") and re.fullmatch(r"kittyterm-gallery-\d{8}-\d{6}\.png", name) and mime == "image/png"
    assert "your browser's downloads" in status and not export.exists()
