"""`kittyterm serve`: the app in a browser tab, through textual-serve.

textual-serve runs one app process per browser tab, from a shell command line: here this Python's
`-m kittyterm` with the options given to `serve`. Each app runs in a session of its own, so a
Ctrl+C in the server's terminal reaches the server alone; the server then sends every app SIGTERM
(on which an app saves its checkpoint, as on quit), waits for them all, and exits. Closing a tab
quits its app the same way: textual-serve asks it to exit and it saves while it closes. Apps on
the same data folder share its run lock, so a second tab finds the run busy instead of writing it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from .errors import UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Seconds between the server's pings to a tab; a tab that has not answered within half of that is
# taken for gone and its app quits. textual-serve pings every 15 s, but a browser busy drawing the
# denoising preview can fall further behind than 7.5 s (on a slow machine), which ended its session.
HEARTBEAT = 120.0
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def app_command(data: Path | None, preset: str | None, python: str = sys.executable) -> str:
    """The shell command line that starts one app: `python -m kittyterm` with serve's app options.
    `exec` makes the app the process the server signals, not a shell in front of it."""
    words = [python, "-m", "kittyterm"]
    if data is not None:
        words += ["--data", str(data)]
    if preset is not None:
        words += ["--preset", preset]
    return "exec " + shlex.join(words)


def reachable_from_other_machines(host: str) -> bool:
    """Whether `host` is anything but localhost or a loopback address (then `serve` warns)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def url(host: str, port: int) -> str:
    """Where a browser on this machine finds the server."""
    host = "localhost" if host in WILDCARD_HOSTS else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AppProcess(AppService):
    """textual-serve's app process, started in a session of its own (out of reach of the
    terminal's Ctrl+C and SIGHUP: the server stops it)."""

    process: asyncio.subprocess.Process | None = None

    async def _open_app_process(self, width: int = 80, height: int = 24) -> asyncio.subprocess.Process:
        pipe = asyncio.subprocess.PIPE
        environment = self._build_environment(width=width, height=height)
        self.process = self._process = await asyncio.create_subprocess_shell(
            self.command, stdin=pipe, stdout=pipe, stderr=pipe, env=environment, start_new_session=True
        )
        self._stdin = self.process.stdin
        return self.process

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class KittytermServer(Server):
    """textual-serve's server that keeps track of its apps and stops them, saving, when it stops."""

    def __init__(self, command: str, host: str, port: int) -> None:
        super().__init__(command, host=host, port=port, title="kittyterm")
        self.apps: set[AppProcess] = set()

    async def on_startup(self, app: web.Application) -> None:
        """No banner: `run` reports the address once it listens."""

    async def handle_index(self, request: web.Request) -> web.Response:
        # The page connects back to the address it was loaded from (textual-serve would use the
        # --host address, which a browser cannot reach when it is 0.0.0.0).
        self.public_url = f"{request.scheme}://{request.host}"
        return await super().handle_index(request)

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """One tab: start its app, pass the tab's input on until either side closes, then wait
        until the app has exited (and so saved)."""
        websocket = web.WebSocketResponse(heartbeat=HEARTBEAT)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        await websocket.prepare(request)
        app = AppProcess(
            self.command,
            write_bytes=websocket.send_bytes,
            write_str=websocket.send_str,
            close=websocket.close,
            download_manager=self.download_manager,
        )
        self.apps.add(app)
        try:
            await app.start(width, height)
            try:
                await self._process_messages(websocket, app)
            finally:
                await app.stop()
                await app.process.wait()
        finally:
            self.apps.discard(app)
            await websocket.close()
        return websocket

    async def stop_apps(self, report: Callable[[str], None]) -> None:
        """SIGTERM to every running app (each saves its checkpoint, then exits); wait for all."""
        running = [app.process for app in self.apps if app.running]
        if not running:
            return
        report(f"stopping {len(running)} app{'s' if len(running) > 1 else ''}: each saves its checkpoint…")
        for process in running:
            process.terminate()
        await asyncio.gather(*(process.wait() for process in running))

    async def main(self, report: Callable[[str], None], stop: asyncio.Event) -> None:
        runner = web.AppRunner(await self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as error:
                where = f"{self.host or 'all interfaces'} port {self.port}"
                if error.errno == errno.EADDRINUSE:
                    raise UserError(f"{where} is already in use: choose another with --port") from None
                raise UserError(f"cannot listen on {where}: {error.strerror or error}") from None
            report(f"kittyterm is at {url(self.host, self.port)} (Ctrl+C stops it)")
            await stop.wait()
            await self.stop_apps(report)
        finally:
            await runner.cleanup()

    def run(self, report: Callable[[str], None]) -> None:
        """Serve until SIGINT, SIGTERM or SIGHUP, then stop every app (saving) and return."""
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                report("still waiting for the apps to save their checkpoints…")
            stop.set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal)
        try:
            loop.run_until_complete(self.main(report, stop))
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            loop.close()

