"""Checkpoints: one safetensors file per save, written atomically, never pickled.

A file holds named tensors (model weights under `model.`, EMA weights under `ema.`, and for
training checkpoints optimizer state, RNG state and the loss history) plus string metadata:
the model and schedule configs as JSON, so the file alone rebuilds the network. safetensors
stores raw tensor bytes and a JSON header, so loading a checkpoint can never execute code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import torch
from safetensors.torch import save as save_safetensors

from .files import atomic_write, write_exclusive
from .limits import human_bytes, shown
from .schedules import NoiseSchedule, ScheduleConfig
from .unet import UNet, UNetConfig, activation_estimate, count_parameters

FORMAT = "kittyterm/1"
MAX_HEADER_BYTES = 16 * 2**20  # a training checkpoint of kitty-64 has a 100 kB header
MEMORY_BUDGET = 2 * 2**30  # float32 parameters plus activations for one image, for any model a file describes
# The tensor types a checkpoint may hold (safetensors names): weights, optimizer state, RNG states, counters.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
}  # fmt: skip
EXPORTED_METADATA = ("step", "epoch", "images", "train_config", "saved_at")  # kept by `export_checkpoint`


class CheckpointError(ValueError):
    """A checkpoint file that is missing, damaged or does not fit the model it claims."""


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or ±inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialise `tensors` (made contiguous, moved to the CPU) and `metadata` to `path` atomically."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    data = save_safetensors(plain, metadata={"format": FORMAT, **metadata})
    atomic_write(Path(path), data)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header describes it; start and end are offsets in the body."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class CheckpointFile:
    """A kittyterm checkpoint opened for reading. Opening it reads and checks only the header
    (an 8-byte little-endian length, then that much JSON): its size, every tensor's type, shape
    and place, that the tensors tile the rest of the file exactly, and the kittyterm format. The
    tensors are read later, once, by `read`, which also hashes the file from the same bytes, or
    one alone by `tensor`. So a file that lies about its contents is refused before its body is
    touched, and no more than the declared size is ever read. Any problem is a one-line
    CheckpointError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = _open_regular_file(self.path)
        try:
            self._prefix = self._header = b""
            self.metadata, self.entries = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "CheckpointFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, keep: Callable[[str], bool] | None = None) -> tuple[dict[str, torch.Tensor], str]:
        """Read the body once, in file order: the tensors whose names `keep` accepts (all by
        default) and the sha256 of the whole file. Tensors not kept are hashed and dropped."""
        digest = hashlib.sha256(self._prefix + self._header)

        def read_into(view: memoryview) -> None:
            self._fill(view)
            digest.update(view)

        self._seek(self._body)
        tensors = {}
        for name, entry in sorted(self.entries.items(), key=lambda item: item[1].start):
            if keep is None or keep(name):
                tensor = torch.empty(entry.shape, dtype=entry.dtype)
                if tensor.numel():
                    read_into(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
                tensors[name] = tensor
            else:
                scratch = bytearray(min(entry.end - entry.start, 1 << 20))
                for at in range(entry.start, entry.end, len(scratch) or 1):
                    read_into(memoryview(scratch)[: min(len(scratch), entry.end - at)])
        return tensors, digest.hexdigest()

    def tensor(self, name: str) -> torch.Tensor | None:
        """The one tensor called `name` (None if the file has none), read from its place alone:
        for a small tensor of a large file, such as a run's loss history. Nothing is hashed."""
        entry = self.entries.get(name)
        if entry is None:
            return None
        tensor = torch.empty(entry.shape, dtype=entry.dtype)
        if tensor.numel():
            self._seek(self._body + entry.start)
            self._fill(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        return tensor

    def _seek(self, offset: int) -> None:
        try:
            self._file.seek(offset)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror})") from None

    def _fill(self, view: memoryview) -> None:
        """Fill `view` from the file, refusing a file that ends first."""
        done = 0
        while done < len(view):
            try:
                count = self._file.readinto(view[done:])
            except OSError as e:
                raise CheckpointError(f"{self.path}: cannot read ({e.strerror})") from None
            if not count:
                self._refuse("the file ended early (was it cut while being read?)")
            done += count

    def _read_header(self) -> tuple[dict[str, str], dict[str, TensorEntry]]:
        size = os.fstat(self._file.fileno()).st_size
        if size < 8:
            self._prefix = self._file.read(8)
            self._refuse(f"{size} bytes are too few for a header")
        prefix = bytearray(8)
        self._fill(memoryview(prefix))
        self._prefix = bytes(prefix)
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES:
            self._refuse(f"its header claims {human_bytes(length)}; a header may have at most {human_bytes(MAX_HEADER_BYTES)}")
        if 8 + length > size:
            self._refuse(f"its header claims {human_bytes(length)}, more than the file's {human_bytes(size)}")
        raw = bytearray(length)
        self._fill(memoryview(raw))
        self._header, self._body = bytes(raw), 8 + length
        try:
            header = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
            self._refuse(f"its header is not JSON: {_first_line(e)}")
        if not isinstance(header, dict):
            self._refuse("its header is not a JSON object")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            self._refuse("its metadata is not a map of strings")
        body = size - 8 - length
        entries = {name: self._entry(name, value, body) for name, value in header.items()}
        end = 0
        for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
            if entry.start != end:
                self._refuse("its tensors overlap or leave gaps")
            end = entry.end
        if end != body:
            self._refuse(f"the file holds {human_bytes(body - end)} more than its header describes")
        if metadata.get("format") != FORMAT:
            found = f"format {shown(metadata['format'])}" if "format" in metadata else "no format in its metadata"
            raise CheckpointError(f"{self.path}: not a kittyterm checkpoint ({found})")
        return metadata, entries

    def _entry(self, name: str, value: object, body: int) -> TensorEntry:
        """One tensor's description, with its offsets inside the body of `body` bytes."""
        if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
            self._refuse(f"tensor {shown(name)} is not described by dtype, shape and data_offsets")
        dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            self._refuse(f"tensor {shown(name)} has an unsupported dtype {shown(dtype)}")
        if not isinstance(shape, list) or not all(_is_count(n, body) for n in shape):
            self._refuse(f"tensor {shown(name)} has a bad shape {shown(shape)}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n, body) for n in offsets) or offsets[0] > offsets[1]:
            self._refuse(f"tensor {shown(name)} has bad data_offsets")
        needed, span = math.prod(shape) * DTYPES[dtype].itemsize, offsets[1] - offsets[0]
        if needed > body:
            self._refuse(f"tensor {shown(name)} has a shape that needs more than the file holds")
        if span != needed:
            self._refuse(f"tensor {shown(name)} spans {human_bytes(span)} but its shape needs {human_bytes(needed)}")
        return TensorEntry(DTYPES[dtype], tuple(shape), offsets[0], offsets[1])

    def _refuse(self, reason: str) -> NoReturn:
        if self._looks_like_pickle():
            raise CheckpointError(f"{self.path}: is a pickle file; kittyterm loads only safetensors and never unpickles")
        raise CheckpointError(f"{self.path}: not a readable safetensors file ({reason})")

    def _looks_like_pickle(self) -> bool:
        """Whether the file starts as a pickle (0x80, then protocol 2–5) or a zip (torch.save) does,
        and not as a safetensors file whose 8-byte header length happens to begin with those bytes:
        such a file's JSON header opens at byte 8."""
        starts = self._prefix[:2] == b"PK" or (self._prefix[:1] == b"\x80" and self._prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
        if not starts:
            return False
        try:
            self._file.seek(8)
            return self._file.read(1) != b"{"
        except OSError:
            return True


def _is_count(value: object, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most


def _open_regular_file(path: Path):
    """Open `path` for reading without blocking (a FIFO would wait for a writer) and refuse
    anything that is not a regular file (/dev/zero never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise CheckpointError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file" if stat.S_ISDIR(mode) else f"{path}: not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a kittyterm safetensors file; raise CheckpointError naming the file on any problem."""
    with CheckpointFile(path) as checkpoint:
        tensors, _ = checkpoint.read()
        return tensors, checkpoint.metadata


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


Value = TypeVar("Value")


def split_prefix(tensors: dict[str, Value], prefix: str) -> dict[str, Value]:
    """The tensors (or header entries) whose names start with `prefix.`, with the prefix removed."""
    cut = len(prefix) + 1
    return {name[cut:]: t for name, t in tensors.items() if name.startswith(prefix + ".")}


def model_configs(path: Path, metadata: dict[str, str]) -> tuple[UNetConfig, ScheduleConfig]:
    """The model and schedule configs in a checkpoint's metadata, each field checked against its
    type and limits (see `UNetConfig`, `ScheduleConfig`) before anything is built from them."""
    try:
        model_config = UNetConfig.from_dict(json.loads(metadata["model_config"]))
        schedule_config = ScheduleConfig.from_dict(json.loads(metadata["schedule_config"]))
    except KeyError as e:
        raise CheckpointError(f"{path}: metadata lacks {e.args[0]}") from None
    except (ValueError, TypeError, RecursionError) as e:  # bad JSON, wrong types, values out of bounds
        raise CheckpointError(f"{path}: bad config in metadata ({_first_line(e)})") from None
    return model_config, schedule_config


def check_metadata_numbers(path: Path, metadata: dict[str, str]) -> None:
    """The counters kittyterm reads from metadata must be plain: whole numbers for the step,
    skipped steps and images, a finite non-negative epoch."""
    for key in ("step", "skipped_steps", "images"):
        if key in metadata and not re.fullmatch(r"[0-9]{1,15}", metadata[key]):
            raise CheckpointError(f"{path}: bad {key} in metadata (a whole number below 10^15 is needed, not {shown(metadata[key])})")
    if "epoch" in metadata:
        try:
            epoch = float(metadata["epoch"])
        except ValueError:
            epoch = math.nan
        if not (math.isfinite(epoch) and epoch >= 0):
            raise CheckpointError(f"{path}: bad epoch in metadata (a finite number is needed, not {shown(metadata['epoch'])})")


def meta_model(model_config: UNetConfig, path: Path) -> UNet:
    """The network `model_config` describes, built on the meta device (no memory), after checking
    that its float32 parameters and the activations of one image fit in MEMORY_BUDGET."""
    try:
        with torch.device("meta"):
            model = UNet(model_config)
    except Exception as e:  # a config the network cannot be built from
        raise CheckpointError(f"{path}: bad model config in metadata ({_first_line(e)})") from None
    needed = 4 * (count_parameters(model) + activation_estimate(model_config))
    if needed > MEMORY_BUDGET:
        raise CheckpointError(
            f"{path}: the model in its config needs about {human_bytes(needed)} for one image; "
            f"the limit is {human_bytes(MEMORY_BUDGET)}"
        )
    return model


def check_state_fits(model_config: UNetConfig, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Check names, shapes, types and finiteness of `state` against the network `model_config`
    describes, built on the meta device: nothing is allocated for a file that does not fit."""
    _check_layout(meta_model(model_config, path).state_dict(), state, path, what)
    _check_finite(state, path, what)


def _check_layout(expected: dict[str, torch.Tensor], state: dict, path: Path, what: str) -> None:
    """Names, shapes and floating-point types of `state` (tensors or header entries)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {shown(unexpected[0])}"
        raise CheckpointError(f"{path}: {what} weights do not fit the model in its config ({detail})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: {what} weight {name} has shape {tuple(tensor.shape)}, "
                f"the config needs {tuple(expected[name].shape)}"
            )
        if expected[name].is_floating_point() and not tensor.dtype.is_floating_point:
            raise CheckpointError(f"{path}: {what} weight {name} is {tensor.dtype}, not floating point")


def _check_finite(state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{path}: {what} weight {bad} holds NaN or infinite values")


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Copy `state` into `model` after checking names, shapes and values, with a clear error otherwise."""
    expected = model.state_dict()
    _check_layout(expected, state, path, what)
    _check_finite(state, path, what)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


@dataclass
class LoadedModel:
    """A network ready for sampling, with what produced it."""

    model: UNet
    schedule: NoiseSchedule
    config: UNetConfig
    path: Path
    sha256: str
    metadata: dict[str, str]

    @property
    def step(self) -> int:
        return int(self.metadata.get("step", 0))


@dataclass
class _Weights:
    """The sampling weights of a checkpoint, checked, with everything needed to rebuild the model."""

    state: dict[str, torch.Tensor]
    what: str  # "EMA" or "model"
    model: UNet  # on the meta device
    model_config: UNetConfig
    schedule_config: ScheduleConfig
    metadata: dict[str, str]
    sha256: str


def _read_weights(path: Path, prefer_ema: bool) -> _Weights:
    """Check the header, the configs (against their limits and the memory budget), the metadata's
    counters and the names, shapes and types of the weights before reading the body; then read
    the body once, keeping only the weights (checked for finiteness by `_converted`)."""
    with CheckpointFile(path) as checkpoint:
        model_config, schedule_config = model_configs(path, checkpoint.metadata)
        check_metadata_numbers(path, checkpoint.metadata)
        prefix = "ema" if prefer_ema and split_prefix(checkpoint.entries, "ema") else "model"
        layout = split_prefix(checkpoint.entries, prefix)
        if not layout:
            raise CheckpointError(f"{path}: holds no model weights")
        model = meta_model(model_config, path)
        what = "EMA" if prefix == "ema" else "model"
        _check_layout(model.state_dict(), layout, path, what)
        tensors, sha256 = checkpoint.read(keep=lambda name: name.startswith(prefix + "."))
    return _Weights(split_prefix(tensors, prefix), what, model, model_config, schedule_config, checkpoint.metadata, sha256)


def _converted(weights: _Weights, path: Path, channels_last: bool = False, **to) -> dict[str, torch.Tensor]:
    """The weights moved and cast by `Tensor.to(**to)` (convolution kernels also made
    channels-last if asked), refused if any is NaN or infinite, or becomes so in the new type."""
    def layout(tensor: torch.Tensor) -> torch.memory_format:
        return torch.channels_last if channels_last and tensor.dim() == 4 else torch.preserve_format

    moved = {name: tensor.to(**to, memory_format=layout(tensor)) for name, tensor in weights.state.items()}
    bad = first_non_finite(moved)
    if bad is not None:
        if first_non_finite({bad: weights.state[bad]}) is None:
            raise CheckpointError(f"{path}: {weights.what} weight {bad} does not fit in {moved[bad].dtype}")
        raise CheckpointError(f"{path}: {weights.what} weight {bad} holds NaN or infinite values")
    return moved


def load_model(
    path: Path,
    device: str | torch.device = "cpu",
    prefer_ema: bool = True,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Rebuild the U-Net stored in a checkpoint or weights file, using the EMA weights if present.

    The file is read once and the network built once: on the meta device, where it is checked
    against the weights' names and shapes, then materialised by assigning the weights, cast to
    `dtype` on `device` and laid out channels-last, the layout `generate` computes in."""
    if not dtype.is_floating_point:
        raise ValueError(f"a model computes in a floating-point type, not {dtype}")
    path = Path(path)
    weights = _read_weights(path, prefer_ema)
    model = weights.model
    model.load_state_dict(_converted(weights, path, channels_last=True, device=device, dtype=dtype), assign=True)
    model.eval().requires_grad_(False)
    return LoadedModel(model, NoiseSchedule(weights.schedule_config), weights.model_config, path, weights.sha256, weights.metadata)


def _weights_file(
    state: dict[str, torch.Tensor],
    model_config: UNetConfig,
    schedule_config: ScheduleConfig,
    metadata: dict[str, str],
) -> bytes:
    """A weights file in memory: `state` as the EMA, with the configs that rebuild the model."""
    configs = {"model_config": json.dumps(model_config.to_dict()), "schedule_config": json.dumps(schedule_config.__dict__)}
    plain = {f"ema.{name}": t.detach().to("cpu").contiguous() for name, t in state.items()}
    return save_safetensors(plain, metadata={"format": FORMAT, **configs, **metadata})


def export_weights(
    path: Path,
    state: dict[str, torch.Tensor],
    model_config: UNetConfig,
    schedule_config: ScheduleConfig,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Save sampling-only weights (e.g. the EMA in fp16) with the configs that rebuild the model."""
    tensors = {name: t.to(dtype) for name, t in state.items()}
    atomic_write(Path(path), _weights_file(tensors, model_config, schedule_config, metadata or {}))


@dataclass(frozen=True)
class ExportedWeights:
    path: Path
    size: int  # bytes written
    step: int
    sha256: str  # of the written file


def export_checkpoint(source: Path, destination: Path, dtype: torch.dtype = torch.float16) -> ExportedWeights:
    """Write the sampling weights of the checkpoint `source` (its EMA if it has one) to
    `destination` in `dtype`, with the configs and the provenance (step, epoch, images, training
    config, save time) that describe them.

    Everything is read and checked first, the file is built in memory and written last, in one
    piece, and never over an existing file: a failed export leaves no output at all."""
    source, destination = Path(source), Path(destination)
    if os.path.lexists(destination):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(destination))
    weights = _read_weights(source, prefer_ema=True)
    metadata = {key: weights.metadata[key] for key in EXPORTED_METADATA if key in weights.metadata}
    if "train_config" in metadata:
        try:
            if not isinstance(json.loads(metadata["train_config"]), dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{source}: bad training config in metadata ({_first_line(e)})") from None
    state = _converted(weights, source, dtype=dtype)
    data = _weights_file(state, weights.model_config, weights.schedule_config, metadata)
    write_exclusive(destination, data)
    return ExportedWeights(destination, len(data), int(metadata.get("step", 0)), hashlib.sha256(data).hexdigest())
