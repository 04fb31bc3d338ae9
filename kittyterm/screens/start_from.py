"""How a new run on a folder starts: fine-tune the shipped cat model, or train from scratch."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

# (answer, button label, one line on what it means); the answer is what `TrainingSession.choose_start` takes.
CHOICES = (
    ("fine-tune", "Fine-tune the shipped cat model (f)", "it draws cats from the first minute and learns yours"),
    ("tiny", "From scratch: tiny (t)", "a small model that learns fast on a CPU"),
    ("kitty-64", "From scratch: kitty-64 (k)", "the full model: for a GPU"),
)


class StartFromScreen(ModalScreen[str | None]):
    BINDINGS = [
        Binding("f", "choose('fine-tune')", "Fine-tune"),
        Binding("t", "choose('tiny')", "tiny"),
        Binding("k", "choose('kitty-64')", "kitty-64"),
        Binding("escape", "choose(None)", "Cancel"),
    ]

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical(id="start-dialog"):
            yield Static(f"A new run on [b]{self.folder}[/b]: how should it start? It is remembered with the run.", id="start-question", markup=True)
            for answer, label, meaning in CHOICES:
                yield Button(label, id=f"start-{answer}", variant="primary" if answer == "fine-tune" else "default")
                yield Static(meaning, classes="start-meaning")

    def on_mount(self) -> None:
        self.query_one("#start-fine-tune", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id.removeprefix("start-"))

    def action_choose(self, answer: str | None) -> None:
        self.dismiss(answer)
