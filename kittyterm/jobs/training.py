"""Opening a training run: one policy for `kittyterm train` and the app's space key.

`open_training` picks the device, preset and batch, names the run after its data folder, takes
the run's lock (one writer per run), checks that the run folder can be written before any work,
decodes the images, and resumes the run's checkpoint or starts a new run: from scratch
(predicting v), or with `init` from exported weights (a fine-tune: fresh optimizer, a gentler
learning rate, the EMA starting from the same weights, the file's prediction). A folder's run
is found again by its recorded folder, so a run started with a choice (a preset, a fine-tune)
goes on without repeating it. A checkpoint that cannot be resumed is never moved aside behind
the user's back: it is an error that says how to start afresh.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.files import RunBusy, RunLock

from .. import locations, runs
from ..errors import UserError, existing_folder
from ..wording import counted
from .devices import check_cpu_batch_fits, is_gpu, resolve_device

DEFAULT_BATCH = {"gpu": 128, "cpu": 32}
SHIPPED_INIT = "kitty-64"  # `--init kitty-64`: the shipped model
FINE_TUNE_LR = 1e-4  # a fifth of a new run's peak rate: the shipped cats must not relapse into noise
FINE_TUNE_WARMUP = 50
# What a new run's network predicts: v (Salimans & Ho 2022). At an equal budget it scored FID
# 93–97 against ε's 107 on two seeds, and 54 against 69 at twice the budget, with no colour casts
# against 4–11 % (BENCHMARKS.md, "Recipes at an equal budget"). A resumed run and a fine-tune
# keep their file's prediction.
NEW_RUN_PREDICTION = "v"
FRESH_HINT = "start the run afresh to go on (`kittyterm train --fresh`, or F in the app); the old run is kept aside"
Progress = Callable[[int, int], None]


def default_preset(device: str) -> str:
    """`kitty-64` where a GPU trains it in minutes, `tiny` on a CPU (kitty-64 manages ~18 images/s there)."""
    return "kitty-64" if is_gpu(device) else "tiny"


def default_batch(device: str) -> int:
    return DEFAULT_BATCH["gpu" if is_gpu(device) else "cpu"]


@dataclass
class TrainingOptions:
    """What the user chose; None means "the default" (decided here, nowhere else)."""

    data: Path
    preset: str | None = None
    run: str | None = None  # an explicit run name; default: named after preset and data folder
    fresh: bool = False  # move the existing run aside and start a new one
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    device: str = "auto"
    compile: bool = False
    cuda_graph: bool = False
    init: str | None = None  # start a new run from these weights: SHIPPED_INIT or a file


@dataclass
class TrainingRun:
    """An opened run: the trainer, where it saves, and the lock that makes this process its only writer."""

    trainer: object  # engine.trainer.Trainer
    name: str
    preset: str
    lock: RunLock | None
    resumed: bool
    num_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know, one line each

    @property
    def checkpoint(self) -> Path:
        return runs.checkpoint_path(self.name)

    def close(self) -> None:
        """Release the run's lock (the training thread must have stopped)."""
        if self.lock is not None:
            self.lock.release()


def lr_problem(lr: float) -> str | None:
    """Why `lr` cannot be a learning rate, or None."""
    if not math.isfinite(lr) or not 0 < lr <= 1:
        return f"must be a number above 0 and at most 1, not {lr:g}"
    return None


def check_run_name(name: str) -> str:
    if not name.strip() or "/" in name or "\\" in name or name.startswith((".", "-")) or not name.isprintable() or runs.is_archived(name):
        raise UserError(f"bad run name {name!r}" + (" (it would read as an option)" if name.startswith("-") else ""))
    return name


def init_file(choice: str) -> Path:
    """The weights `init` names: the shipped model for `kitty-64`, else a file."""
    if choice == SHIPPED_INIT:
        path = locations.shipped_model()
        if not path.is_file():
            raise UserError("the shipped kitty-64 model is not installed; give --init a file from `kittyterm export`")
        return path
    path = Path(choice).expanduser()
    if not path.is_file():
        raise UserError(f"--init {path}: {'is a folder, not a weights file' if path.is_dir() else 'no such file'}")
    return path


def preset_of(path: Path) -> str:
    """The preset of the network in a model file, read from its header alone."""
    from engine.checkpoint import CheckpointError, CheckpointFile, model_configs
    from engine.unet import PRESETS

    try:
        with CheckpointFile(path) as checkpoint:
            config, _ = model_configs(path, checkpoint.metadata)
    except CheckpointError as error:
        raise UserError(f"cannot start from {error}") from None
    found = next((name for name, preset in PRESETS.items() if preset == config), None)
    if found is None:
        raise UserError(f"cannot start from {path}: its network is none of the presets ({', '.join(PRESETS)})")
    return found


def plan(options: TrainingOptions, device: str) -> tuple[str, str]:
    """(run name, preset) for `options` on `device`, before anything is loaded."""
    from engine.unet import PRESETS

    data = existing_folder(options.data, "data folder")
    preset = options.preset
    if options.init is not None:
        path = init_file(options.init)
        preset = preset_of(path)
        if options.preset is not None and options.preset != preset:
            raise UserError(f"--init {path.name} holds a {preset} model, not the --preset {options.preset} asked for")
    if options.run is not None:
        name = check_run_name(options.run)
        preset = preset or runs.run_info(name).get("preset") or default_preset(device)
    elif preset is None and (found := runs.run_of_folder(data)) is not None:
        name, preset = found, runs.run_info(found).get("preset") or default_preset(device)
    else:
        preset = preset or default_preset(device)
        name = runs.run_name(preset, data)
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return name, preset


def needs_start_choice(options: TrainingOptions, device: str) -> bool:
    """True when nothing says how a run on this folder should start: no preset, no `init`, no
    run name, and no run of this folder yet (the app then asks: fine-tune or from scratch)."""
    if options.preset is not None or options.init is not None or options.run is not None:
        return False
    try:
        name, _ = plan(options, device)
    except UserError:
        return False  # opening will say what is wrong
    return not runs.checkpoint_path(name).exists() and "init" not in runs.run_info(name)


def writable_run_folder(name: str) -> None:
    """Refuse now, not at the first save after the whole budget: the run folder must be a folder we can write."""
    folder = runs.run_dir(name)
    for path in (folder.parent, folder):
        if path.exists() and not path.is_dir():
            raise UserError(f"cannot keep runs in {path}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the run folder {folder}: {error.strerror or error}") from None


def remove_unused_run_folder(name: str) -> None:
    """Remove the folder of a run that failed to open before it trained: it holds only its lock
    (and its record, if the failure came later), and must not show up among the runs."""
    folder = runs.run_dir(name)
    leftovers = {RunLock.FILE_NAME, runs.RUN_FILE}
    try:
        if {path.name for path in folder.iterdir()} <= leftovers:
            for left in leftovers:
                (folder / left).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass  # something else appeared in it: leave it


def take_lock(name: str) -> RunLock:
    try:
        return RunLock(runs.run_dir(name)).acquire()
    except RunBusy as busy:
        raise UserError(f"{busy}; only one trainer may write a run (its last checkpoint can still be sampled)") from None
    except OSError as error:
        raise UserError(f"cannot lock run {name}: {error.strerror or error}") from None


def open_training(options: TrainingOptions, progress: Progress | None = None, ddp=None) -> TrainingRun:
    """Open (resume or start) the run `options` describe; see the module docstring.

    Under torchrun (`ddp` enabled) rank 0 alone locks, moves aside and records the run, and
    decodes the images first; the other ranks then read the decoded cache.
    """
    from engine.checkpoint import CheckpointError
    from engine.data import DataError, load_image_folder
    from engine.schedules import ScheduleConfig
    from engine.trainer import TrainConfig, Trainer
    from engine.unet import PRESETS

    device = ddp.device if ddp is not None and ddp.enabled else resolve_device(options.device)
    main = ddp is None or ddp.is_main
    world = ddp.world_size if ddp is not None else 1
    if options.batch_size is not None and options.batch_size % world:
        raise UserError(f"--batch-size {options.batch_size} (the global batch) must be divisible by the {world} processes")
    if options.lr is not None and (problem := lr_problem(options.lr)):
        raise UserError(f"learning rate {problem}")
    if options.cuda_graph and (not str(device).startswith("cuda") or world > 1):
        raise UserError(f"--cuda-graph captures the step on one CUDA GPU, not on {device}" + (" under torchrun" if world > 1 else ""))
    name, preset = plan(options, device)
    if options.batch_size is not None and not is_gpu(str(device)):
        check_cpu_batch_fits(preset, options.batch_size, world)  # a GPU says "out of memory"; a CPU run is killed without a word
    data = Path(options.data).expanduser().resolve()
    notes: list[str] = []
    lock = None
    created = not runs.run_dir(name).exists()
    if main:
        writable_run_folder(name)
        lock = take_lock(name)
    try:
        started_from = runs.run_info(name).get("init")
        saved = runs.checkpoint_path(name).exists()
        # A fine-tune chosen, then stopped before its first save, goes on as one.
        recorded_choice = options.init is None and not saved and not options.fresh and started_from is not None
        choice = started_from if recorded_choice else options.init
        try:
            init_path = init_file(choice) if choice is not None else None
        except UserError:
            if not recorded_choice:
                raise
            raise UserError(f"run {name} was to be fine-tuned from {choice}, which is gone: {FRESH_HINT}") from None
        # How the run records where it started: `kitty-64`, or the file's resolved path.
        init = None if init_path is None else SHIPPED_INIT if choice == SHIPPED_INIT else str(init_path.resolve())
        if main:
            if init is not None and not options.fresh and saved and started_from != init:
                raise UserError(
                    f"run {name} already has a checkpoint ({'from ' + started_from if started_from else 'trained from scratch'}); "
                    "--init starts a new run: add --fresh (the old run is kept aside) or name another with --run"
                )
        if ddp is not None and not main:
            ddp.barrier()  # rank 0 decodes the folder and fills the cache; the others then read it
        try:
            images = load_image_folder(data, PRESETS[preset].image_size, locations.cache_dir() / "images", progress)
        except DataError as error:
            raise UserError(str(error)) from None
        finally:
            if ddp is not None and main:
                ddp.barrier()
        if main:  # only now that the images are there: a folder that cannot train changes no run
            recorded = runs.run_info(name).get("data")
            if options.fresh and runs.checkpoint_path(name).exists():
                lock.release()
                moved = runs.archive_run(name)
                writable_run_folder(name)
                lock = take_lock(name)
                notes.append(f"starting afresh; the previous run is kept in {moved}")
            elif recorded and Path(recorded) != data:
                notes.append(f"run {name} was trained on {recorded}; it goes on with {data} as asked")
            runs.record_run(name, data, preset, init=started_from if saved and not options.fresh else init)
        if ddp is not None:
            ddp.barrier()  # the run folder is settled before any rank reads its checkpoint
        checkpoint = runs.checkpoint_path(name)
        overrides: dict = {"compile": options.compile, "cuda_graph": options.cuda_graph}
        if options.batch_size is not None:
            overrides["batch_size"] = options.batch_size
        if checkpoint.exists():
            if options.lr is not None:
                overrides["lr"] = options.lr
                notes.append(f"learning rate set to {options.lr:g} for the rest of the run")
            if options.seed is not None:
                notes.append("--seed applies to new runs only: a resumed run continues its own random streams")
            try:
                trainer = Trainer.resume(checkpoint, images.images, device, overrides, ddp)
            except CheckpointError as error:
                raise UserError(f"{error}: {FRESH_HINT}") from None
            resumed = True
        else:
            fine_tune = init_path is not None
            config = TrainConfig(
                batch_size=options.batch_size or default_batch(device) * world,
                lr=options.lr if options.lr is not None else FINE_TUNE_LR if fine_tune else TrainConfig.lr,
                warmup_steps=FINE_TUNE_WARMUP if fine_tune else TrainConfig.warmup_steps,
                seed=options.seed or 0,
                compile=options.compile,
                cuda_graph=options.cuda_graph,
            )
            if fine_tune:
                try:
                    trainer = Trainer.initialised_from(init_path, images.images, config, device, PRESETS[preset], ddp)
                except CheckpointError as error:
                    raise UserError(f"cannot start from {error}") from None
                notes.append(f"fine-tuning from {choice} (learning rate {config.lr:g})")
            else:
                schedule = ScheduleConfig(prediction=NEW_RUN_PREDICTION)
                trainer = Trainer(PRESETS[preset], images.images, config, schedule, device=device, distributed=ddp)
            resumed = False
    except BaseException:
        if lock is not None:
            if created:
                remove_unused_run_folder(name)  # still locked: no one else can take it meanwhile
            lock.release()
        raise
    if trainer.config.batch_size > len(images):
        notes.append(f"the batch of {trainer.config.batch_size:,} is larger than the {counted(len(images), 'image')}: every step repeats them")
    return TrainingRun(trainer, name, preset, lock, resumed, len(images), images.skipped, notes)
