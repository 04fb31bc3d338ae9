"""`?`: every key of every screen, generated from the screens' own bindings."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = (
    "kittyterm trains a small diffusion model on your cat photos and lets you watch it draw.\n"
    "Space trains (and pauses: a checkpoint is saved every time); s samples cats from the current model and "
    "shows every denoising step (o chooses the model, sampler, seed and how many); k keeps a cat in the gallery. "
    "ctrl+p opens the command palette."
)


def describe_key(app, key: str) -> str:
    return " / ".join(app.get_key_display(Binding(k.strip(), "")) for k in key.split(","))


def bindings_table(app, title: str, bindings: list) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", show_header=False, box=None, padding=(0, 2, 0, 0), expand=True)
    table.add_column("key", style="bold rgb(255,176,0)", no_wrap=True, min_width=10)
    table.add_column("action")
    rows: dict[str, list[str]] = {}  # text → keys; bindings that share a text share a row
    for binding in bindings:
        if isinstance(binding, tuple):
            binding = Binding(*binding)
        if binding.system or not binding.description:
            continue
        keys = rows.setdefault(binding.tooltip or binding.description, [])
        key = describe_key(app, binding.key)
        if key not in keys:
            keys.append(key)
    for text, keys in rows.items():
        table.add_row(" ".join(keys), text)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,f1", "close", "Close"),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        from .gallery import GalleryScreen
        from .main import MainScreen

        app = self.app
        with VerticalScroll(id="help-dialog") as scroll:
            scroll.border_title = "kittyterm keys"
            scroll.border_subtitle = "escape closes"
            yield Static(Text(INTRO), id="help-intro")
            yield Static(bindings_table(app, "Main screen", MainScreen.BINDINGS))
            yield Static(bindings_table(app, "Gallery", GalleryScreen.BINDINGS))
            yield Static(bindings_table(app, "Everywhere", list(type(app).BINDINGS) + [Binding("ctrl+p", "command_palette", "Command palette: every action by name")]))

    def action_close(self) -> None:
        self.dismiss(None)
