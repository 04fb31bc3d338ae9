"""The `kittyterm` command: the app with no arguments, or `train`, `sample`, `eval`, `export` headless.

Heavy modules (torch, the engine, the app) are imported inside the commands so that
`kittyterm --help` starts instantly.
"""

from __future__ import annotations

import enum
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import locations, runs

app = typer.Typer(
    name="kittyterm",
    help="Watch a diffusion model learn to draw cats, in your terminal.",
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True, highlight=False, soft_wrap=True)


class Sampler(str, enum.Enum):
    dpmpp_sde = "dpm++sde"
    dpmpp = "dpm++"
    ddim = "ddim"
    ddpm = "ddpm"


class Preset(str, enum.Enum):
    tiny = "tiny"
    kitty64 = "kitty-64"


GRID_MAX = 1024  # cats on a --grid contact sheet, at most
# Exceptions that are the command line's own control flow (exit codes, usage errors), never bugs;
# ClickException is found through the MRO because typer vendors click in recent versions.
_CLI_CONTROL = (typer.Exit, typer.Abort, *[c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"])


class UserError(Exception):
    """A problem the user can fix; shown as one line, exit status 1."""


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def guarded(function):
    """Turn the errors a user can cause into one clean line instead of a traceback."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from engine.checkpoint import CheckpointError
        from engine.data import DataError

        try:
            return function(*args, **kwargs)
        except (UserError, DataError, CheckpointError) as error:
            fail(str(error))
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            fail(f"{error.strerror or error}{where}")
        except _CLI_CONTROL:
            raise
        except Exception as error:  # a bug, not the user's fault: still one line, never a traceback
            if os.environ.get("KITTYTERM_DEBUG"):
                raise
            text = str(error).strip().splitlines()
            fail(f"unexpected {type(error).__name__}: {text[0] if text else ''} (set KITTYTERM_DEBUG=1 for the traceback)")

    return wrapper


def ensure_writable_folder(folder: Path, what: str) -> Path:
    folder = folder.expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise UserError(f"cannot create {what} {folder}: {getattr(error, 'strerror', None) or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder} is not writable")
    return folder


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    if device not in {"cpu", "cuda"} and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of images to train on (remembered)."),
    preset: Optional[Preset] = typer.Option(None, help="Model preset to train (default: kitty-64 on a GPU, tiny on a CPU)."),
) -> None:
    """Open the full-screen app (with no command)."""
    if ctx.invoked_subcommand is not None:
        return
    if data is not None and not data.expanduser().is_dir():
        fail(f"data folder {data} does not exist")
    from .app import run_app

    run_app(data.expanduser().resolve() if data else None, preset.value if preset else None)


def load_images(folder: Path, size: int):
    """Decode (or read from the cache) every image in `folder`, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.data import load_image_folder

    with Progress(
        TextColumn("loading images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("load", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        image_set = load_image_folder(folder, size, locations.cache_dir() / "images", progress=report)
    console.print(f"{len(image_set)} images from {folder}")
    if image_set.skipped:
        shown = ", ".join(f"{Path(p).name} ({why})" for p, why in image_set.skipped[:5])
        more = f" and {len(image_set.skipped) - 5} more" if len(image_set.skipped) > 5 else ""
        console.print(f"[yellow]warning:[/] skipped {len(image_set.skipped)} unusable files: {shown}{more}")
    return image_set


@app.command()
@guarded
def train(
    data: Path = typer.Option(..., "--data", help="Folder of images (searched recursively)."),
    preset: Preset = typer.Option(Preset.kitty64, help="Model preset."),
    steps: Optional[int] = typer.Option(None, min=1, help="Train this many steps, then stop."),
    minutes: Optional[float] = typer.Option(None, min=0.01, help="Train this many minutes, then stop."),
    resume: bool = typer.Option(True, "--resume/--fresh", help="Continue the run for this preset and data, or start over (the old run is kept aside)."),
    batch_size: Optional[int] = typer.Option(None, min=1, max=4096, help="Images per step (default: 128 on a GPU, 32 on a CPU; under torchrun the global batch, that much per process by default)."),
    lr: float = typer.Option(5e-4, min=1e-7, max=1.0, help="Peak AdamW learning rate."),
    run: Optional[str] = typer.Option(None, "--run", "--run-name", help="Run name (default: PRESET-DATAFOLDER); spell it --run-name under torchrun, whose parser takes --run for its --run-path."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (GPU)."),
    seed: int = typer.Option(0, min=0, max=2**62, help="Seed for initialisation, noise and data order."),
    checkpoint_minutes: float = typer.Option(2.0, min=0.05, help="Save a checkpoint this often."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1, help="Also save a checkpoint every N steps."),
) -> None:
    """Train a model headless, with a progress bar; Ctrl+C saves and stops."""
    from engine.checkpoint import CheckpointError
    from engine.trainer import TrainConfig, Trainer
    from engine.unet import PRESETS

    data = data.expanduser()
    if not data.is_dir():
        raise UserError(f"data folder {data} does not exist or is not a folder")
    if run is not None and (not run.strip() or "/" in run or "\\" in run or run.startswith(".") or not run.isprintable()):
        raise UserError(f"bad run name {run!r}")
    device = resolve_device(device)
    ddp = _init_distributed(device)  # under torchrun: join the DDP group, pin this rank's GPU
    device = ddp.device
    if batch_size is not None and batch_size % ddp.world_size:
        raise UserError(f"--batch-size {batch_size} (the global batch) must be divisible by the {ddp.world_size} processes")
    model_config = PRESETS[preset.value]
    name = run or runs.run_name(preset.value, data)
    checkpoint = runs.run_dir(name) / runs.CHECKPOINT_NAME
    ensure_writable_folder(checkpoint.parent.parent, "runs folder")
    if not resume and checkpoint.parent.exists() and ddp.is_main:
        kept = runs.archive_run(name)
        console.print(f"starting fresh; the previous run is kept in {kept}")
    ddp.barrier()
    if not ddp.is_main:
        ddp.barrier()  # rank 0 decodes the folder and fills the cache; the others then read it
    image_set = load_images(data, model_config.image_size)
    if ddp.is_main:
        ddp.barrier()

    overrides = {"compile": compile}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if checkpoint.exists():
        try:
            trainer = Trainer.resume(checkpoint, image_set.images, device, overrides, ddp)
        except CheckpointError as error:
            raise UserError(f"{error} (use --fresh to start a new run; the old one is kept)") from None
        console.print(f"resuming run {name} at step {trainer.step_count}")
    else:
        config = TrainConfig(
            batch_size=batch_size or (128 if device.startswith("cuda") else 32) * ddp.world_size, lr=lr, seed=seed, compile=compile
        )
        trainer = Trainer(model_config, image_set.images, config, device=device, distributed=ddp)
        on = f"{ddp.world_size} processes (DDP, {ddp.backend})" if ddp.enabled else device
        console.print(f"new run {name}: preset {preset.value}, batch {config.batch_size}, on {on}")
    max_steps = trainer.step_count + steps if steps is not None else None
    max_seconds = minutes * 60 if minutes is not None else None
    _train_with_progress(trainer, checkpoint, max_steps, max_seconds, checkpoint_minutes * 60, ddp, checkpoint_every)
    console.print(f"checkpoint: {checkpoint}")
    console.print(f"sample it with: kittyterm sample --checkpoint {checkpoint} --out cats/")


def _init_distributed(device: str):
    """Under torchrun (WORLD_SIZE > 1) join the DDP process group and silence every rank but 0;
    otherwise a no-op single-process context."""
    from engine.distributed import DistributedError, init_from_env

    try:
        context = init_from_env(device)
    except DistributedError as error:
        raise UserError(str(error)) from None
    if not context.is_main:
        console.quiet = True
    return context


def _train_with_progress(trainer, checkpoint: Path, max_steps, max_seconds, checkpoint_seconds: float, ddp=None, checkpoint_steps=None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from engine import events
    from engine.distributed import DistributedTrainingThread
    from engine.threads import TrainingThread

    distributed = {"context": ddp} if ddp is not None and ddp.enabled else {}
    thread = (DistributedTrainingThread if distributed else TrainingThread)(
        trainer,
        checkpoint,
        **distributed,
        max_steps=max_steps,
        max_seconds=max_seconds,
        checkpoint_every_steps=checkpoint_steps or 10**9,
        checkpoint_every_seconds=checkpoint_seconds,
    )
    if max_steps is not None:
        total, unit = max_steps - trainer.step_count, "steps"
    elif max_seconds is not None:
        total, unit = max_seconds, "seconds"
    else:
        total, unit = None, "steps"
    errors: list[str] = []
    columns = [
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("step {task.fields[step]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=total, step=trainer.step_count, loss="-", speed="-")
        first_step = trainer.step_count
        smoothed: list[float] = []
        last_line = [time.monotonic()]

        compile_warned = []

        def on_event(event) -> None:
            if isinstance(event, events.TrainingStep):
                if trainer.compile_failure and not compile_warned:
                    compile_warned.append(True)
                    progress.console.print(f"[yellow]warning:[/] torch.compile failed, training without it: {trainer.compile_failure}")
                smoothed.append(event.loss if not smoothed else 0.98 * smoothed[-1] + 0.02 * event.loss)
                done = event.step - first_step if unit == "steps" else event.elapsed
                progress.update(
                    task,
                    completed=done,
                    step=event.step,
                    loss=f"{smoothed[-1]:.4f}",
                    speed=f"{event.images_per_second:.0f}",
                )
                if not progress.console.is_terminal and time.monotonic() - last_line[0] >= 30:
                    last_line[0] = time.monotonic()  # a log file gets a line every 30 s instead of a bar
                    progress.console.print(
                        f"step {event.step}  loss {smoothed[-1]:.4f}  {event.images_per_second:.1f} img/s  "
                        f"epoch {event.epoch:.2f}  {event.elapsed / 60:.1f} min"
                    )
            elif isinstance(event, events.CheckpointSaved):
                progress.console.print(f"saved checkpoint at step {event.step}")
            elif isinstance(event, events.StepSkipped):
                progress.console.print(f"[yellow]skipped step {event.step}: {event.reason}")
            elif isinstance(event, events.RolledBack):
                progress.console.print(
                    f"[yellow]rolled back from step {event.from_step} to the checkpoint at step "
                    f"{event.step}, learning rate now {event.lr:.3g}:[/] {event.reason}"
                )
            elif isinstance(event, events.EngineError):
                errors.append(event.message)
                progress.console.print(f"[red]error:[/] {event.message}")

        thread.subscribe(on_event)
        stop_signal = []

        def on_signal(signum, _frame) -> None:
            stop_signal.append(signum)
            thread.stop(timeout=0)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if thread.finished_reason == "error":
        raise UserError(errors[-1] if errors else "training failed")
    save_error = getattr(thread, "save_error", None)  # the last save failed: say so, exit non-zero
    if save_error is not None:
        raise UserError(f"checkpoint not saved at step {trainer.step_count}: {save_error}; {checkpoint} keeps the last good save")
    if stop_signal:
        console.print(f"stopped at step {trainer.step_count}; checkpoint saved")
        raise typer.Exit(130 if stop_signal[0] == signal.SIGINT else 143)


@app.command()
@guarded
def sample(
    out: Path = typer.Option(..., "--out", help="Folder for the PNGs (created if missing; files are never overwritten)."),
    n: int = typer.Option(16, "-n", "--num", min=1, max=100_000, help="How many cats."),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help="Sampler steps (default: 25 dpm++sde, 20 dpm++, 50 ddim, 1000 ddpm)."),
    sampler: Sampler = typer.Option(Sampler.dpmpp_sde, help="Sampling algorithm."),
    seed: Optional[int] = typer.Option(None, min=0, max=2**62, help="Seed of the first cat (the rest follow) (default: random)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Model to use (default: your latest run, else the shipped kitty-64)."),
    grid: bool = typer.Option(False, "--grid", help="Also write a contact sheet of all the cats."),
    batch_size: int = typer.Option(64, min=1, max=4096, help="Cats drawn at once (memory stays constant for any -n)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Draw cats from a trained model into PNG files that record their seed and settings."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.checkpoint import load_model
    from engine.generate import generate
    from engine.samplers import DEFAULT_STEPS, sampler_timesteps

    from engine.files import write_new

    from .cats import CatInfo, contact_sheet, png_writer, save_cat

    out = ensure_writable_folder(out, "output folder")
    device = resolve_device(device)
    model_path = checkpoint.expanduser() if checkpoint else runs.default_model()
    if not model_path.exists():
        raise UserError(f"no model at {model_path}: train one with `kittyterm train` or pass --checkpoint")
    loaded = load_model(model_path, device)
    steps = steps or DEFAULT_STEPS[sampler.value]
    steps = min(steps, loaded.schedule.num_steps)
    first_seed = seed if seed is not None else secrets.randbelow(2**31)
    seeds = [first_seed + i for i in range(n)]
    frames = len(sampler_timesteps(sampler.value, loaded.schedule, steps))
    console.print(f"model {model_path} (sha256 {loaded.sha256[:12]}), {sampler.value} {steps} steps, seeds {first_seed}…")
    began = time.perf_counter()
    written: list[Path] = []
    kept = [] if grid else None
    with Progress(TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("sample", total=n * frames)
        for start in range(0, n, batch_size):
            chunk = seeds[start : start + batch_size]
            images = generate(
                loaded.model,
                loaded.schedule,
                chunk,
                sampler.value,
                steps,
                device,
                callback=lambda *_: progress.advance(task, len(chunk)),
            ).numpy()
            for chunk_seed, image in zip(chunk, images):
                info = CatInfo(chunk_seed, sampler.value, steps, loaded.sha256, model_path.name)
                written.append(save_cat(out, image, info))
            if kept is not None and sum(map(len, kept)) < GRID_MAX:  # memory stays constant for any -n
                kept.append(images[: GRID_MAX - sum(map(len, kept))].copy())
    seconds = time.perf_counter() - began
    console.print(f"{n} cats in {seconds:.1f} s → {out}")
    if kept is not None:
        sheet = contact_sheet(np.concatenate(kept))
        path = write_new(out, f"grid-{first_seed}", ".png", png_writer(sheet))
        console.print(f"contact sheet: {path}" + (f" (the first {GRID_MAX} cats)" if n > GRID_MAX else ""))


@app.command("eval")
@guarded
def evaluate(
    reference: Path = typer.Option(..., "--reference", help="Folder of real images to compare against."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of generated images to score."),
    checkpoint: Optional[Path] = typer.Option(None, help="Score fresh samples of this model (default: as `sample`)."),
    n: int = typer.Option(5000, "-n", "--num", min=2, max=1_000_000, help="Fresh samples to draw when no --images."),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help="Sampler steps (default: the sampler's)."),
    sampler: Sampler = typer.Option(Sampler.dpmpp_sde, help="Sampling algorithm for fresh samples."),
    seed: int = typer.Option(0, min=0, max=2**62, help="Seed of the first fresh sample."),
    batch_size: int = typer.Option(64, min=1, max=4096, help="Images per batch."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """FID and KID of generated cats against real ones, offline (needs the `eval` extra)."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine import fid

    if images is not None and checkpoint is not None:
        raise UserError("give either --images or --checkpoint, not both")
    reference = reference.expanduser()
    if not reference.is_dir():
        raise UserError(f"reference folder {reference} does not exist")
    if images is not None and not images.expanduser().is_dir():
        raise UserError(f"image folder {images} does not exist")
    device = resolve_device(device)
    try:
        extractor = fid.InceptionFeatures(device, batch_size=min(batch_size, 64))
    except fid.EvalUnavailable as error:
        raise UserError(str(error)) from None
    columns = [TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:

        def tracker(description: str):
            task = progress.add_task(description, total=None)
            return lambda done, total: progress.update(task, completed=done, total=total)

        reference_features = fid.reference_features(
            reference, extractor, locations.cache_dir() / "fid", tracker("reference features")
        )
        if images is not None:
            generated = fid.features_of_folder(images.expanduser(), extractor, tracker("image features"))
            source = str(images)
        else:
            generated, source = _sample_features(checkpoint, n, steps, sampler.value, seed, batch_size, device, extractor, tracker)
    if len(generated) < 2:
        raise UserError("need at least 2 generated images")
    result = {"source": source, "reference": str(reference), **fid.evaluate(generated, reference_features)}
    if json_out:
        typer.echo(json.dumps(result))
    else:
        console.print(
            f"FID {result['fid']:.2f}   KID {result['kid_mean'] * 1000:.2f} ± {result['kid_std'] * 1000:.2f} (×10⁻³)   "
            f"{result['n_generated']} generated vs {result['n_reference']} reference images"
        )


def _sample_features(checkpoint, n, steps, sampler, seed, batch_size, device, extractor, tracker):
    """Draw `n` cats in chunks and return their Inception features, never holding all images."""
    import numpy as np

    from engine import fid
    from engine.checkpoint import load_model
    from engine.generate import generate
    from engine.samplers import DEFAULT_STEPS

    model_path = checkpoint.expanduser() if checkpoint else runs.default_model()
    if not model_path.exists():
        raise UserError(f"no model at {model_path}: train one with `kittyterm train` or pass --checkpoint")
    loaded = load_model(model_path, device)
    steps = min(steps or DEFAULT_STEPS[sampler], loaded.schedule.num_steps)
    report = tracker(f"sampling {sampler} {steps}")
    features = []
    for start in range(0, n, batch_size):
        seeds = list(range(seed + start, seed + min(n, start + batch_size)))
        images = generate(loaded.model, loaded.schedule, seeds, sampler, steps, device)
        features.append(fid.features_of_images(images.permute(0, 2, 3, 1).numpy(), extractor))
        report(start + len(seeds), n)
    return np.concatenate(features), f"{n} samples of {model_path} ({sampler}, {steps} steps)"


@app.command()
@guarded
def export(
    checkpoint: Path = typer.Option(..., help="Training checkpoint to export."),
    out: Path = typer.Option(..., "--out", help="Weights file to write (never overwritten)."),
) -> None:
    """Write a checkpoint's EMA weights as a small fp16 file for sampling (how assets/ is made)."""
    from engine.checkpoint import export_weights, load_model

    if out.exists():
        raise UserError(f"{out} exists; choose another name")
    if not out.parent.is_dir() and out.parent.exists():
        raise UserError(f"cannot write {out}: {out.parent} is not a folder")
    loaded = load_model(checkpoint.expanduser())
    keep = ("step", "epoch", "images", "train_config", "saved_at")
    metadata = {k: loaded.metadata[k] for k in keep if k in loaded.metadata}
    export_weights(out, loaded.model.state_dict(), loaded.config, loaded.schedule.config, metadata)
    console.print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) from step {loaded.step}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
