"""The gallery: browse kept cats (also those saved by `kittyterm sample`), view, delete, export,
and start variations of one or a morph into the next (drawn in the main screen's preview)."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.data import BadImage
from engine.files import write_new

from .. import cats, locations, settings
from ..errors import UserError
from ..jobs import variations
from ..widgets.gallery import CatView, ThumbGrid
from ..widgets.status import StatusLine
from ..wording import counted
from .confirm import ConfirmScreen


def gallery_paths(folder: Path) -> list[Path]:
    """PNG files under `folder` (recursively, hidden files left out), newest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*.png"):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:
            continue
    found.sort(key=lambda item: (-item[0], item[1].name))
    return [path for _, path in found]


class GalleryScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]

    BINDINGS = [
        Binding("left", "move(-1)", "Previous", show=False, tooltip="Move through the thumbnails"),
        Binding("right", "move(1)", "Next", show=False, tooltip="Move through the thumbnails"),
        Binding("up", "move_row(-1)", "Row up", show=False, tooltip="Move through the thumbnails"),
        Binding("down", "move_row(1)", "Row down", show=False, tooltip="Move through the thumbnails"),
        Binding("home", "move(-1000000)", "First", show=False, tooltip="First / last cat"),
        Binding("end", "move(1000000)", "Last", show=False, tooltip="First / last cat"),
        Binding("enter", "toggle_large", "Large", tooltip="Show the selected cat as large as possible"),
        Binding("d,delete", "delete", "Delete", tooltip="Delete the selected cat (asks first)"),
        Binding("e", "export", "Export", tooltip="Copy the selected cat to the export folder"),
        Binding("E", "export_sheet", "Export sheet", show=False, tooltip="Save all cats as one contact-sheet PNG in the export folder"),
        Binding("v", "vary", "Vary", tooltip="Make variations of the selected cat with the generator settings, shown in the preview"),
        Binding("m", "morph", "Morph", show=False, tooltip="Morph the selected cat into the next one, shown in the preview (its GIF goes to the gallery folder)"),
        Binding("r", "reload", "Reload", show=False, tooltip="Read the gallery folder again"),
        Binding("escape", "back", "Back", tooltip="Back to the thumbnails from the large view, else to the main screen"),
        Binding("g", "close", "Main screen", show=False, tooltip="Back to the main screen"),
    ]

    def __init__(self, folder: Path | None = None, graphics: bool = False) -> None:
        super().__init__()
        self.folder = Path(folder) if folder else locations.gallery_dir()
        self.graphics = graphics

    def compose(self) -> ComposeResult:
        with Horizontal(id="gallery-panels"):
            with Vertical(id="thumbs-panel"):
                yield Static(id="gallery-caption")
                yield ThumbGrid(id="thumbs")
                yield Static("No cats yet: press s on the main screen to sample, then k to keep one.", id="gallery-empty")
            with Vertical(id="detail-panel"):
                yield CatView(graphics=self.graphics, id="cat-view")
                yield Static(id="cat-info")
        yield StatusLine(id="gallery-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#thumbs-panel").border_title = "Gallery"
        self.query_one("#detail-panel").border_title = "Cat"
        self.reload()

    @property
    def thumbs(self) -> ThumbGrid:
        return self.query_one(ThumbGrid)

    @property
    def selected_path(self) -> Path | None:
        thumbs = self.thumbs
        return thumbs.paths[thumbs.selected] if thumbs.paths else None

    def set_status(self, text: str, level: str = "info") -> None:
        self.query_one("#gallery-status", StatusLine).set(text, level)

    def reload(self, select: int | Path | None = None) -> None:
        paths = gallery_paths(self.folder)
        index = 0
        if isinstance(select, Path) and select in paths:
            index = paths.index(select)
        elif isinstance(select, int):
            index = select
        self.thumbs.set_paths(paths, index)
        self.query_one("#gallery-empty").display = not paths
        self.thumbs.display = bool(paths)
        self.update_detail()
        if not self.query_one("#gallery-status", StatusLine).text:
            self.show_keys()

    def show_keys(self) -> None:
        paths = self.thumbs.paths
        self.set_status(f"{counted(len(paths), 'cat')} · arrows move · enter large · m morph · escape back" if paths else "The gallery is empty")  # the footer has the rest

    def update_detail(self) -> None:
        thumbs = self.thumbs
        path = self.selected_path
        view = self.query_one(CatView)
        view.show(path)
        caption = Text()
        caption.append("Gallery ", "bold")
        caption.append(f"· {thumbs.selected + 1 if path else 0}/{len(thumbs.paths)}", "dim")
        self.query_one("#gallery-caption", Static).update(caption)
        info = Text()
        if path is not None:
            info.append(path.name, "bold")
            meta = cats.read_cat_info(path)
            if meta is not None:
                info.append(f"\nseed {meta.seed} · {meta.sampler} · {counted(meta.steps, 'step')}")
                model = meta.model or (meta.model_sha256[:12] if meta.model_sha256 else "")
                if model:
                    info.append(f"\n{model}", "dim")
            else:
                info.append("\nno kittyterm metadata", "dim")
            if view.problem is not None:
                info.append(f"\ncannot be shown: {view.problem}", "red")
        self.query_one("#cat-info", Static).update(info)

    # ------------------------------------------------------------------ actions

    def action_move(self, delta: int) -> None:
        self.thumbs.move(delta)
        self.update_detail()

    def action_move_row(self, rows: int) -> None:
        self.action_move(rows * self.thumbs.columns)

    def action_toggle_large(self) -> None:
        self.toggle_class("-large")
        if self.has_class("-large"):
            self.set_status("enter or escape: back to the thumbnails · arrows move")
        else:
            self.show_keys()

    def action_back(self) -> None:
        if self.has_class("-large"):
            self.action_toggle_large()
        else:
            self.dismiss()

    def action_close(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload(self.selected_path)
        self.set_status(f"{len(self.thumbs.paths)} cat" + ("s" if len(self.thumbs.paths) != 1 else ""))

    def action_delete(self) -> None:
        path = self.selected_path
        if path is None:
            self.set_status("Nothing to delete", "warning")
            return
        index = self.thumbs.selected
        animations = cats.animations_of(path)  # not listed here: they go with their cat
        gifs = "denoising GIF" if len(animations) == 1 else f"{len(animations)} denoising GIFs"
        also = f" and its {gifs} ({', '.join(gif.name for gif in animations)})" if animations else ""

        def answered(yes: bool | None) -> None:
            if not yes:
                self.set_status("Kept it")
                return
            try:
                path.unlink()
                for gif in animations:
                    gif.unlink(missing_ok=True)
            except OSError as error:
                self.reload(path if path.exists() else max(0, min(index, len(self.thumbs.paths) - 2)))
                self.set_status(f"Could not delete {Path(error.filename or path).name}: {error.strerror or error}", "error")
                return
            self.reload(max(0, min(index, len(self.thumbs.paths) - 2)))
            self.set_status(f"Deleted {path.name}{also}", "success")

        self.app.push_screen(ConfirmScreen(f"Delete {path.name}{also}? This cannot be undone."), answered)

    def action_vary(self) -> None:
        path = self.selected_path
        if path is None:
            self.set_status("Nothing to vary", "warning")
            return
        settings.update(generator=self.app.session.sampling.vary(path))
        self.dismiss()
        self.app.main_screen.set_status(f"Preparing variations of {path.name}…")

    def action_morph(self) -> None:
        paths = self.thumbs.paths
        if len(paths) < 2:
            self.set_status("A morph needs two kept cats: keep another one first", "warning")
            return
        first = self.thumbs.selected
        ends = paths[first], paths[(first + 1) % len(paths)]
        try:
            variations.morph_ends(*ends)
        except UserError as error:
            self.set_status(str(error), "error")
            return
        self.app.session.sampling.morph(*ends)
        self.dismiss()
        self.app.main_screen.set_status(f"Preparing the morph from {ends[0].name} to {ends[1].name}…")

    def export_folder(self) -> Path:
        chosen = settings.load().export_folder
        return Path(chosen).expanduser() if chosen else Path.cwd()

    def export(self, stem: str, png: bytes) -> str:
        """Save a PNG into the export folder in a terminal; in a browser tab (`kittyterm serve`),
        where that folder would be the server's, offer it as a download. Returns where it went."""
        if self.app.is_web:
            self.app.deliver_binary(io.BytesIO(png), save_filename=f"{stem}.png", mime_type="image/png")
            return f"your browser's downloads ({stem}.png)"
        return str(write_new(self.export_folder(), stem, ".png", png))

    def action_export(self) -> None:
        path = self.selected_path
        if path is None:
            self.set_status("Nothing to export", "warning")
            return
        problem = self.query_one(CatView).problem
        if problem is not None:
            self.set_status(f"{path.name} cannot be shown ({problem}), so it is not exported", "warning")
            return
        try:
            target = self.export(path.stem, path.read_bytes())
        except OSError as error:
            self.set_status(f"Could not export: {error.strerror or error}", "error")
            return
        self.set_status(f"Exported to {target}", "success")

    def action_export_sheet(self) -> None:
        import numpy as np

        from ..widgets.gallery import load_rgb, make_thumbnail

        images, left_out = [], []
        for path in self.thumbs.paths:
            try:
                images.append(make_thumbnail(load_rgb(path), 64).transpose(2, 0, 1))
            except BadImage:
                left_out.append(path.name)
        if not images:
            self.set_status("Nothing to export" + (f": {counted(len(left_out), 'file')} cannot be read" if left_out else ""), "warning")
            return
        try:
            png = io.BytesIO()
            cats.png_writer(cats.contact_sheet(np.stack(images)))(png)
            target = self.export(f"kittyterm-gallery-{time.strftime('%Y%m%d-%H%M%S')}", png.getvalue())
        except OSError as error:
            self.set_status(f"Could not export: {error.strerror or error}", "error")
            return
        skipped = f", leaving out {', '.join(left_out[:3])}{' and more' if len(left_out) > 3 else ''} (unreadable)" if left_out else ""
        self.set_status(f"Saved a contact sheet of {counted(len(images), 'cat')} to {target}{skipped}", "success" if not left_out else "warning")


__all__ = ["GalleryScreen", "gallery_paths"]
