"""Issue 5, item 4: bad checkpoints give one line naming the file and the problem; nothing executes.

Every variant is tried through `load_model` (sample/export), `Trainer.resume` (train) and the
`sample` and `export` commands; a few also as the checkpoint of a run that `train` resumes.
While they load, every way of unpickling is booby-trapped, and the pickles carry payloads that
would create a file if they ever ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from typer.testing import CliRunner

from engine.checkpoint import CheckpointError, load_model
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS
from kittyterm.cli import app
from tests.faults import record
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


def images(size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    trainer = Trainer(SMALL, images(), TrainConfig(batch_size=4, warmup_steps=2), device="cpu")
    trainer.step()
    path = tmp_path_factory.mktemp("good") / "c.safetensors"
    trainer.save(path)
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    """(header JSON, tensor bytes) of a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def with_metadata(data: bytes, **changes) -> bytes:
    header, body = split(data)
    meta = dict(header["__metadata__"])
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    header["__metadata__"] = meta
    return join(header, body)


def with_tensors(data: bytes, change) -> bytes:
    """Rewrite the tensors (as a dict) with `change`, keeping the kittyterm metadata."""
    tensors, meta = read_checkpoint_bytes(data)
    change(tensors)
    return safetensors_bytes(tensors, metadata=meta)


def read_checkpoint_bytes(data: bytes):
    from safetensors.torch import load

    return dict(load(data)), split(data)[0]["__metadata__"]


class Payload:
    """Creates MARKER if it is ever unpickled."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def noise(size: int) -> bytes:
    """Random bytes that do not happen to start like a pickle (0x80) or a zip (PK): those get the
    more specific "is a pickle file" error, which the pickle cases below check."""
    data = os.urandom(size)
    return data if size == 0 or (data[:1] != b"\x80" and data[:2] != b"PK") else b"\x00" + data[1:]


def bad_files(good: bytes, marker: str) -> dict[str, tuple[bytes, str]]:
    """name → (content, words the error must contain)."""
    Payload.marker = marker
    header, body = split(good)
    n = int.from_bytes(good[:8], "little")
    config = json.loads(header["__metadata__"]["model_config"])
    rng = torch.Generator().manual_seed(5)
    files: dict[str, tuple[bytes, str]] = {
        "empty": (b"", "not a readable safetensors"),
        "one-byte": (b"\x00", "not a readable safetensors"),
        "random-8": (noise(8), "not a readable safetensors"),
        "random-4k": (noise(4096), "not a readable safetensors"),
        "random-1m": (noise(1 << 20), "not a readable safetensors"),
        "text": (b"model weights, trust me\n" * 50, "not a readable safetensors"),
        "huge-header-length": (struct.pack("<Q", 2**63) + good[8:], "not a readable safetensors"),
        "header-longer-than-file": (struct.pack("<Q", len(good) * 2) + good[8:], "not a readable safetensors"),
        "header-not-json": (struct.pack("<Q", 16) + b"{not json at all" + body, "not a readable safetensors"),
        "header-json-list": (join([1, 2, 3], b""), "not a readable safetensors"),  # type: ignore[arg-type]
        "tensor-past-end": (good[: 8 + n] + body[: len(body) // 3], "not a readable safetensors"),
        "foreign-safetensors": (safetensors_bytes({"w": torch.ones(3)}), "not a kittyterm checkpoint"),
        "no-model-config": (with_metadata(good, model_config=None), "model_config"),
        "model-config-not-json": (with_metadata(good, model_config="{oops"), "bad config"),
        "model-config-unknown-field": (with_metadata(good, model_config=json.dumps({**config, "evil": 1})), "bad config"),
        "model-config-zero-groups": (with_metadata(good, model_config=json.dumps({**config, "norm_groups": 0})), "bad config"),
        "model-config-list": (with_metadata(good, model_config="[1, 2]"), "bad config"),
        "another-shape": (with_metadata(good, model_config=json.dumps({**config, "base_channels": 32})), "shape"),
        "gigantic-config": (with_metadata(good, model_config=json.dumps({**config, "base_channels": 2**20})), "shape"),
        "another-depth": (with_metadata(good, model_config=json.dumps({**config, "channel_mults": [1, 2, 2, 2]})), "do not fit"),
        "schedule-of-1e12-steps": (with_metadata(good, schedule_config=json.dumps({"kind": "cosine", "num_steps": 10**12})), "bad config"),
        "schedule-unknown-kind": (with_metadata(good, schedule_config=json.dumps({"kind": "exec"})), "bad config"),
        "nan-weights": (with_tensors(good, lambda t: t["ema.conv_in.weight"].fill_(float("nan"))), "NaN"),
        "inf-weights": (with_tensors(good, lambda t: (t["model.conv_in.weight"].fill_(float("inf")), t["ema.out.weight" if "ema.out.weight" in t else "ema.conv_in.weight"].fill_(float("-inf")))), "NaN or infinite"),
        "missing-weight": (with_tensors(good, lambda t: (t.pop("ema.conv_in.weight"), t.pop("model.conv_in.weight"))), "missing"),
        "extra-weight": (with_tensors(good, lambda t: t.update({"ema.backdoor": torch.ones(1), "model.backdoor": torch.ones(1)})), "unexpected"),
        "integer-weights": (with_tensors(good, lambda t: t.update({k: v.to(torch.int32) for k, v in t.items() if k.startswith(("ema.", "model."))})), "not floating point"),
        "random-weights-wrong-size": (with_tensors(good, lambda t: t.update({"ema.conv_in.weight": torch.randn(3, generator=rng), "model.conv_in.weight": torch.randn(3, generator=rng)})), "shape"),
        # pickles: every protocol, torch's zip and legacy formats, all with a payload
        **{f"pickle-protocol-{p}": (pickle.dumps({"model": Payload()}, protocol=p), "") for p in range(pickle.HIGHEST_PROTOCOL + 1)},
    }
    for name, kwargs in (("torch-zip", {}), ("torch-legacy", {"_use_new_zipfile_serialization": False})):
        import io

        buffer = io.BytesIO()
        torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Payload()}, buffer, **kwargs)
        files[name] = (buffer.getvalue(), "pickle" if name == "torch-zip" or buffer.getvalue()[:1] == b"\x80" else "")
    # cut the good file at many places: in the length, the header, the tensors, the last byte
    for cut in (0, 4, 8, 9, 8 + n // 2, 8 + n, 8 + n + 1, 8 + n + len(body) // 2, len(good) - 1):
        files[f"truncated-at-{cut}"] = (good[:cut], "not a readable safetensors")
    return files


TRAINING_ONLY = {  # damage that only resuming a run can notice
    "train-config-not-json": ("train_config", "{oops", "bad training config"),
    "train-config-nan-lr": ("train_config", None, "bad training config"),
    "optimizer-groups-not-json": ("optimizer_param_groups", "[{", "damaged training state"),
    "optimizer-groups-wrong": ("optimizer_param_groups", json.dumps([{"lr": 1}]), "damaged training state"),
    "step-not-a-number": ("step", "many", "damaged training state"),
}


def training_only_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    files = {}
    for name, (key, value, words) in TRAINING_ONLY.items():
        if name == "train-config-nan-lr":
            saved = json.loads(split(good)[0]["__metadata__"]["train_config"])
            value = json.dumps({**saved, "lr": float("nan")})
        files[name] = (with_metadata(good, **{key: value}), words)
    files["missing-rng"] = (with_tensors(good, lambda t: t.pop("rng.noise")), "lacks rng.noise")
    files["wrong-rng"] = (with_tensors(good, lambda t: t.update({"rng.noise": torch.zeros(3, dtype=torch.uint8)})), "damaged training state")
    files["nan-optimizer"] = (with_tensors(good, lambda t: next(v for k, v in t.items() if k.startswith("optim.") and v.is_floating_point() and v.dim()).fill_(float("nan"))), "optimizer state")
    files["weights-only"] = (with_metadata(good, train_config=None), "weights only")
    return files


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to unpickle, by any route."""
    calls = []

    def trap(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called on a checkpoint")

        return refuse

    monkeypatch.setattr(pickle, "load", trap("pickle.load"))
    monkeypatch.setattr(pickle, "loads", trap("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", trap("pickle.Unpickler"))
    monkeypatch.setattr(torch, "load", trap("torch.load"))
    return calls


def one_line_naming(error: BaseException, path, words: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    assert str(path) in text, text
    assert words.lower() in text.lower(), (words, text)


def test_bad_checkpoints_give_one_line_and_never_execute(tmp_path, good_checkpoint, no_unpickling):
    marker = tmp_path / "payload-ran"
    files = bad_files(good_checkpoint, str(marker))
    runner = CliRunner()
    tried = crashes = 0
    for name, (content, words) in files.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        tried += 1
        for attempt in (lambda path=path: load_model(path), lambda path=path: Trainer.resume(path, images())):
            try:
                attempt()
            except CheckpointError as error:
                one_line_naming(error, path, words)
            except Exception as error:  # anything else would be a traceback for the user
                crashes += 1
                raise AssertionError(f"{name}: {type(error).__name__}: {error}") from error
            else:
                raise AssertionError(f"{name} loaded")
        for args in (["sample", "--out", tmp_path / "cats", "-n", 1, "--checkpoint", path], ["export", "--checkpoint", path, "--out", tmp_path / f"{name}-out.safetensors"]):
            result = runner.invoke(app, [str(a) for a in args])
            if not isinstance(result.exception, SystemExit):
                crashes += 1
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output, result.exception)
            assert "Traceback" not in result.output and "error:" in result.output and path.name in result.output
        assert not (tmp_path / f"{name}-out.safetensors").exists()
    assert not marker.exists() and no_unpickling == []
    record("checkpoints", faults=tried, bad_inputs=tried, survived=4 * tried, crashes=crashes,
           note=f"{tried} files × (load_model, Trainer.resume, `sample`, `export`); pickles never unpickled")


def test_damaged_training_state_is_named_when_resuming(tmp_path, good_checkpoint, no_unpickling):
    files = training_only_files(good_checkpoint)
    for name, (content, words) in files.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            Trainer.resume(path, images())
        one_line_naming(info.value, path, words)
    record("checkpoints", faults=len(files), bad_inputs=len(files), survived=len(files),
           note="damaged training state (optimizer, RNG, step, config) caught by Trainer.resume")


def test_train_refuses_a_bad_or_foreign_run_checkpoint_in_one_line(tmp_path, kittyterm_home, good_checkpoint):
    from PIL import Image

    data = tmp_path / "pics"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 90, 200)).save(data / f"{i}.png")
    run = kittyterm_home / "data" / "runs" / "tiny-pics"
    run.mkdir(parents=True)
    checkpoint = run / "checkpoint.safetensors"
    variants = {
        "another-preset": (good_checkpoint, "16 px"),  # a 16 px model where a 32 px tiny run is expected
        "random": (noise(1000), "not a readable safetensors"),
        "pickle": (pickle.dumps({"a": 1}), "pickle"),
        "truncated": (good_checkpoint[:5000], "not a readable safetensors"),
    }
    runner = CliRunner()
    for name, (content, words) in variants.items():
        checkpoint.write_bytes(content)
        result = runner.invoke(app, ["train", "--data", str(data), "--preset", "tiny", "--steps", "1", "--batch-size", "2"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output, result.exception)
        assert words in result.output and "--fresh" in result.output and "Traceback" not in result.output
        assert checkpoint.read_bytes() == content  # never overwritten
    record("checkpoints", faults=len(variants), bad_inputs=len(variants), survived=len(variants),
           note="bad checkpoint in a run folder: `train` refuses in one line, file kept")


def test_special_files_never_block_or_fill_memory(tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero", tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        assert str(path) in str(info.value)
    record("checkpoints", faults=3, bad_inputs=3, survived=3, note="FIFO, /dev/zero, a folder: refused without reading")
