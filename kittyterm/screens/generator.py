"""`o`: the generator settings: which model, sampler and steps, seed (random, or locked), how many
cats and which view. Returns the new `settings.Generator`, or None when cancelled."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from engine.samplers import DEFAULT_STEPS, SAMPLERS

from ..jobs.models import check_model_file
from ..settings import COUNTS, MAX_SEED, MAX_STEPS, Generator

CURRENT_LABEL = "This run (EMA), else the latest model"
SHIPPED_LABEL = "Shipped kitty-64"
FILE = "file"
VIEW_LABELS = {"x_t": "noisy xₜ", "x0": "predicted x̂₀"}


def model_options(generator: Generator, runs: list[str]) -> list[tuple[str, str]]:
    """The model choices: this run, the shipped model, every run with a checkpoint, a file."""
    options = [(CURRENT_LABEL, "current"), (SHIPPED_LABEL, "shipped")]
    names = list(runs)
    kind, _, value = generator.model.partition(":")
    if kind == "run" and value not in names:
        names.append(value)  # chosen before and gone since: still shown, so the choice is visible
    options += [(f"Run {name}", f"run:{name}") for name in names]
    options.append(("File…", FILE))
    return options


def parse_whole(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high:,}")
    return value


def model_label(choice: str) -> str:
    """A short name for a model choice, for the preview's caption."""
    kind, _, value = choice.partition(":")
    if kind == "run":
        return f"run {value}"
    if kind == "file":
        return Path(value).name
    return "kitty-64" if kind == "shipped" else "this run"


class GeneratorScreen(ModalScreen[Generator | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "apply", "Apply"),
    ]

    def __init__(self, generator: Generator, runs: list[str]) -> None:
        super().__init__()
        self.generator = generator
        self.runs = runs

    def compose(self) -> ComposeResult:
        g = self.generator
        kind, _, path = g.model.partition(":")
        with Vertical(id="generator-dialog") as dialog:
            dialog.border_title = "Generator"
            dialog.border_subtitle = "ctrl+s applies · escape cancels"
            with Horizontal(classes="generator-row"):
                yield Label("Model", classes="generator-label")
                yield Select(model_options(g, self.runs), value=FILE if kind == FILE else g.model, allow_blank=False, compact=True, id="generator-model")
            with Horizontal(classes="generator-row", id="generator-file-row"):
                yield Label("File", classes="generator-label")
                yield Input(path if kind == FILE else "", placeholder="a checkpoint or weights file", compact=True, id="generator-file")
            with Horizontal(classes="generator-row"):
                yield Label("Sampler", classes="generator-label")
                yield Select([(name, name) for name in SAMPLERS], value=g.sampler, allow_blank=False, compact=True, id="generator-sampler")
                yield Label("Steps", classes="generator-label generator-second")
                yield Input("" if g.steps is None else str(g.steps), placeholder=str(DEFAULT_STEPS[g.sampler]), type="integer", compact=True, id="generator-steps")
            with Horizontal(classes="generator-row"):
                yield Label("Seed", classes="generator-label")
                yield Input(str(g.seed), type="integer", compact=True, id="generator-seed")
                yield Checkbox("locked", g.locked, compact=True, id="generator-locked")
            with Horizontal(classes="generator-row"):
                yield Label("Cats", classes="generator-label")
                yield Select([(str(n), n) for n in COUNTS], value=g.count, allow_blank=False, compact=True, id="generator-count")
                yield Label("View", classes="generator-label generator-second")
                yield Select([(label, view) for view, label in VIEW_LABELS.items()], value=g.view, allow_blank=False, compact=True, id="generator-view")
            yield Static("", id="generator-error")
            with Horizontal(id="generator-buttons"):
                yield Button("Apply", variant="primary", compact=True, id="generator-apply")
                yield Button("Cancel", compact=True, id="generator-cancel")

    def on_mount(self) -> None:
        self.show_file_row()
        self.query_one("#generator-model", Select).focus()

    def show_file_row(self) -> None:
        self.query_one("#generator-file-row").display = self.query_one("#generator-model", Select).value == FILE

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "generator-model":
            self.show_file_row()
        elif event.select.id == "generator-sampler":
            self.query_one("#generator-steps", Input).placeholder = str(DEFAULT_STEPS[str(event.value)])

    def chosen(self) -> Generator:
        """The settings the fields describe; ValueError naming the first bad field."""
        model = str(self.query_one("#generator-model", Select).value)
        if model == FILE:
            text = self.query_one("#generator-file", Input).value.strip()
            if not text:
                raise ValueError("name the model file")
            path = Path(text).expanduser()
            if not path.is_file():
                raise ValueError(f"no model file at {path}")
            check_model_file(path)  # a CheckpointError (a ValueError) saying why it is no model
            model = f"file:{path.resolve()}"
        steps_text = self.query_one("#generator-steps", Input).value
        return Generator(
            model=model,
            sampler=str(self.query_one("#generator-sampler", Select).value),
            steps=parse_whole(steps_text, "steps", 1, MAX_STEPS) if steps_text.strip() else None,
            seed=parse_whole(self.query_one("#generator-seed", Input).value, "the seed", 0, MAX_SEED),
            locked=self.query_one("#generator-locked", Checkbox).value,
            count=int(self.query_one("#generator-count", Select).value),
            view=str(self.query_one("#generator-view", Select).value),
        )

    def action_apply(self) -> None:
        try:
            generator = self.chosen()
        except ValueError as error:
            self.query_one("#generator-error", Static).update(str(error).capitalize())
            return
        self.dismiss(generator)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "generator-apply":
            self.action_apply()
        else:
            self.action_cancel()
