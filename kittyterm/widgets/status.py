"""The line at the bottom that says what just happened, or what went wrong; a message too long
for one line (a path at its end, say) takes a second line rather than lose its end."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

LEVELS = ("info", "success", "warning", "error")
ICONS = {"info": "ℹ", "success": "✓", "warning": "⚠", "error": "✗"}


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine {
        height: auto;
        max-height: 2;
        width: 1fr;
        padding: 0 1;
        background: $boost;
        color: $text-muted;
    }
    StatusLine.-success { color: $text-success; }
    StatusLine.-warning { color: $text-warning; background: $warning-muted; }
    StatusLine.-error { color: $text-error; background: $error-muted; text-style: bold; }
    """

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.text = ""
        self.level = "info"
        self.set(text)

    def set(self, text: str, level: str = "info") -> None:
        if level not in LEVELS:
            level = "info"
        self.text = text
        self.level = level
        for name in LEVELS:
            self.set_class(name == level and level != "info", f"-{name}")
        line = Text(overflow="ellipsis")
        if text:
            line.append(f"{ICONS[level]} ")
            line.append(text)
        self.update(line)
