"""Loading is bounded and done once: the config's limits and memory estimate, one read of the
file, one build of the network, and an export that checks everything before it writes."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import struct
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import engine.checkpoint
import engine.files
import engine.unet
from engine.checkpoint import (
    MEMORY_BUDGET,
    CheckpointError,
    export_checkpoint,
    load_model,
    meta_model,
    read_checkpoint,
    split_prefix,
)
from engine.limits import check_float, check_int, human_bytes, shown
from engine.schedules import ScheduleConfig
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet, activation_estimate, count_parameters
from tests.faults import ModuleProxy, ShortWriteFile, patched_module, raising
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)
ASSET = Path(__file__).resolve().parent.parent / "assets" / "kitty-64.safetensors"


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory) -> Path:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trainer = Trainer(SMALL, images, TrainConfig(batch_size=4, warmup_steps=2), device="cpu")
    for _ in range(2):
        trainer.step()
    path = tmp_path_factory.mktemp("run") / "checkpoint.safetensors"
    trainer.save(path)
    return path


class OpenedFiles:
    """Counts how often each path is opened, by any route (open, os.open, Path.read_bytes …),
    through Python's audit hooks (which cannot be removed, so this one is switched on and off)."""

    active: "OpenedFiles | None" = None
    installed = False

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        if not OpenedFiles.installed:
            sys.addaudithook(OpenedFiles._hook)
            OpenedFiles.installed = True

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        watcher = OpenedFiles.active
        if watcher is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.path.realpath(os.fsdecode(args[0]))
            watcher.counts[name] = watcher.counts.get(name, 0) + 1

    def __enter__(self) -> "OpenedFiles":
        OpenedFiles.active = self
        return self

    def __exit__(self, *exc) -> None:
        OpenedFiles.active = None

    def of(self, path: Path) -> int:
        return self.counts.get(os.path.realpath(path), 0)


def test_load_model_reads_the_file_once_and_builds_the_network_once(training_checkpoint, monkeypatch):
    builds = []
    real_init = engine.unet.UNet.__init__

    def counted_init(self, config):
        builds.append(torch.empty(0).device.type)
        real_init(self, config)

    monkeypatch.setattr(engine.unet.UNet, "__init__", counted_init)
    for path in (training_checkpoint, ASSET):
        builds.clear()
        with OpenedFiles() as opened:
            loaded = load_model(path)
        assert opened.of(path) == 1
        assert builds == ["meta"]  # then materialised from the weights, never built again
        assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert not any(t.is_meta for t in [*loaded.model.parameters(), *loaded.model.buffers()])


def test_load_model_gives_the_stored_weights_in_the_asked_dtype(training_checkpoint):
    stored = split_prefix(load_file(training_checkpoint), "ema")
    reference = UNet(SMALL)
    reference.load_state_dict(stored)
    reference.to(memory_format=torch.channels_last)  # the layout load_model gives the kernels
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 700])

    loaded = load_model(training_checkpoint)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, stored[name]), name
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    kernels = [p for p in loaded.model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert any(not p.is_contiguous() for p in kernels)  # 3×3 kernels: the layouts differ

    bf16 = load_model(training_checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    for name, value in bf16.model.state_dict().items():
        assert torch.equal(value, stored[name].to(torch.bfloat16)), name
    with torch.no_grad():
        expected = reference(x, t)
        assert torch.equal(loaded.model(x, t), expected)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the time embedding is computed in float32
            assert torch.allclose(bf16.model(x, t).float(), expected, atol=0.1)
    with pytest.raises(ValueError, match="floating-point"):
        load_model(training_checkpoint, dtype=torch.int8)


def test_presets_and_the_shipped_model_fit_the_memory_budget_with_room():
    for name, config in PRESETS.items():
        model = meta_model(config, Path(name))
        needed = 4 * (count_parameters(model) + activation_estimate(config))
        assert needed < MEMORY_BUDGET / 16, (name, human_bytes(needed))
    loaded = load_model(ASSET)
    assert loaded.config == PRESETS["kitty-64"] and loaded.step > 0


class LiveTensors(TorchDispatchMode):
    """The peak of the bytes held by tensors that operators return, while they are alive (views
    count once). Temporaries inside a single operator are not seen."""

    def __init__(self) -> None:
        super().__init__()
        self.references: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def _release(self, key: int) -> None:
        self.references[key] -= 1
        if not self.references[key]:
            del self.references[key]
            self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key not in self.references:
                    self.references[key] = 0
                    self.sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.references[key] += 1
                weakref.finalize(tensor, self._release, key)
        return out


@pytest.mark.parametrize(
    "config",
    [
        PRESETS["tiny"],
        PRESETS["kitty-64"],
        SMALL,
        dataclasses.replace(PRESETS["kitty-64"], image_size=32, num_res_blocks=3),
        dataclasses.replace(PRESETS["tiny"], channel_mults=(1,), attention_resolutions=(), image_size=8),
        dataclasses.replace(PRESETS["tiny"], base_channels=32, channel_mults=(1, 1, 2, 2, 4), image_size=32),
    ],
    ids=["tiny", "kitty-64", "tiny-16", "kitty-32-3-blocks", "one-level", "five-levels"],
)
def test_the_activation_estimate_bounds_what_a_forward_pass_holds(config):
    model = UNet(config).eval()
    x, t = torch.randn(1, config.in_channels, config.image_size, config.image_size), torch.tensor([10])
    with torch.inference_mode():
        model(x, t)  # one-time initialisation is not the model's memory
        with LiveTensors() as live:
            model(x, t)
    estimate = 4 * activation_estimate(config)
    # An upper bound, and not a loose one: the score matrices it counts are not always
    # materialised (fused attention kernels), which is what lets it reach 3× at tiny sizes.
    assert live.peak <= estimate <= 3 * live.peak, (live.peak, estimate)


def test_attention_at_full_resolution_counts_its_score_matrices():
    plain = dataclasses.replace(PRESETS["tiny"], attention_resolutions=())
    full = dataclasses.replace(PRESETS["tiny"], attention_resolutions=(32,))
    heads, positions = max(1, 24 // 32), 32 * 32
    assert activation_estimate(full) - activation_estimate(plain) >= 2 * heads * positions**2
    huge = dataclasses.replace(PRESETS["kitty-64"], image_size=256, attention_resolutions=(256,))
    with pytest.raises(CheckpointError, match=r"^x: the model in its config needs about \d+\.\d GiB for one image; the limit is 2\.0 GiB$"):
        meta_model(huge, Path("x"))


def test_numbers_are_shown_for_people():
    assert shown(10**300) == "about 10^300" and shown(-(10**20)) == "-about 10^20"
    assert shown(1_234_567) == "1,234,567" and shown(True) == "true" and shown(None) == "null"
    assert shown(float("nan")) == "nan" and shown("x" * 40) == repr("x" * 23 + "…")
    assert shown("9" * 300) == "a 300-digit number" and shown({"a": 1}) == "an object"
    assert shown([1, 2]) == "[1, 2]" and shown(list(range(100))) == "a list of 100 items"
    assert human_bytes(512) == "512 bytes" and human_bytes(12 * 2**20) == "12.0 MiB"
    assert human_bytes(7.4 * 2**30) == "7.4 GiB" and human_bytes(2**63) == "8.0 EiB"
    for value, words in ((True, "not true"), (64.0, "not 64.0"), ("64", "not '64'"), (None, "not null"), ([64], "not [64]")):
        with pytest.raises(ValueError, match="whole number, " + words.replace("[", r"\[").replace("]", r"\]")):
            check_int("size", value, 1, 100)
    with pytest.raises(ValueError, match="must be from 1 to 100, not about 10"):
        check_int("size", 10**400, 1, 100)
    for value in (float("nan"), float("inf"), 10**400):
        with pytest.raises(ValueError, match="must be finite"):
            check_float("beta", value)
    assert check_float("beta", 1) == 1.0 and isinstance(check_float("beta", 1), float)


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"image_size": 64.0}, "image_size must be a whole number, not 64.0"),
        ({"image_size": 8192}, "image_size must be from 1 to 1,024, not 8,192"),
        ({"num_res_blocks": 100_000}, "num_res_blocks must be from 1 to 8"),
        ({"base_channels": 2**20}, "base_channels must be from 1 to 1,024"),
        ({"channel_mults": (1,) * 9}, "at most 8 values, not 9"),
        ({"channel_mults": ()}, "at least one level"),
        ({"attention_head_channels": True}, "attention_head_channels must be a whole number, not true"),
        ({"dropout": float("nan")}, "dropout must be finite"),
        ({"norm_groups": 0}, "norm_groups must be from 1"),
        ({"base_channels": 20, "norm_groups": 4, "attention_head_channels": 6}, "80 channels do not split into 13 attention heads"),
    ],
)
def test_model_configs_are_bounded(changes, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        dataclasses.replace(PRESETS["kitty-64"], **changes)


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"kind": "linear", "beta_start": float("nan")}, "beta_start must be finite"),
        ({"kind": "linear", "beta_start": 5.0}, "0 < beta_start ≤ beta_end < 1"),
        ({"beta_end": 1.0}, "0 < beta_start ≤ beta_end < 1"),
        ({"num_steps": 2.5}, "num_steps must be a whole number, not 2.5"),
        ({"num_steps": 100_001}, "num_steps must be from 2 to 100,000, not 100,001"),
        ({"kind": "linear", "beta_end": 0.9, "num_steps": 2000}, "leaves no signal at its last step"),
        ({"kind": "linear", "beta_start": 1e-12, "beta_end": 1e-12}, "adds no noise at its first step"),
    ],
)
def test_schedule_configs_are_bounded(changes, words):
    with pytest.raises(ValueError, match=words):
        ScheduleConfig(**changes)
    assert ScheduleConfig(kind="linear", num_steps=100_000, beta_start=1e-5, beta_end=2e-4).num_steps == 100_000


def test_export_checks_first_then_writes_one_new_file(training_checkpoint, tmp_path):
    out = tmp_path / "weights.safetensors"
    exported = export_checkpoint(training_checkpoint, out)
    data = out.read_bytes()
    assert exported.path == out and exported.size == len(data) and exported.sha256 == hashlib.sha256(data).hexdigest()
    tensors, metadata = read_checkpoint(out)
    _, source_metadata = read_checkpoint(training_checkpoint)
    assert exported.step == int(source_metadata["step"]) == 2
    assert {t.dtype for t in tensors.values()} == {torch.float16} and all(name.startswith("ema.") for name in tensors)
    for key in ("step", "epoch", "images", "train_config", "saved_at", "model_config", "schedule_config"):
        assert metadata[key] == source_metadata[key], key
    assert "optimizer_param_groups" not in metadata
    stored = split_prefix(load_file(training_checkpoint), "ema")
    for name, value in split_prefix(tensors, "ema").items():
        assert torch.equal(value, stored[name].half()), name
    assert load_model(out).sha256 == exported.sha256
    assert sorted(os.listdir(tmp_path)) == ["weights.safetensors"]  # no temporary left

    with pytest.raises(FileExistsError):
        export_checkpoint(training_checkpoint, out)
    assert out.read_bytes() == data


def test_export_never_replaces_a_file_that_appears_while_it_works(training_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "weights.safetensors"
    out.write_bytes(b"someone else's")
    patched_module(monkeypatch, engine.checkpoint, "os", path=ModuleProxy(os.path, lexists=lambda path: False))
    with pytest.raises(FileExistsError):
        export_checkpoint(training_checkpoint, out)
    assert out.read_bytes() == b"someone else's" and sorted(os.listdir(tmp_path)) == ["weights.safetensors"]


@pytest.mark.parametrize("call", ["write", "fsync", "link"])
def test_a_failed_export_leaves_no_file(training_checkpoint, tmp_path, monkeypatch, call):
    out = tmp_path / "weights.safetensors"
    if call == "write":  # the disk fills up half way through the file
        real_fdopen = os.fdopen
        patched_module(monkeypatch, engine.files, "os", fdopen=lambda fd, mode, **kw: ShortWriteFile(real_fdopen(fd, mode, **kw), 4096))
    else:
        patched_module(monkeypatch, engine.files, "os", **{call: raising(errno.ENOSPC if call == "fsync" else errno.EIO)})
    with pytest.raises(OSError) as info:
        export_checkpoint(training_checkpoint, out)
    assert info.value.filename == str(out)
    assert os.listdir(tmp_path) == []


def test_export_without_hard_links_still_never_overwrites(training_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "weights.safetensors"
    patched_module(monkeypatch, engine.files, "os", link=raising(errno.EXDEV))
    export_checkpoint(training_checkpoint, out)
    assert load_model(out).step == 2 and os.listdir(tmp_path) == ["weights.safetensors"]


def doctored(source: Path, folder: Path, change) -> Path:
    """A copy of `source` whose header JSON was changed by `change(header)`."""
    data = source.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    body = change(header, body) or body
    raw = json.dumps(header).encode()
    path = folder / "doctored.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def test_export_refuses_weights_that_do_not_fit_the_output_type(training_checkpoint, tmp_path):
    def huge_weight(header, body):
        begin = header["ema.conv_in.weight"]["data_offsets"][0]
        body = bytearray(body)
        body[begin : begin + 4] = struct.pack("<f", 1e6)  # finite in float32, not in float16
        return bytes(body)

    path = doctored(training_checkpoint, tmp_path, huge_weight)
    out = tmp_path / "weights.safetensors"
    with pytest.raises(CheckpointError, match="EMA weight conv_in.weight does not fit in torch.float16"):
        export_checkpoint(path, out)
    assert load_model(path).step == 2  # as float32 it loads
    assert not out.exists()


def test_export_refuses_a_damaged_training_config_before_writing(training_checkpoint, tmp_path):
    path = doctored(training_checkpoint, tmp_path, lambda header, body: header["__metadata__"].update(train_config="[1, 2"))
    out = tmp_path / "weights.safetensors"
    with pytest.raises(CheckpointError, match="bad training config in metadata"):
        export_checkpoint(path, out)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["doctored.safetensors"]
