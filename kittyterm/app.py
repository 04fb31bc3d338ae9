"""The full-screen Textual app. `run_app` (called by the CLI with no subcommand) builds and runs it.

Threads: the UI thread only reacts to keys and to messages; data loading, training and sampling
run in background threads owned by `Session`, which reports back with thread-safe messages.
Quitting (q, ctrl+c, SIGTERM, or a closed terminal's SIGHUP) stops those threads, the training
thread saving a checkpoint, before the app exits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from rich.segment import Segment
from rich.style import Style
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.filter import Monochrome
from textual.screen import Screen

from .screens.gallery import GalleryScreen
from .screens.help import HelpScreen, describe_key
from .screens.main import MainScreen
from .session import Session, TrainingState
from .widgets.status import StatusLine

GRAPHICS_VARIABLE = "KITTYTERM_GRAPHICS"  # "halfblock" never uses Kitty/Sixel images
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def detect_graphics(mode: str = "auto") -> bool:
    """Whether the terminal shows Kitty (TGP) or Sixel images, asked through textual-image.

    Must run before the app starts: textual-image queries the terminal, which stops working
    once Textual reads the keyboard. Anything but a real terminal gets half-blocks.
    """
    choice = os.environ.get(GRAPHICS_VARIABLE, mode).strip().lower()
    if choice in ("halfblock", "half-block", "off", "no", "0", "none"):
        return False
    if not (sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__ and sys.__stdin__.isatty()):
        return False
    try:
        import textual_image.widget  # noqa: F401  (caches the cell size while it still can)
        from textual_image.renderable import Image, SixelImage, TGPImage
    except Exception:
        return False
    return Image in (SixelImage, TGPImage)


def share_cpu_with_the_ui() -> None:
    """On a CPU, leave one core to the UI: torch's threads spin at barriers, so on a busy machine
    using every core makes each step slower (up to 10× on 2 cores) and the keyboard laggy."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


class UnstyledSafeMonochrome(Monochrome):
    """Textual's NO_COLOR filter, also for segments without a style (the loss plot's canvas
    draws some), on which Textual's own filter fails."""

    def apply(self, segments: list[Segment], background) -> list[Segment]:
        plain = Style.null()
        return super().apply([Segment(text, style or plain, control) for text, style, control in segments], background)


class KittytermApp(App[int]):
    """kittyterm: watch a diffusion model learn to draw cats."""

    CSS_PATH = "kittyterm.tcss"
    TITLE = "kittyterm"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", tooltip="Show every key"),
        Binding("q", "quit", "Quit", tooltip="Stop training (saving a checkpoint) and quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        data_folder: Path | None = None,
        preset: str | None = None,
        *,
        graphics: bool = False,
        budget: tuple[str, int] = ("none", 0),
        session_options: dict | None = None,
    ) -> None:
        super().__init__()
        self._filters = [UnstyledSafeMonochrome() if type(f) is Monochrome else f for f in self._filters]  # NO_COLOR
        self.graphics = graphics
        self.session = Session(self._post, data_folder, preset, budget=budget, **(session_options or {}))
        self.main_screen = MainScreen(self.session)
        self.quitting = False
        self.stop_signal: int | None = None
        self.process_owner = False  # set by `run_app`: this app is the process, and may end it
        self.returned = threading.Event()  # set when `run` has returned

    @property
    def exit_status(self) -> int:
        """0, or 128 + the signal's number after SIGTERM or SIGHUP (as a shell reports it)."""
        return 128 + self.stop_signal if self.stop_signal else 0

    def _post(self, message) -> None:
        """Thread-safe: hand a session message to the main screen's queue."""
        self.main_screen.post_message(message)

    def get_default_screen(self) -> Screen:
        return self.main_screen

    def on_mount(self) -> None:
        self.session.training.load_history()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, self._on_stop_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests), or a platform without these signals

    def _on_stop_signal(self, signum: int) -> None:
        """SIGTERM, or SIGHUP from a closed terminal: save and quit as `q` would. The save starts
        at once, off the UI thread; if the app cannot finish exiting after it (a closed terminal
        cannot be restored: Textual then blocks on its output), the process ends anyway, the
        checkpoint safe on disk."""
        self.stop_signal = signum
        threading.Thread(target=self._save_then_make_sure_to_exit, name="kittyterm-stop", daemon=True).start()
        self.call_later(self.action_quit)

    def _save_then_make_sure_to_exit(self, grace: float = 5.0) -> None:
        self.session.shutdown(timeout=60)
        if self.process_owner:
            time.sleep(grace)
            if not self.returned.is_set():
                os._exit(self.exit_status)  # the UI is stuck on a terminal that is gone

    async def on_unmount(self) -> None:
        # Last resort (the app ended some other way than action_quit): never leave threads running.
        self.session.shutdown(timeout=60)

    # ------------------------------------------------------------------ status

    def set_status(self, text: str, level: str = "info") -> None:
        """Show `text` in the status line of the current screen (or the main one)."""
        for screen in (self.screen, self.main_screen):
            lines = screen.query(StatusLine)
            if lines:
                lines.first().set(text, level)
                return

    # ------------------------------------------------------------------ actions

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_gallery(self) -> None:
        if not isinstance(self.screen, GalleryScreen):
            self.push_screen(GalleryScreen(graphics=self.graphics))

    async def action_quit(self) -> None:
        if self.quitting:
            self.set_status("Still saving the checkpoint: quitting in a moment…", "warning")
            return
        self.quitting = True
        busy = self.session.busy_threads
        if not busy:
            self.session.shutdown(timeout=5)
            self.exit(return_code=self.exit_status)
            return
        if "training" in busy:
            self.main_screen.stats.state = TrainingState.STOPPING
        self.main_screen.show_stats()
        self.set_status(f"Quitting: {'saving a checkpoint' if 'training' in busy else 'stopping the sampler'}…", "warning")
        self.run_worker(self._stop_then_exit, thread=True, name="shutdown", group="shutdown")

    def _stop_then_exit(self) -> None:
        try:
            self.session.shutdown(timeout=60)
        finally:
            self.call_from_thread(self.exit, return_code=self.exit_status)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every action a key can do on `screen` now, named as in the footer and the help."""
        found: dict[tuple[int, str], tuple[object, Binding, list[str]]] = {}  # keys that share an action share a command
        for key, active in screen.active_bindings.items():
            binding, node = active.binding, active.node
            ours = {b.action for b in getattr(type(node), "BINDINGS", []) if isinstance(b, Binding)}
            if binding.description and binding.action in ours:
                found.setdefault((id(node), binding.action), (node, binding, []))[2].append(describe_key(self, key))
        for node, binding, keys in found.values():
            text = binding.tooltip or binding.description
            yield SystemCommand(binding.description, f"{text} ({' / '.join(keys)})", functools.partial(self.run_action, binding.action, node))
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command


def run_app(data_folder: Path | None = None, preset: str | None = None) -> int:
    """Open the app: train on `data_folder` (or the remembered one) with `preset` (default by
    device). Returns the exit status (128 + the signal's number after SIGTERM or SIGHUP)."""
    from . import settings

    prefs = settings.load()
    if data_folder is not None:
        data_folder = Path(data_folder).expanduser().resolve()
        if data_folder.is_dir():
            settings.remember_data_folder(data_folder)
    elif prefs.data_folder:
        data_folder = Path(prefs.data_folder)
    graphics = detect_graphics(prefs.graphics)
    share_cpu_with_the_ui()
    app = KittytermApp(data_folder, preset, graphics=graphics, budget=prefs.budget)
    app.process_owner = True
    try:
        app.run()
    finally:
        app.returned.set()
        app.session.shutdown(timeout=60)
    return app.return_code or 0
