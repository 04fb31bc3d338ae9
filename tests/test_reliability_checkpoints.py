"""Bad checkpoints give one line naming the file and the problem; nothing executes.

Every variant is tried through `load_model` (sample/export), `Trainer.resume` (train) and the
`sample` and `export` commands; a few also as the checkpoint of a run that `train` resumes.
While they load, every way of unpickling is booby-trapped, and the pickles carry payloads that
would create a file if they ever ran. Checkpoints doctored in one bounded field each (image size,
depth, widths, attention, schedule, counters) and files whose header lies are refused before
anything is built or their body read: in a child process, each within a second and a few MiB.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from typer.testing import CliRunner

from engine.checkpoint import CheckpointError, export_checkpoint, load_model, read_checkpoint
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


def with_header_length(data: bytes, low_bytes: int) -> bytes:
    """The same file with its JSON header padded by trailing spaces (as the format allows) until
    the two low bytes of its length are `low_bytes`."""
    n = int.from_bytes(data[:8], "little")
    pad = (low_bytes - n) % 0x10000
    return struct.pack("<Q", n + pad) + data[8 : 8 + n] + b" " * pad + data[8 + n :]


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
        "gigantic-config": (with_metadata(good, model_config=json.dumps({**config, "base_channels": 2**20})), "base_channels must be from 1 to 1,024"),
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
    # a header length whose first bytes read like a pickle's (0x80, protocol 2), cut in the header and the tensors
    padded = with_header_length(good, 0x0280)
    m = int.from_bytes(padded[:8], "little")
    for cut in (8 + m // 2, 8 + m + len(body) // 2):
        files[f"pickle-like-length-truncated-at-{cut}"] = (padded[:cut], "not a readable safetensors")
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
    for path, words in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"), (tmp_path, "is a folder")):
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        one_line_naming(info.value, path, words)
    record("checkpoints", faults=3, bad_inputs=3, survived=3, note="FIFO, /dev/zero, a folder: refused without reading")


def bounded_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    """The good checkpoint doctored in one bounded field each → words of its one-line refusal."""
    meta = split(good)[0]["__metadata__"]
    config, schedule_config = json.loads(meta["model_config"]), json.loads(meta["schedule_config"])

    def model(**changes) -> bytes:
        return with_metadata(good, model_config=json.dumps({**config, **changes}))

    def schedule(**changes) -> bytes:
        return with_metadata(good, schedule_config=json.dumps({**schedule_config, **changes}))

    budget = "for one image; the limit is 2.0 GiB"
    return {
        "image-size-8192": (model(image_size=8192), "image_size must be from 1 to 1,024, not 8,192"),
        "image-size-65536": (model(image_size=65536), "image_size must be from 1 to 1,024, not 65,536"),
        "image-size-300-digits": (model(image_size=10**300), "not about 10^300"),
        "image-size-1024-wide": (model(image_size=1024, base_channels=256), budget),
        "attention-at-full-256": (model(image_size=256, attention_resolutions=[256]), budget),
        "deep-and-wide-at-16": (model(base_channels=1024, channel_mults=[1, 2, 4, 8, 16], num_res_blocks=8), budget),
        "num-res-blocks-100000": (model(num_res_blocks=100_000), "num_res_blocks must be from 1 to 8, not 100,000"),
        "base-channels-2**40": (model(base_channels=2**40), "base_channels must be from 1 to 1,024, not 1,099,511,627,776"),
        "channel-mults-long": (model(channel_mults=[1] * 1000), "channel_mults may list at most 8 values, not 1,000"),
        "channel-mult-huge": (model(channel_mults=[1, 2, 2**31]), "each of channel_mults must be from 1 to 16"),
        "attention-resolutions-long": (model(attention_resolutions=list(range(1, 100))), "attention_resolutions may list at most 8"),
        "head-channels-0": (model(attention_head_channels=0), "attention_head_channels must be from 1 to 1,024, not 0"),
        "heads-do-not-divide": (model(base_channels=20, norm_groups=4, attention_head_channels=6), "do not split into"),
        "image-size-float": (model(image_size=16.0), "image_size must be a whole number, not 16.0"),
        "image-size-string": (model(image_size="16"), "image_size must be a whole number, not '16'"),
        "image-size-true": (model(image_size=True), "image_size must be a whole number, not true"),
        "image-size-null": (model(image_size=None), "image_size must be a whole number, not null"),
        "image-size-list": (model(image_size=[16]), "image_size must be a whole number, not [16]"),
        "image-size-object": (model(image_size={"$gt": 0}), "image_size must be a whole number, not an object"),
        "channel-mults-string": (model(channel_mults="1,2,2"), "channel_mults must be a list of whole numbers"),
        "norm-groups-float": (model(norm_groups=8.5), "norm_groups must be a whole number, not 8.5"),
        "dropout-nan": (model(dropout=float("nan")), "dropout must be finite, not nan"),
        "dropout-one": (model(dropout=1), "dropout must be from 0 to below 1, not 1"),
        "beta-start-nan": (schedule(kind="linear", beta_start=float("nan")), "beta_start must be finite, not nan"),
        "beta-start-5": (schedule(kind="linear", beta_start=5.0), "0 < beta_start ≤ beta_end < 1, not 5.0 and 0.02"),
        "beta-end-inf": (schedule(beta_end=float("-inf")), "beta_end must be finite, not -inf"),
        "betas-swapped": (schedule(kind="linear", beta_start=0.02, beta_end=1e-4), "0 < beta_start ≤ beta_end < 1"),
        "linear-leaves-no-signal": (schedule(kind="linear", beta_end=0.5, num_steps=100_000), "leaves no signal at its last step"),
        "num-steps-1e12": (schedule(num_steps=10**12), "num_steps must be from 2 to 100,000, not 1,000,000,000,000"),
        "num-steps-float": (schedule(num_steps=1000.5), "num_steps must be a whole number, not 1000.5"),
        "num-steps-string": (schedule(num_steps="1000"), "num_steps must be a whole number, not '1000'"),
        "schedule-kind-list": (schedule(kind=["cosine"]), "unknown noise schedule ['cosine']"),
        "schedule-not-an-object": (with_metadata(good, schedule_config="[1000]"), "the schedule config must be a JSON object, not [1,000]"),
    }


def sparse(path, header: dict, body_size: int) -> None:
    """A safetensors file with `header` and `body_size` bytes of zeros that take no disk space."""
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + body_size)


def header_files(good: bytes) -> dict[str, tuple[object, str]]:
    """Files whose header is wrong, or right about a 3 GB body that does not fit the model, →
    words of the refusal. The big ones are sparse: 3 GB that cost no disk."""
    header, body = split(good)
    meta = header["__metadata__"]
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    small = {
        "length-past-end": (struct.pack("<Q", 1 << 20) + b"{}", "its header claims 1.0 MiB, more than the file's 10 bytes"),
        "not-json": (struct.pack("<Q", 5) + b"{oops", "its header is not JSON"),
        "nested-deep": (struct.pack("<Q", 200_000) + b"[" * 200_000, "its header is not JSON"),
        "metadata-not-strings": (join({"__metadata__": {"format": 1}}, b""), "its metadata is not a map of strings"),
        "dtype-unknown": (join({"__metadata__": meta, "w": {**entry, "dtype": "F8_E4M3"}}, bytes(8)), "unsupported dtype 'F8_E4M3'"),
        "dtype-object": (join({"__metadata__": meta, "w": {**entry, "dtype": "object"}}, bytes(8)), "unsupported dtype 'object'"),
        "shape-negative": (join({"__metadata__": meta, "w": {**entry, "shape": [-2]}}, bytes(8)), "bad shape [-2]"),
        "shape-float": (join({"__metadata__": meta, "w": {**entry, "shape": [2.0]}}, bytes(8)), "bad shape [2.0]"),
        "shape-beyond-file": (join({"__metadata__": meta, "w": {**entry, "shape": [0, 10**30]}}, bytes(8)), "bad shape [0, about 10^30]"),
        "span-mismatch": (join({"__metadata__": meta, "w": {**entry, "shape": [3]}}, bytes(16)), "spans 8 bytes but its shape needs 12 bytes"),
        "span-longer-than-shape": (join({"__metadata__": meta, "w": {**entry, "shape": [1]}}, bytes(8)), "spans 8 bytes but its shape needs 4 bytes"),
        "offsets-reversed": (join({"__metadata__": meta, "w": {**entry, "data_offsets": [8, 0]}}, bytes(8)), "bad data_offsets"),
        "offsets-overlap": (join({"__metadata__": meta, "a": entry, "b": entry}, bytes(8)), "overlap or leave gaps"),
        "offsets-gap": (join({"__metadata__": meta, "a": {**entry, "data_offsets": [8, 16]}}, bytes(16)), "overlap or leave gaps"),
        "offsets-past-end": (join({"__metadata__": meta, "w": {**entry, "shape": [4], "data_offsets": [0, 16]}}, bytes(8)), "bad data_offsets"),
        "trailing-bytes": (good + bytes(100), "the file holds 100 bytes more than its header describes"),
        "name-with-newline": (join({"__metadata__": meta, "w\nx": {**entry, "dtype": "?"}}, bytes(8)), "unsupported dtype"),
        "entry-missing-field": (join({"__metadata__": meta, "w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "dtype, shape and data_offsets"),
    }
    files: dict[str, tuple[object, str]] = dict(small)
    big = 3 * 10**9
    files["zeros-3gb"] = (lambda path: open(path, "wb").truncate(big), "its header is not JSON")
    files["length-2**63-3gb"] = (
        lambda path: (open(path, "wb").write(struct.pack("<Q", 2**63)), os.truncate(path, big)),
        "its header claims 8.0 EiB; a header may have at most 16.0 MiB",
    )
    files["length-15mib-3gb"] = (
        lambda path: (open(path, "wb").write(struct.pack("<Q", 15 << 20)), os.truncate(path, big)),
        "its header is not JSON",
    )
    files["3gb-tensor-no-config"] = (
        lambda path: sparse(path, {"__metadata__": {"format": "kittyterm/1"}, "x": {"dtype": "U8", "shape": [big], "data_offsets": [0, big]}}, big),
        "metadata lacks model_config",
    )
    # A header that is right about a 3 GB body whose weights do not fit the config: refused
    # from the header alone, the body never read.
    entries = {name: value for name, value in header.items() if name != "__metadata__"}
    entries["ema.conv_in.weight"] = {**entries["ema.conv_in.weight"], "shape": [big // 4]}
    offset, laid_out = 0, {}
    for name, value in sorted(entries.items(), key=lambda item: item[1]["data_offsets"][0]):
        size = value["data_offsets"][1] - value["data_offsets"][0] if name != "ema.conv_in.weight" else big
        laid_out[name] = {**value, "data_offsets": [offset, offset + size]}
        offset += size
    files["3gb-weight-of-the-wrong-shape"] = (
        lambda path: sparse(path, {"__metadata__": meta, **laid_out}, offset),
        "EMA weight conv_in.weight has shape (750000000,), the config needs (24, 3, 3, 3)",
    )
    return files


def write_case(folder, name: str, content) -> "os.PathLike":
    path = folder / f"{name}.safetensors"
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path


def no_raw_huge_numbers(text: str) -> None:
    assert not re.search(r"\d{16,}", text), text


def test_bounded_configs_are_refused_in_one_line_before_anything_is_built(tmp_path, good_checkpoint, monkeypatch):
    import engine.unet

    devices = []
    real_init = engine.unet.UNet.__init__

    def watched_init(self, config):
        devices.append(torch.empty(0).device.type)  # the default device the network is built on
        real_init(self, config)

    monkeypatch.setattr(engine.unet.UNet, "__init__", watched_init)
    files = bounded_files(good_checkpoint)
    runner = CliRunner()
    for name, (content, words) in files.items():
        path = write_case(tmp_path, name, content)
        exported = tmp_path / f"{name}-export.safetensors"
        for attempt in (lambda: load_model(path), lambda: Trainer.resume(path, images()), lambda: export_checkpoint(path, exported)):
            with pytest.raises(CheckpointError) as info:
                attempt()
            one_line_naming(info.value, path, words)
            no_raw_huge_numbers(str(info.value))
        cats = tmp_path / f"{name}-cats"
        for args in (["sample", "--out", cats, "-n", 1, "--checkpoint", path], ["export", "--checkpoint", path, "--out", exported]):
            result = runner.invoke(app, [str(a) for a in args])
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (name, result.output, result.exception)
            assert result.output.count("error:") == 1 and "Traceback" not in result.output, result.output
            no_raw_huge_numbers(result.output)
        assert not exported.exists() and not any(cats.glob("*")) and not list(tmp_path.glob(".*.tmp"))
    assert set(devices) <= {"meta"}, devices  # only ever built where it costs nothing
    record("checkpoints", faults=len(files), bad_inputs=len(files), survived=5 * len(files),
           note=f"{len(files)} configs doctored in one bounded field × (load_model, Trainer.resume, export_checkpoint, `sample`, `export`): one line each, nothing built but on the meta device")


def test_headers_are_checked_before_the_body(tmp_path, good_checkpoint):
    files = header_files(good_checkpoint)
    for name, (content, words) in files.items():
        path = write_case(tmp_path, name, content)
        header_is_right = name in ("3gb-tensor-no-config", "3gb-weight-of-the-wrong-shape")  # read_checkpoint would read 3 GB
        for attempt in (load_model,) if header_is_right else (read_checkpoint, load_model):
            with pytest.raises(CheckpointError) as info:
                attempt(path)
            one_line_naming(info.value, path, words)
            no_raw_huge_numbers(str(info.value))
        path.unlink()
    record("checkpoints", faults=len(files), bad_inputs=len(files), survived=2 * len(files),
           note=f"{len(files)} files whose header lies (length, JSON, dtype, shape, offsets, 3 GB bodies): refused from the header")


def test_a_header_length_that_starts_like_a_pickle_is_read_as_safetensors(tmp_path, good_checkpoint):
    """The padded file behind bad_files' "pickle-like-length" cuts is a good checkpoint, so only the
    cut makes those bad. They catch what a user met: any file whose first byte was 0x80 was called
    "a pickle file", so a cut tiny checkpoint (whose header length began 80 1d) was misdiagnosed."""
    path = tmp_path / "padded.safetensors"
    path.write_bytes(with_header_length(good_checkpoint, 0x0280))
    assert path.read_bytes()[:2] == b"\x80\x02"
    expected = load_model(write_case(tmp_path, "good", good_checkpoint)).model.state_dict()
    loaded = load_model(path).model.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_refusals_take_under_a_second_and_a_few_mib(tmp_path, good_checkpoint):
    """Measured in a child process: wall time and the rise of its peak resident memory per file."""
    warm_up = write_case(tmp_path, "good", good_checkpoint)
    cases = {**bounded_files(good_checkpoint), **header_files(good_checkpoint)}
    paths = {str(write_case(tmp_path, name, content)): words for name, (content, words) in cases.items()}
    child = subprocess.run(
        [sys.executable, "-m", "tests.faults.load_child", str(warm_up), *paths],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout)
    assert len(results) == len(paths)
    for result in results:
        assert result["outcome"].startswith("refused: ") and paths[result["path"]] in result["outcome"], result
        assert result["seconds"] < 1.0, result
        assert result["peak_mib"] < 64, result
    slowest = max(r["seconds"] for r in results)
    most = max(r["peak_mib"] for r in results)
    record("checkpoints", faults=len(results), bad_inputs=len(results), survived=len(results),
           note=f"{len(results)} doctored configs and lying headers (3 GB bodies among them), in a child: slowest refusal {slowest * 1000:.0f} ms, peak memory rise ≤ {most:.1f} MiB")


def test_export_refuses_bad_counters_before_writing(tmp_path, good_checkpoint):
    runner = CliRunner()
    cases = {"step-1.5": ("step", "1.5"), "step-many": ("step", "many"), "step-negative": ("step", "-3"),
             "step-300-digits": ("step", "9" * 300), "images-float": ("images", "8.0"), "epoch-nan": ("epoch", "nan")}
    for name, (key, value) in cases.items():
        path = write_case(tmp_path, name, with_metadata(good_checkpoint, **{key: value}))
        out = tmp_path / f"{name}-out.safetensors"
        for attempt in (lambda: load_model(path), lambda: export_checkpoint(path, out)):
            with pytest.raises(CheckpointError) as info:
                attempt()
            one_line_naming(info.value, path, f"bad {key} in metadata")
            no_raw_huge_numbers(str(info.value))
        result = runner.invoke(app, ["export", "--checkpoint", str(path), "--out", str(out)])
        assert result.exit_code == 1 and f"bad {key} in metadata" in result.output and "unexpected" not in result.output, result.output
        assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    record("checkpoints", faults=len(cases), bad_inputs=len(cases), survived=3 * len(cases),
           note="non-integer step, images or epoch: `export` refuses before writing, no output file")
