"""The user's remembered choices: a small JSON file at `locations.config_file()`, written atomically.

A missing, unreadable or damaged file gives the defaults (never an error); unknown keys are
kept when saving so a newer kittyterm's settings survive an older one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.files import atomic_write
from engine.sampling_defaults import DEFAULT_SAMPLER

from . import locations

GRAPHICS_MODES = ("auto", "halfblock")

# Training budgets the `b` key cycles through: (kind, amount); kind "steps" or "minutes".
BUDGETS: tuple[tuple[str, int], ...] = (
    ("none", 0),
    ("steps", 1_000),
    ("steps", 5_000),
    ("steps", 20_000),
    ("steps", 100_000),
    ("minutes", 10),
    ("minutes", 60),
)


def budget_label(budget: tuple[str, int]) -> str:
    kind, amount = budget
    if kind == "steps":
        return f"{amount:,} steps"
    if kind == "minutes":
        return f"{amount} min"
    return "none"


COUNTS = (1, 4, 9, 16)  # cats per batch the app offers
VIEWS = ("x_t", "x0")  # the preview shows the noisy x_t or the predicted clean image x̂0
MAX_SEED = 2**62  # as `kittyterm sample --seed`
MAX_STEPS = 1000


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class Generator:
    """How the app samples: the model, sampler, steps, seed, how many cats and which view."""

    model: str = "current"  # "current" (the run's EMA while it trains, else as `sample` chooses), "shipped", "run:NAME", "file:PATH"
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler's default
    seed: int = 0  # the locked seed, or the last one drawn
    locked: bool = False  # False: every batch gets a new random seed
    count: int = 4
    view: str = "x_t"

    @classmethod
    def from_dict(cls, data: object) -> Generator:
        """The valid fields of `data`; defaults for the rest."""
        from engine.samplers import SAMPLERS

        if not isinstance(data, dict):
            return cls()
        fields = {}
        model = data.get("model")
        if isinstance(model, str) and (model in ("current", "shipped") or model.partition(":")[0] in ("run", "file") and model.partition(":")[2]):
            fields["model"] = model
        if data.get("sampler") in SAMPLERS:
            fields["sampler"] = data["sampler"]
        if data.get("steps") is None or _is_int(data.get("steps"), 1, MAX_STEPS):
            fields["steps"] = data.get("steps")
        if _is_int(data.get("seed"), 0, MAX_SEED):
            fields["seed"] = data["seed"]
        if isinstance(data.get("locked"), bool):
            fields["locked"] = data["locked"]
        if data.get("count") in COUNTS and not isinstance(data.get("count"), bool):
            fields["count"] = data["count"]
        if data.get("view") in VIEWS:
            fields["view"] = data["view"]
        return cls(**fields)


@dataclass
class Settings:
    data_folder: str | None = None
    budget: tuple[str, int] = ("none", 0)
    graphics: str = "auto"  # "auto": Kitty/Sixel images where the terminal has them; "halfblock": never
    export_folder: str | None = None  # default: the current working directory
    generator: Generator = field(default_factory=Generator)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Settings:
        settings = cls()
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        settings.extra = {k: v for k, v in data.items() if k not in known}
        folder = data.get("data_folder")
        settings.data_folder = folder if isinstance(folder, str) and folder else None
        budget = data.get("budget")
        if isinstance(budget, (list, tuple)) and len(budget) == 2 and tuple(budget) in BUDGETS:
            settings.budget = (str(budget[0]), int(budget[1]))
        if data.get("graphics") in GRAPHICS_MODES:
            settings.graphics = data["graphics"]
        export = data.get("export_folder")
        settings.export_folder = export if isinstance(export, str) and export else None
        settings.generator = Generator.from_dict(data.get("generator"))
        return settings

    def to_dict(self) -> dict:
        data = dict(self.extra)
        plain = asdict(self)
        plain.pop("extra")
        plain["budget"] = list(self.budget)
        data.update(plain)
        return data


def load(path: Path | None = None) -> Settings:
    path = Path(path or locations.config_file())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Settings()
    return Settings.from_dict(data) if isinstance(data, dict) else Settings()


def save(settings: Settings, path: Path | None = None) -> None:
    """Write atomically; raises OSError if the folder is unwritable."""
    path = Path(path or locations.config_file())
    text = json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(path, text.encode("utf-8"))


def update(**changes) -> Settings:
    """Load, change some fields, save (best effort: an unwritable config is not an error)."""
    settings = load()
    for key, value in changes.items():
        setattr(settings, key, value)
    try:
        save(settings)
    except OSError:
        pass
    return settings


def remember_data_folder(folder: Path) -> None:
    update(data_folder=str(Path(folder).expanduser().resolve()))
