"""Checkpoints: one safetensors file per save, written atomically, never pickled.

A file holds named tensors (model weights under `model.`, EMA weights under `ema.`, and for
training checkpoints optimizer state, RNG state and the loss history) plus string metadata:
the model and schedule configs as JSON, so the file alone rebuilds the network. safetensors
stores raw tensor bytes and a JSON header, so loading a checkpoint can never execute code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .files import atomic_write
from .schedules import NoiseSchedule, ScheduleConfig
from .unet import UNet, UNetConfig

FORMAT = "kittyterm/1"
MAX_SCHEDULE_STEPS = 100_000  # a checkpoint claiming more is damaged or hostile (the schedule is allocated)


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


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a kittyterm safetensors file; raise CheckpointError naming the file on any problem."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block, /dev/zero never end
        raise CheckpointError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        tensors = load_safetensors(data)
        metadata = _header_metadata(data)
    except (SafetensorError, ValueError, OverflowError, UnicodeDecodeError) as e:
        if data[:1] == b"\x80" or data[:2] == b"PK":
            raise CheckpointError(f"{path}: is a pickle file; kittyterm loads only safetensors and never unpickles") from None
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kittyterm checkpoint (format {metadata.get('format')!r})")
    return tensors, metadata


def _header_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (8-byte little-endian length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    return header.get("__metadata__") or {}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix.`, with the prefix removed."""
    cut = len(prefix) + 1
    return {name[cut:]: t for name, t in tensors.items() if name.startswith(prefix + ".")}


def model_configs(path: Path, metadata: dict[str, str]) -> tuple[UNetConfig, ScheduleConfig]:
    try:
        model_config = UNetConfig.from_dict(json.loads(metadata["model_config"]))
        schedule_config = ScheduleConfig(**json.loads(metadata["schedule_config"]))
    except KeyError as e:
        raise CheckpointError(f"{path}: metadata lacks {e.args[0]}") from None
    except Exception as e:  # bad JSON, wrong types, impossible values (ValueError, TypeError, ZeroDivisionError …)
        raise CheckpointError(f"{path}: bad config in metadata ({_first_line(e)})") from None
    if not isinstance(schedule_config.num_steps, int) or schedule_config.num_steps > MAX_SCHEDULE_STEPS:
        raise CheckpointError(f"{path}: bad config in metadata (a schedule of {schedule_config.num_steps!r} steps)")
    return model_config, schedule_config


def check_state_fits(model_config: UNetConfig, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Check names, shapes and finiteness of `state` against the network `model_config` describes,
    building that network on the meta device first: a config claiming a gigantic network costs
    nothing, and nothing is allocated for a file that does not fit."""
    try:
        with torch.device("meta"):
            probe = UNet(model_config)
    except Exception as e:
        raise CheckpointError(f"{path}: bad model config in metadata ({_first_line(e)})") from None
    _check_state(probe.state_dict(), state, path, what)


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"{path}: {what} weights do not fit the model in its config ({detail})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: {what} weight {name} has shape {tuple(tensor.shape)}, "
                f"the config needs {tuple(expected[name].shape)}"
            )
        if expected[name].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{path}: {what} weight {name} is {tensor.dtype}, not floating point")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: {what} weight {name} holds NaN or infinite values")


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Copy `state` into `model` after checking names and shapes, with a clear error otherwise."""
    expected = model.state_dict()
    _check_state(expected, state, path, what)
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


def load_model(path: Path, device: str | torch.device = "cpu", prefer_ema: bool = True) -> LoadedModel:
    """Rebuild the U-Net stored in a checkpoint or weights file, using the EMA weights if present."""
    path = Path(path)
    tensors, metadata = read_checkpoint(path)
    model_config, schedule_config = model_configs(path, metadata)
    ema = split_prefix(tensors, "ema")
    state = ema if (prefer_ema and ema) else split_prefix(tensors, "model")
    if not state:
        raise CheckpointError(f"{path}: holds no model weights")
    check_state_fits(model_config, state, path, "EMA" if state is ema else "model")
    model = UNet(model_config)
    load_state_checked(model, state, path, "EMA" if state is ema else "model")
    model.eval().requires_grad_(False).to(device)
    return LoadedModel(model, NoiseSchedule(schedule_config), model_config, path, file_sha256(path), metadata)


def export_weights(
    path: Path,
    state: dict[str, torch.Tensor],
    model_config: UNetConfig,
    schedule_config: ScheduleConfig,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Save sampling-only weights (e.g. the EMA in fp16) with the configs that rebuild the model."""
    tensors = {f"ema.{name}": t.to(dtype) for name, t in state.items()}
    meta = {
        "model_config": json.dumps(model_config.to_dict()),
        "schedule_config": json.dumps(schedule_config.__dict__),
        **(metadata or {}),
    }
    save_checkpoint(path, tensors, meta)
