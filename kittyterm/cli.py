"""The `kittyterm` command: the app with no command, or `train`, `sample`, `vary`, `morph`,
`timelapse`, `eval`, `export` headless.

Every decision (device, preset, batch, run, model, output folder) is made in `kittyterm.jobs`;
the commands here parse options, show progress and print results. Heavy modules (torch, the
engine, the app) are imported inside the commands so that `kittyterm --help` starts instantly.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from engine.sampling_defaults import DEFAULT_SAMPLER, DEFAULT_STEPS

from . import __version__, locations
from .errors import UserError, existing_folder, new_file
from .wording import counted, seed_span

app = typer.Typer(
    name="kittyterm",
    help="Watch a diffusion model learn to draw cats, in your terminal.\n\nRun [bold]kittyterm[/] with no command to open the full-screen app.",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True, highlight=False, soft_wrap=True)
DEVICE_HELP = "auto (a CUDA GPU, then Apple's MPS, then the CPU), cpu, cuda, cuda:N or mps."
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Sampler(str, enum.Enum):
    dpmpp_sde = "dpm++sde"
    unipc = "unipc"
    dpmpp = "dpm++"
    ddim = "ddim"
    ddpm = "ddpm"


class Preset(str, enum.Enum):
    tiny = "tiny"
    kitty64 = "kitty-64"


# The app's options, shared by the app (no command) and `serve`, which passes them on to each app.
AppData = Annotated[Optional[Path], typer.Option("--data", help="Folder of images to train on (remembered).")]
AppPreset = Annotated[Optional[Preset], typer.Option(help="Model preset to train (default: kitty-64 on a GPU, tiny on a CPU).")]

# Exceptions that are the command line's own control flow (exit codes, usage errors), never bugs;
# ClickException is found through the MRO because typer vendors click in recent versions.
_CLI_CONTROL = (typer.Exit, typer.Abort, *[c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"])


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def guarded(function):
    """Turn the errors a user can cause into one clean line instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            fail(str(error))
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            fail(f"{error.strerror or error}{where}")
        except _CLI_CONTROL:
            raise
        except Exception as error:
            from engine.checkpoint import CheckpointError  # here, not above: `serve` never needs torch

            if isinstance(error, CheckpointError):
                fail(str(error))
            # a bug, not the user's fault: still one line, never a traceback
            if os.environ.get("KITTYTERM_DEBUG"):
                raise
            text = str(error).strip().splitlines()
            fail(f"unexpected {type(error).__name__}: {text[0] if text else ''} (set KITTYTERM_DEBUG=1 for the traceback)")

    return wrapper


def positive_minutes(value: Optional[float]) -> Optional[float]:
    """A duration in minutes: above zero, `inf` allowed, never NaN."""
    if value is not None and (math.isnan(value) or value <= 0):
        raise typer.BadParameter(f"must be a number of minutes above 0, not {value:g}")
    return value


def learning_rate(value: Optional[float]) -> Optional[float]:
    from .jobs.training import lr_problem

    if value is not None and (problem := lr_problem(value)):
        raise typer.BadParameter(problem)
    return value


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"kittyterm {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    data: AppData = None,
    preset: AppPreset = None,
    version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Open the full-screen app (with no command)."""
    if ctx.invoked_subcommand is not None:
        return
    data = app_data_folder(data)
    if not (sys.stdin.isatty() and sys.stdout.isatty()) and not os.environ.get("TEXTUAL_DRIVER"):
        # it would wait for keys that never come, drawing into a file; `serve` (a web driver) has no terminal either
        fail("the app needs a terminal to draw in and read keys from; in a script or a pipe, use a command (kittyterm --help)")
    from .app import run_app

    status = run_app(data, preset.value if preset else None)
    if status:
        raise typer.Exit(status)


def app_data_folder(data: Optional[Path]) -> Optional[Path]:
    """The app's --data as an absolute path; a folder that does not exist or holds no image
    file is an error (before the app opens and remembers it)."""
    from engine.files import no_images_message, scan_images

    if data is None:
        return None
    try:
        folder = existing_folder(data, "data folder")
    except UserError as error:
        fail(str(error))
    if not scan_images(folder)[0]:
        fail(no_images_message(data))
    return folder.resolve()


def loading_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = TextColumn("loading images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)  # a transient bar leaves a blank line in a pipe


@app.command()
@guarded
def train(
    data: Path = typer.Option(..., "--data", help="Folder of images (searched recursively)."),
    preset: Optional[Preset] = typer.Option(None, help="Model preset (default: kitty-64 on a GPU, tiny on a CPU; a resumed run keeps its own)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Train until the run has taken this many steps, counting a resumed run's earlier ones, then stop (the learning rate decays to its floor by then), as the app's step budget does: the same command after Ctrl+C finishes the same run."),
    minutes: Optional[float] = typer.Option(None, callback=positive_minutes, help="Train this many minutes from now, then stop (the learning rate decays to its floor by then)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start the run for this preset and data over (the old run is kept aside); without it, the run continues."),
    batch_size: Optional[int] = typer.Option(None, min=1, max=4096, help="Images per step (default: 128 on a GPU, 32 on a CPU; under torchrun the global batch, that much per process by default)."),
    lr: Optional[float] = typer.Option(None, callback=learning_rate, help="Peak AdamW learning rate (default 5e-4; on a resumed run, from now on)."),
    run: Optional[str] = typer.Option(None, "--run", "--run-name", help="Run name (default: PRESET-DATAFOLDER); spell it --run-name under torchrun, whose parser takes --run for its --run-path."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (GPU)."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="Capture the whole training step in a CUDA graph (one GPU; several times faster for small models)."),
    init: Optional[str] = typer.Option(None, "--init", metavar="kitty-64|FILE", help="Start a new run from these weights: kitty-64 (the shipped model) or a file from `kittyterm export` or a run; fine-tunes with a gentler learning rate (default 1e-4)."),
    seed: Optional[int] = typer.Option(None, min=0, max=2**62, help="Seed for initialisation, noise and data order of a new run (default 0)."),
    checkpoint_minutes: float = typer.Option(2.0, callback=positive_minutes, help="Save a checkpoint this often."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1, help="Also save a checkpoint every N steps."),
    no_timelapse: bool = typer.Option(False, "--no-timelapse", help="Draw no timelapse (by default the same 8 cats are drawn at every checkpoint and every minute, in the background; see `kittyterm timelapse`)."),
    timelapse_every: Optional[int] = typer.Option(None, "--timelapse-every", min=1, help="Also draw a timelapse frame every N steps."),
) -> None:
    """Train a model headless, with a progress bar; Ctrl+C (or closing the terminal) saves and stops."""
    from .jobs.devices import resolve_device
    from .jobs.training import TrainingOptions, open_training

    options = TrainingOptions(data, preset.value if preset else None, run, fresh, batch_size, lr, seed, device, compile, cuda_graph, init)
    ddp = _init_distributed(resolve_device(device))  # under torchrun: join the DDP group, pin this rank's GPU
    with loading_progress() as progress:
        task = progress.add_task("load", total=None)
        opened = open_training(options, lambda done, total: progress.update(task, completed=done, total=total), ddp)
    try:
        console.print(f"{opened.num_images} images from {data}")
        if opened.skipped:
            from engine.data import describe_skipped

            console.print(f"[yellow]warning:[/] skipped {counted(len(opened.skipped), 'unusable file')}: {escape(describe_skipped(opened.skipped))}")
        for note in opened.notes:
            console.print(note)
        trainer = opened.trainer
        if steps is not None and trainer.step_count >= steps:
            console.print(f"run {opened.name} has taken {counted(trainer.step_count, 'step')}, the --steps {steps} asked for: nothing to train (a larger --steps goes on)")
            return
        if opened.resumed:
            console.print(f"resuming run {opened.name} at step {trainer.step_count}")
        else:
            on = f"{ddp.world_size} processes (DDP, {ddp.backend})" if ddp.enabled else trainer.device
            predicts = {"eps": "ε", "v": "v"}[trainer.schedule.config.prediction]
            console.print(f"new run {opened.name}: preset {opened.preset}, batch {trainer.config.batch_size}, predicts {predicts}, on {on}")
        max_steps = steps
        max_seconds = minutes * 60 if minutes is not None else None
        frames = None
        if not no_timelapse and ddp.is_main:
            from .jobs.timelapse import start_timelapse

            frames = functools.partial(start_timelapse, opened, every_steps=timelapse_every)
        _train_with_progress(trainer, opened.checkpoint, max_steps, max_seconds, checkpoint_minutes * 60, ddp, checkpoint_every, frames)
    finally:
        opened.close()
    console.print(f"checkpoint: {opened.checkpoint}")
    console.print(escape(f"sample it with: kittyterm sample --checkpoint {shlex.quote(str(opened.checkpoint))} --out cats/"))
    if frames is not None:
        console.print(escape(f"timelapse: kittyterm timelapse {shlex.quote(opened.name)} --out {shlex.quote(opened.name + '.gif')}"))


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


def _train_with_progress(trainer, checkpoint: Path, max_steps, max_seconds, checkpoint_seconds: float, ddp=None, checkpoint_steps=None, timelapse=None) -> None:
    """Train with a progress bar until the budget or a stop signal; `timelapse(thread)`, if
    given, starts the timelapse that follows the training thread."""
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
        decay_to_budget=True,
    )
    if max_steps is not None:
        total, unit = max_steps - trainer.step_count, "steps"
    elif max_seconds is not None and math.isfinite(max_seconds):
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
                progress.update(task, completed=done, step=event.step, loss=f"{smoothed[-1]:.4f}", speed=f"{event.images_per_second:.0f}")
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
        frames = None
        if timelapse is not None:
            frames = timelapse(thread)
            frames.subscribe(
                lambda event: isinstance(event, events.EngineError) and progress.console.print(f"[yellow]warning:[/] {event.message}")
            )
        stop_signal = []

        def on_signal(signum, _frame) -> None:
            stop_signal.append(signum)
            thread.stop(timeout=0)

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            thread.start()
            while thread.is_alive():
                thread.join(0.2)
            if frames is not None:  # the last frame is kept, unless a signal asks to stop now
                frames.close(timeout=0 if stop_signal else None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if thread.finished_reason == "error":
        raise UserError(errors[-1] if errors else "training failed")
    if thread.save_error is not None:  # the last save failed: say so, exit non-zero
        raise UserError(f"checkpoint not saved at step {trainer.step_count}: {thread.save_error}; {checkpoint} keeps the last good save")
    if stop_signal:
        console.print(f"stopped at step {trainer.step_count}; checkpoint saved")
        raise typer.Exit(128 + stop_signal[0])


def strength_value(value: float) -> float:
    """A variation's strength: 0 to 1, never NaN."""
    if math.isnan(value) or not 0 <= value <= 1:
        raise typer.BadParameter(f"must be between 0 and 1, not {value:g}")
    return value


def open_model(checkpoint: Optional[Path], device: str, sampler: str, steps: Optional[int]):
    """(device, model path, loaded model, steps) for drawing: checked before anything is created."""
    from engine.checkpoint import CheckpointError

    from .jobs.devices import resolve_device
    from .jobs.models import ModelCache, model_path
    from .jobs.sampling import sampler_steps

    device = resolve_device(device)
    path = model_path(checkpoint)
    try:
        loaded = ModelCache().load(path, device)
    except CheckpointError as error:
        if checkpoint is not None:
            raise
        raise UserError(f"{error} (the model of your latest run; --checkpoint picks another, such as {locations.shipped_model()})") from None
    return device, path, loaded, sampler_steps(sampler, steps, loaded.schedule)


def drawing_progress(total: int):
    """A progress bar over `total` sampler steps (of all images); call it with `advance(count)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = progress.add_task("sample", total=total)
    return progress, lambda count: progress.advance(task, count)


STEPS_HELP = f"Sampler steps (default: {', '.join(f'{steps} {name}' for name, steps in DEFAULT_STEPS.items())})."
CHECKPOINT_HELP = "Model to use (default: your latest run, else the shipped kitty-64)."
BATCH_HELP = "Images drawn at once (memory stays constant for any -n)."


@app.command()
@guarded
def sample(
    out: Path = typer.Option(..., "--out", help="Folder for the PNGs (created if missing; files are never overwritten)."),
    n: int = typer.Option(16, "-n", "--num", min=1, max=100_000, help="How many cats."),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help=STEPS_HELP),
    sampler: Sampler = typer.Option(Sampler(DEFAULT_SAMPLER), help="Sampling algorithm."),
    seed: Optional[int] = typer.Option(None, min=0, max=2**62, help="Seed of the first cat (the rest follow) (default: random)."),
    checkpoint: Optional[Path] = typer.Option(None, help=CHECKPOINT_HELP),
    contact_sheet: bool = typer.Option(False, "--grid", help="Also write a contact sheet of all the cats."),
    gif: bool = typer.Option(False, "--gif", help="Also write each cat's denoising as an animated GIF."),
    x0: bool = typer.Option(False, "--x0", help="With --gif: show the predicted clean image x̂0 instead of x_t."),
    batch_size: int = typer.Option(64, min=1, max=4096, help=BATCH_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Draw cats from a trained model into PNG files that record their seed and settings."""
    from engine.samplers import sampler_timesteps

    from .jobs.sampling import GRID_MAX, Drawn, batch_seeds, draw_to_folder, output_folder, random_seed

    if x0 and not gif:
        raise UserError("--x0 chooses what --gif shows: add --gif")
    device, path, loaded, steps = open_model(checkpoint, device, sampler.value, steps)  # before creating anything
    first_seed = seed if seed is not None else random_seed()
    seeds = batch_seeds(first_seed, n)
    grid = sampler_timesteps(sampler.value, loaded.schedule, steps)
    console.print(f"model {path} (sha256 {loaded.sha256[:12]}), {sampler.value} {counted(steps, 'step')}, {seed_span(seeds)}")
    began = time.perf_counter()
    progress, advance = drawing_progress(n * len(grid))
    drawn = Drawn()
    try:
        with output_folder(out) as out, progress:
            draw_to_folder(
                loaded, out, seeds, sampler.value, steps, grid, device, batch_size, contact_sheet, path.name, path,
                progress=advance, animate=("x0" if x0 else "x_t") if gif else None, drawn=drawn,
            )
    except KeyboardInterrupt:
        if drawn.paths:  # what was written stays: say where, and how far it got
            console.print(f"stopped after {counted(len(drawn.paths), 'cat')} of {n:,} ({seed_span(seeds[: len(drawn.paths)])}), kept in {out}")
        raise typer.Exit(130) from None
    console.print(f"{counted(n, 'cat')} in {time.perf_counter() - began:.1f} s → {out}")
    if drawn.grid is not None:
        console.print(f"contact sheet: {drawn.grid}" + (f" (the first {GRID_MAX} cats)" if n > GRID_MAX else ""))
    if drawn.animations:
        console.print(f"{counted(len(drawn.animations), 'denoising GIF')} ({'x̂0' if x0 else 'x_t'}), e.g. {drawn.animations[0].name}")


@app.command()
@guarded
def vary(
    image: Path = typer.Argument(..., metavar="IMAGE", help="The picture to vary: a kept cat or any photo (centre-cropped to a square)."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNGs (created if missing; files are never overwritten)."),
    n: int = typer.Option(8, "-n", "--num", min=1, max=100_000, help="How many variations."),
    strength: float = typer.Option(0.5, min=0.0, max=1.0, callback=strength_value, help="How much to change: 0 keeps the picture, 1 draws a new cat."),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help=STEPS_HELP + " A variation runs the part below its strength."),
    sampler: Sampler = typer.Option(Sampler(DEFAULT_SAMPLER), help="Sampling algorithm."),
    seed: Optional[int] = typer.Option(None, min=0, max=2**62, help="Seed of the first variation (the rest follow) (default: random)."),
    checkpoint: Optional[Path] = typer.Option(None, help=CHECKPOINT_HELP),
    batch_size: int = typer.Option(64, min=1, max=4096, help=BATCH_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Variations of a picture (SDEdit): noised to --strength, then denoised by each seed."""
    from .jobs.sampling import batch_seeds, output_folder, random_seed
    from .jobs.variations import read_picture, to_folder, variations

    device, path, loaded, steps = open_model(checkpoint, device, sampler.value, steps)
    picture = read_picture(image, loaded.model.config.image_size)  # before creating anything
    first_seed = seed if seed is not None else random_seed()
    drawing = variations(loaded.model, loaded.schedule, picture, batch_seeds(first_seed, n), sampler.value, steps, strength)
    console.print(
        f"model {path} (sha256 {loaded.sha256[:12]}), {sampler.value} {counted(steps, 'step')} ({len(drawing.grid)} at strength "
        f"{strength:g}), {seed_span(drawing.seeds)}"
    )
    began = time.perf_counter()
    progress, advance = drawing_progress(n * len(drawing.grid))
    with output_folder(out) as out, progress:
        to_folder(loaded, out, drawing, device, batch_size, path.name, progress=advance)
    console.print(f"{counted(n, 'variation')} of {picture.name} in {time.perf_counter() - began:.1f} s → {out}")


@app.command()
@guarded
def morph(
    seed_a: int = typer.Argument(..., metavar="SEED_A", min=0, max=2**62, help="Seed of the first cat."),
    seed_b: int = typer.Argument(..., metavar="SEED_B", min=0, max=2**62, help="Seed of the last cat."),
    out: Path = typer.Option(..., "--out", help="Folder for the frames (created if missing; files are never overwritten)."),
    frames: int = typer.Option(16, min=2, max=1000, help="Frames from the first cat to the last, both included."),
    gif: bool = typer.Option(False, "--gif", help="Also write the morph as an animated GIF (there and back)."),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help=STEPS_HELP),
    sampler: Sampler = typer.Option(Sampler(DEFAULT_SAMPLER), help="Sampling algorithm."),
    checkpoint: Optional[Path] = typer.Option(None, help=CHECKPOINT_HELP),
    batch_size: int = typer.Option(64, min=1, max=4096, help=BATCH_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Morph one cat into another: frames drawn from their seeds' noise, spherically interpolated."""
    from .jobs import drawings
    from .jobs.sampling import output_folder
    from .jobs.variations import to_folder

    device, path, loaded, steps = open_model(checkpoint, device, sampler.value, steps)
    drawing = drawings.morph(loaded.model, loaded.schedule, seed_a, seed_b, frames, sampler.value, steps)
    console.print(f"model {path} (sha256 {loaded.sha256[:12]}), {sampler.value} {counted(steps, 'step')}, seed {seed_a} → {seed_b}")
    began = time.perf_counter()
    progress, advance = drawing_progress(frames * len(drawing.grid))
    with output_folder(out) as out, progress:
        animation = to_folder(loaded, out, drawing, device, batch_size, path.name, gif, advance)
    console.print(f"{frames} frames in {time.perf_counter() - began:.1f} s → {out}" + (f"; GIF: {animation.name}" if animation else ""))


@app.command("timelapse")
@guarded
def timelapse_gif(
    run: Optional[str] = typer.Argument(None, metavar="RUN", help="Run name or run folder (default: your latest run, as `sample` chooses)."),
    out: Path = typer.Option(..., "--out", help="Animated GIF to write (never overwritten)."),
    contact_sheet: bool = typer.Option(False, "--grid", help="Also write a PNG sheet beside the GIF (OUT with .png): one row per frame."),
) -> None:
    """Make an animated GIF of the same 8 cats across a run's training, step numbers on the frames."""
    from .jobs.timelapse import run_folder, write_timelapse

    folder = run_folder(run)
    written = write_timelapse(folder, out, contact_sheet)
    console.print(f"{written.frames} frames of run {folder.name} → {written.gif}")
    if written.sheet is not None:
        console.print(f"sheet: {written.sheet}")


@app.command("eval")
@guarded
def evaluate(
    reference: Path = typer.Option(..., "--reference", help="Folder of real images to compare against."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of generated images to score."),
    checkpoint: Optional[Path] = typer.Option(None, help="Score fresh samples of this model (default: as `sample`)."),
    n: int = typer.Option(5000, "-n", "--num", min=2, max=1_000_000, help="Fresh samples to draw when no --images."),
    steps: Optional[int] = typer.Option(None, min=1, max=1000, help="Sampler steps (default: the sampler's)."),
    sampler: Sampler = typer.Option(Sampler(DEFAULT_SAMPLER), help="Sampling algorithm for fresh samples."),
    seed: int = typer.Option(0, min=0, max=2**62, help="Seed of the first fresh sample."),
    batch_size: int = typer.Option(64, min=1, max=4096, help="Images per batch."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """FID and KID of generated cats against real ones (the first run downloads the Inception weights, 91 MB)."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from engine import fid
    from engine.files import scan_images

    from .jobs.devices import resolve_device

    if images is not None and checkpoint is not None:
        raise UserError("give either --images or --checkpoint, not both")
    for folder, what in ((reference, "reference folder"), (images, "image folder")):
        if folder is None:
            continue
        if not scan_images(existing_folder(folder, what))[0]:
            raise UserError(f"{what} {folder} holds no images")
    reference = reference.expanduser()
    drawing = None if images is not None else open_model(checkpoint, device, sampler.value, steps)  # before any features
    device = drawing[0] if drawing else resolve_device(device)
    columns = [TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:

        def tracker(description: str):
            task = progress.add_task(description, total=None)
            return lambda done, total: progress.update(task, completed=done, total=total)

        try:
            try:
                weights = fid.inception_weights_path(locations.cache_dir() / "fid")
            except fid.EvalUnavailable:
                weights = fid.download_inception_weights(locations.cache_dir() / "fid", tracker("Inception weights (bytes)"))
            extractor = fid.InceptionFeatures(device, batch_size=min(batch_size, 64), weights=weights)
        except fid.EvalUnavailable as error:
            raise UserError(str(error)) from None
        paths = scored_images(reference, "--reference", tracker("reading reference"))
        reference_features = fid.cached_features(reference, paths, extractor, locations.cache_dir() / "fid", tracker("reference features"))
        if images is not None:
            paths = scored_images(images.expanduser(), "--images", tracker("reading images"), generated=True)
            generated = fid.features_of_files(paths, extractor, tracker("image features"))
            source = str(images)
        else:
            generated, source = _sample_features(drawing, n, sampler.value, seed, batch_size, extractor, tracker)
    result = {"source": source, "reference": str(reference), **fid.evaluate(generated, reference_features)}
    if len(generated) < FEW_FOR_FID:
        console.print(f"[yellow]note:[/] FID from {len(generated):,} images reads higher than from many: compare only figures from equal counts")
    if json_out:
        typer.echo(json.dumps(result))
    else:
        console.print(
            f"FID {result['fid']:.2f}   KID {result['kid_mean'] * 1000:.2f} ± {result['kid_std'] * 1000:.2f} (×10⁻³)   "
            f"{result['n_generated']} generated vs {result['n_reference']} reference images"
        )


FEW_FOR_FID = 1000  # below this, FID's bias (it falls as 1/N, Chong & Forsyth 2020) is worth a word


def scored_images(folder: Path, option: str, progress, generated: bool = False) -> list[Path]:
    """The images under `folder` that eval scores, after saying which it leaves out and why: files
    that do not decode as one bounded image and, among generated ones, kittyterm's pictures of
    several cats (contact sheets, timelapse strips; animations do not decode as one image)."""
    from engine import fid

    from . import cats

    paths, left_out = fid.readable_images(fid.image_files(folder), progress)
    if generated:
        several = {path: cats.several_cats_in(path) for path in paths}
        left_out += [(path, what) for path, what in several.items() if what]
        paths = [path for path in paths if not several[path]]
    by_reason: dict[str, list[str]] = {}
    for path, why in sorted(left_out):
        by_reason.setdefault(why, []).append(path.relative_to(folder).as_posix())
    named = "; ".join(f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''} ({why})" for why, names in by_reason.items())
    if len(paths) < 2:
        found = "only 1 image to score, and FID and KID need 2 or more" if paths else "no image to score"
        raise UserError(f"{option} {folder}: {found}" + (f" ({named})" if named else ""))
    if left_out:
        console.print(f"[yellow]{option}: left out {counted(len(left_out), 'file')}:[/] {escape(named)}")
    return paths


def _sample_features(drawing, n, sampler, seed, batch_size, extractor, tracker):
    """Draw `n` cats in chunks and return their Inception features, never holding all images."""
    import numpy as np

    from engine import fid
    from engine.generate import generate

    device, path, loaded, steps = drawing
    report = tracker(f"sampling {sampler} {steps}")
    features = []
    for start in range(0, n, batch_size):
        seeds = list(range(seed + start, seed + min(n, start + batch_size)))
        images = generate(loaded.model, loaded.schedule, seeds, sampler, steps, device)
        features.append(fid.features_of_images(images.permute(0, 2, 3, 1).numpy(), extractor))
        report(start + len(seeds), n)
    return np.concatenate(features), f"{n} samples of {path} ({sampler}, {counted(steps, 'step')})"


@app.command()
@guarded
def export(
    checkpoint: Path = typer.Option(..., help="Training checkpoint to export."),
    out: Path = typer.Option(..., "--out", help="Weights file to write (never overwritten)."),
) -> None:
    """Write a checkpoint's EMA weights as a small fp16 file for sampling (how assets/ is made)."""
    import glob

    from engine.checkpoint import export_checkpoint
    from engine.files import remove_stale_temporaries

    out = new_file(out)
    remove_stale_temporaries(out.parent, glob.escape(out.name))  # left by an export that was killed
    try:
        done = export_checkpoint(checkpoint.expanduser(), out)
    except FileExistsError:
        raise UserError(f"{out} exists; choose another name") from None
    console.print(f"wrote {done.path} ({done.size / 2**20:.1f} MiB) from step {done.step}")


@app.command()
@guarded
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 lets other machines in (anyone who can reach it drives the app)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    data: AppData = None,
    preset: AppPreset = None,
) -> None:
    """Serve the app to web browsers, one app per tab (textual-serve); Ctrl+C stops them all, each saving."""
    from .serve import KittytermServer, app_command, reachable_from_other_machines

    command = app_command(app_data_folder(data), preset.value if preset else None)
    if reachable_from_other_machines(host):
        shown = host or "all interfaces"
        console.print(f"[yellow]warning:[/] listening on {escape(shown)}: anyone on the network can drive training and read the gallery")
    KittytermServer(command, host, port).run(lambda text: console.print(escape(text)))


def main() -> None:
    from .openmp import choose_wait_policy

    choose_wait_policy()  # before anything imports torch
    app()


if __name__ == "__main__":
    sys.exit(main())
