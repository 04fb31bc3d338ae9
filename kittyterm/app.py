"""The full-screen Textual app. `run_app` (called by the CLI with no subcommand) builds and runs it.

Threads: the UI thread only reacts to keys and to messages; data loading, training and sampling
run in background threads owned by `Session`, which reports back with thread-safe messages.
Quitting stops those threads (the training thread saves a checkpoint) before the app exits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from .screens.gallery import GalleryScreen
from .screens.help import HelpScreen
from .screens.main import MainScreen
from .session import Session
from .widgets.status import StatusLine

GRAPHICS_VARIABLE = "KITTYTERM_GRAPHICS"  # "halfblock" never uses Kitty/Sixel images


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


def default_preset() -> str:
    import torch

    return "kitty-64" if torch.cuda.is_available() else "tiny"


def share_cpu_with_the_ui() -> None:
    """On a CPU, leave one core to the UI: torch's threads spin at barriers, so on a busy machine
    using every core makes each step slower (up to 10× on 2 cores) and the keyboard laggy."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


class KittytermApp(App[None]):
    """kittyterm: watch a diffusion model learn to draw cats."""

    CSS_PATH = "kittyterm.tcss"
    TITLE = "kittyterm"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("question_mark", "help", "Help", tooltip="Show every key"),
        Binding("q", "quit", "Quit", tooltip="Stop training (saving a checkpoint) and quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        data_folder: Path | None = None,
        preset: str = "tiny",
        *,
        graphics: bool = False,
        budget: tuple[str, int] = ("none", 0),
        session_options: dict | None = None,
    ) -> None:
        super().__init__()
        self.graphics = graphics
        self.session = Session(self._post, data_folder, preset, budget=budget, **(session_options or {}))
        self.main_screen = MainScreen(self.session)
        self.quitting = False

    def _post(self, message) -> None:
        """Thread-safe: hand a session message to the main screen's queue."""
        self.main_screen.post_message(message)

    def get_default_screen(self) -> Screen:
        return self.main_screen

    def on_mount(self) -> None:
        self.session.load_history()

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
            self.exit()
            return
        what = "saving a checkpoint" if "training" in busy else "stopping the sampler"
        self.main_screen.stats.state = "stopping" if "training" in busy else self.main_screen.stats.state
        self.main_screen.show_stats()
        self.set_status(f"Quitting: {what}…", "warning")
        self.run_worker(self._stop_then_exit, thread=True, name="shutdown", group="shutdown")

    def _stop_then_exit(self) -> None:
        try:
            self.session.shutdown(timeout=60)
        finally:
            self.call_from_thread(self.exit)

    # ------------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        main = self.main_screen
        if isinstance(screen, GalleryScreen):
            yield SystemCommand("Gallery: next cat", "Select the next cat (→)", lambda: screen.action_move(1))
            yield SystemCommand("Gallery: previous cat", "Select the previous cat (←)", lambda: screen.action_move(-1))
            yield SystemCommand("Gallery: large view", "Show the selected cat as large as possible (enter)", screen.action_toggle_large)
            yield SystemCommand("Gallery: delete cat", "Delete the selected cat, after asking (d)", screen.action_delete)
            yield SystemCommand("Gallery: export cat", "Copy the selected cat to the export folder (e)", screen.action_export)
            yield SystemCommand("Gallery: export contact sheet", "All cats in one PNG (E)", screen.action_export_sheet)
            yield SystemCommand("Gallery: back", "Back to the main screen (escape)", screen.action_close)
        else:
            yield SystemCommand("Gallery", "Browse the cats you kept (g)", self.action_gallery)
        yield SystemCommand("Train: start / pause / resume", "Pausing saves a checkpoint (space)", main.action_toggle_training)
        yield SystemCommand("Sample cats", "Sample 4 cats from the current model, watching every step (s)", main.action_sample)
        yield SystemCommand("Cancel sampling", "Stop the running sampler (escape)", main.action_cancel_sampling)
        yield SystemCommand("Toggle x₀ / xₜ preview", "Show the predicted clean image or the noisy one (x)", main.action_toggle_x0)
        yield SystemCommand("Keep selected cat", "Save it to the gallery (k)", main.action_keep)
        yield SystemCommand("Keep all cats", "Save the whole batch to the gallery (K)", main.action_keep_all)
        yield SystemCommand("Next cat", "Select the next cat of the batch (→)", lambda: main.action_select(1))
        yield SystemCommand("Training budget", "Cycle the step/minute budget used for the ETA (b)", main.action_cycle_budget)
        yield SystemCommand("Help", "Every key (?)", self.action_help)
        yield SystemCommand("Quit", "Save a checkpoint and quit (q)", self.action_quit)
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command


def run_app(data_folder: Path | None = None, preset: str | None = None) -> None:
    """Open the app: train on `data_folder` (or the remembered one) with `preset` (default by device)."""
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
    app = KittytermApp(data_folder, preset or default_preset(), graphics=graphics, budget=prefs.budget)
    try:
        app.run()
    finally:
        app.session.shutdown(timeout=60)
