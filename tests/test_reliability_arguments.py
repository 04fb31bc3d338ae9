"""Issue 5, item 6: every option of every command, given out-of-range or wrong-typed values,
gives a clear error and a non-zero exit status, never a traceback; edge values that are valid
work; a huge `-n` samples in chunks of at most `--batch-size` with constant memory.

The options are read from the Typer app itself, so a new command or option (`eval` included) is
covered without touching this file. Wrong types and ranges must be usage errors (exit 2);
values that parse but make no sense (missing files, a file where a folder is needed, a NUL
byte in a path, unknown devices, bad run names) must be one `error:` line (exit 1).
"""

from __future__ import annotations

import enum
import shutil
import typing
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
from PIL import Image
from typer.testing import CliRunner

from kittyterm.cli import app
from tests.faults import record
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

COMMANDS = typer.main.get_command(app).commands


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_tiny) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("args")
    data = root / "pics"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 50, 100, 150)).save(data / f"{i}.png")
    checkpoint = root / "model.safetensors"
    shutil.copyfile(trained_tiny.checkpoint, checkpoint)
    text = root / "file.txt"
    text.write_text("not a folder")
    empty = root / "empty"
    empty.mkdir()
    return {"root": root, "data": data, "checkpoint": checkpoint, "file": text, "empty": empty}


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit) or result.exception is None, (args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)
    return result


def annotation(param) -> type:
    kind = param.type_descriptor.annotation
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def wrong_values(param) -> list[str]:
    """Values of the wrong type or out of range for `param`: each must be a usage error."""
    kind = annotation(param)
    values: list[str] = []
    if kind is int:
        values += ["abc", "1.5", "", "7cats", "1e3"]
    elif kind is float:
        values += ["abc", "", "1,5", "nan", "-inf"]
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        values += ["bogus", "", next(iter(kind)).value.upper() + "x"]
    if kind in (int, float):
        if param.min is not None:
            values.append(str(param.min - 1 if kind is int else param.min / 2 if param.min > 0 else param.min - 1))
            values.append("-99999999999999999999999")
        if param.max is not None:
            values.append(str(param.max + 1 if kind is int else param.max * 2))
            values.append("99999999999999999999999")
    return values


def option_cases():
    for name, command in COMMANDS.items():
        for param in command.params:
            if getattr(param, "is_flag", False) or not param.opts:
                continue
            for value in wrong_values(param):
                yield pytest.param(name, param.opts[0], value, id=f"{name} {param.opts[0]}={value!r}")


# just enough valid arguments that only the option under test is wrong (the positional ones first)
REQUIRED = {
    "train": ["--data", "{data}"],
    "sample": ["--out", "{root}/out"],
    "vary": ["{data}/0.png", "--out", "{root}/out"],
    "morph": ["1", "2", "--out", "{root}/out"],
    "export": ["--checkpoint", "{checkpoint}", "--out", "{root}/export.safetensors"],
    "eval": ["--reference", "{data}"],
}


def fill(args, files) -> list[str]:
    return [str(a).format(**{k: str(v) for k, v in files.items()}) for a in args]


def arguments(command: str) -> list[str]:
    """The names of a command's positional arguments, in order."""
    return [p.name for p in COMMANDS[command].params if p.param_type_name == "argument"]


@pytest.mark.parametrize("command,option,value", list(option_cases()))
def test_wrong_types_and_ranges_are_usage_errors(command, option, value, files):
    args = [command, *fill(REQUIRED.get(command, []), files)]
    if option in arguments(command):  # a positional argument: the wrong value in its place
        args[1 + arguments(command).index(option)] = value
        result = invoke(*args)
        words = ("Invalid value", "No such option")  # a negative number reads as an option
        assert result.exit_code == 2 and any(w in result.output for w in words), (result.exit_code, result.output)
        return
    args = [a for i, a in enumerate(args) if not (a == option or (i and args[i - 1] == option))]
    result = invoke(*args, option, value)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert option in result.output or "Invalid value" in result.output or "requires an argument" in result.output, result.output


def test_every_command_and_option_was_tried():
    cases = list(option_cases())
    typed = {(c, o) for c, o, _ in (p.values for p in cases)}
    for name, command in COMMANDS.items():
        for param in command.params:
            if annotation(param) in (int, float) or (isinstance(annotation(param), type) and issubclass(annotation(param), enum.Enum)):
                assert (name, param.opts[0]) in typed
    record("arguments", faults=len(cases), bad_inputs=len(cases), survived=len(cases),
           note=f"wrong types and ranges for every numeric/choice option of {', '.join(COMMANDS)}: all exit 2, no traceback")


SEMANTIC = [
    # (arguments, words in the error) — values that parse but cannot work: exit 1, one line
    (["train", "--data", "{root}/missing"], "does not exist"),
    (["train", "--data", "{file}"], "not a folder"),
    (["train", "--data", "a\0b"], "does not exist"),
    (["train", "--data", "{empty}"], "no images"),
    (["train", "--data", "{data}", "--run", ""], "bad run name"),
    (["train", "--data", "{data}", "--run", "../escape"], "bad run name"),
    (["train", "--data", "{data}", "--run", "a/b"], "bad run name"),
    (["train", "--data", "{data}", "--run", "nul\0byte"], "bad run name"),
    (["train", "--data", "{data}", "--run", "tab\there"], "bad run name"),
    (["train", "--data", "{data}", "--run", "-x"], "bad run name '-x' (it would read as an option)"),
    (["train", "--data", "{data}", "--device", "gpu"], "unknown device"),
    (["train", "--data", "{data}", "--device", "tpu:0"], "unknown device"),
    (["train", "--data", "{data}", "--device", "cuda:banana"], "cuda"),
    (["train", "--data", "{data}", "--preset", "tiny", "--batch-size", "3", "--steps", "1", "--device", "cpu", "--run", "odd-batch"], None),  # valid
    (["sample", "--out", "{file}"], "not a folder"),
    (["sample", "--out", "{file}/sub"], "cannot create output folder"),
    (["sample", "--out", "o\0ut"], "cannot create output folder"),
    (["sample", "--out", "{root}/o", "--checkpoint", "{root}/missing.safetensors"], "no model"),
    (["sample", "--out", "{root}/o", "--checkpoint", "{root}"], "is a folder"),
    (["sample", "--out", "{root}/o", "--checkpoint", "{file}"], "not a readable safetensors"),
    (["sample", "--out", "{root}/o", "--checkpoint", "{checkpoint}", "--device", "quantum"], "unknown device"),
    (["sample", "--out", "{root}/o", "--x0"], "add --gif"),
    (["vary", "{root}/missing.png", "--out", "{root}/o"], "no such file"),
    (["vary", "{file}", "--out", "{root}/o"], "not a recognised image"),
    (["vary", "{root}", "--out", "{root}/o"], "is a directory"),
    (["vary", "{data}/0.png", "--out", "{file}"], "not a folder"),
    (["vary", "{data}/0.png", "--out", "{root}/o", "--checkpoint", "{root}/missing.safetensors"], "no model"),
    (["morph", "1", "2", "--out", "{file}"], "not a folder"),
    (["morph", "1", "2", "--out", "o\0ut"], "cannot create output folder"),
    (["morph", "1", "2", "--out", "{root}/o", "--checkpoint", "{file}"], "not a readable safetensors"),
    (["morph", "1", "2", "--out", "{root}/o", "--device", "quantum"], "unknown device"),
    (["export", "--checkpoint", "{root}/missing.safetensors", "--out", "{root}/e1.safetensors"], "no such checkpoint"),
    (["export", "--checkpoint", "{checkpoint}", "--out", "{file}"], "exists"),
    (["export", "--checkpoint", "{checkpoint}", "--out", "{root}"], "is a folder; --out names the file to write"),
    (["export", "--checkpoint", "{checkpoint}", "--out", "{file}/sub.safetensors"], "is not a folder"),
    (["export", "--checkpoint", "{checkpoint}", "--out", "{root}/no-such-folder/e3.safetensors"], "no-such-folder does not exist"),
    (["export", "--checkpoint", "{checkpoint}", "--out", "x\0y.safetensors"], "null byte"),
    (["export", "--checkpoint", "{file}", "--out", "{root}/e2.safetensors"], "not a readable safetensors"),
    (["eval", "--reference", "{root}/missing"], "does not exist"),
    (["eval", "--reference", "{data}", "--images", "{root}/missing"], "does not exist"),
    (["eval", "--reference", "{data}", "--images", "{data}", "--checkpoint", "{checkpoint}"], "not both"),
    (["timelapse", "--out", "{root}/t.gif"], "no training run yet"),
    (["timelapse", "nosuchrun", "--out", "{root}/t.gif"], "no run 'nosuchrun'"),
    (["timelapse", "{empty}", "--out", "{root}/t.gif"], "no timelapse frames"),
    (["timelapse", "{empty}", "--out", "{file}"], "does not end in .gif"),
    (["timelapse", "{empty}", "--out", "{file}/t.gif"], "is not a folder"),
    (["--data", "{root}/missing"], "does not exist"),
    (["--data", "{file}"], "is not a folder"),
    (["train", "--data", "{data}", "--init", "{root}"], "is a folder, not a weights file"),
    (["serve", "--data", "{root}/missing"], "does not exist"),
    (["--data", "{empty}"], "no images in"),  # refused before the app opens and remembers it
    (["serve", "--data", "{empty}"], "no images in"),
]


@pytest.mark.parametrize("args,words", SEMANTIC, ids=[" ".join(a) for a, _ in SEMANTIC])
def test_values_that_cannot_work_are_one_clear_line(args, words, files):
    if args[0] in COMMANDS or args[0].startswith("--"):
        pass
    else:
        pytest.skip(f"no {args[0]} command in this version")
    args = fill(args, files)
    if args[0] == "train":  # should a bad value slip through, train one tiny step, not for ever
        for option, value in (("--preset", "tiny"), ("--steps", "1"), ("--device", "cpu"), ("--batch-size", "2")):
            if option not in args:
                args += [option, value]
    result = invoke(*args)
    if words is None:
        assert result.exit_code == 0, result.output
        return
    if any("\0" in a for a in args) and result.exit_code == 2:  # Typer itself refuses a NUL in a path
        assert "null byte" in result.output, result.output
        return
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines and words.lower() in result.output.lower(), result.output
    assert "" not in result.output.splitlines(), repr(result.output)  # no blank line before or around it


def test_semantic_cases_cover_every_command_with_words_to_find():
    covered = {args[0] for args, _ in SEMANTIC}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered
    assert all(words is None or words.strip() for _, words in SEMANTIC)  # an empty expectation matches any text
    assert sum(words is None for _, words in SEMANTIC) == 1  # the one valid case, counted apart below
    record("arguments", faults=len(SEMANTIC), bad_inputs=len(SEMANTIC) - 1, survived=len(SEMANTIC),
           note="missing/non-writable/wrong-kind paths, NUL bytes, bad run names and devices: one `error:` line, exit 1")


def test_missing_required_options_and_unknown_ones(files):
    cases = [["train"], ["sample"], ["export"], ["export", "--checkpoint", "x"], ["sample", "--out"], ["train", "--bogus"], ["nonsense"], ["sample", "-n"],
             ["vary", "--out", "x"], ["morph", "1", "--out", "x"], ["timelapse"]]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
    record("arguments", faults=len(cases), bad_inputs=len(cases), survived=len(cases), note="missing required options, unknown options and commands: exit 2")


def test_sample_n_zero_and_edge_values(files, trained_tiny):
    out = files["root"] / "edge"
    assert invoke("sample", "--out", out, "-n", "0").exit_code == 2
    result = invoke("sample", "--out", out, "-n", 1, "--steps", 2, "--sampler", "ddim", "--seed", 2**62, "--batch-size", 4096, "--checkpoint", files["checkpoint"], "--device", "cpu")
    assert result.exit_code == 0, result.output  # the biggest seed and batch work
    cat = np.asarray(Image.open(out / f"cat-{2**62}.png"))
    assert trained_tiny.distance_from_fresh(cat[None], [2**62], "ddim", 2) > 20  # a cat of the trained weights
    record("arguments", faults=2, bad_inputs=1, survived=2, note="-n 0 refused; the largest --seed and --batch-size work")


def test_train_edge_values_work(files, kittyterm_home):
    result = invoke("train", "--data", files["data"], "--preset", "tiny", "--steps", 1, "--minutes", "inf", "--checkpoint-minutes", "inf",
                    "--seed", 2**62, "--batch-size", 1, "--lr", 1, "--device", "cpu", "--run", "edge-ünïcode", "--checkpoint-every", 1)
    assert result.exit_code == 0, result.output
    assert (kittyterm_home / "data/runs/edge-ünïcode/checkpoint.safetensors").exists()
    record("arguments", faults=1, survived=1, note="train with the largest seed, batch 1, lr 1, unlimited minutes, a unicode run name: works")


@pytest.mark.parametrize("grid", [False, True])
def test_huge_n_samples_in_chunks_with_constant_memory(files, monkeypatch, grid):
    """-n 100000 with a stand-in sampler: chunks never exceed --batch-size and no chunk outlives the next."""
    import engine.generate
    import kittyterm.cats

    chunks: list[int] = []
    alive_max = [0]
    handed_out: list[weakref.ref] = []

    def fake_generate(model, schedule, seeds, sampler="dpm++", steps=None, device="cpu", callback=None, grid=None):
        chunks.append(len(seeds))
        alive_max[0] = max(alive_max[0], sum(ref() is not None for ref in handed_out))
        if callback is not None:
            callback(0, None, None)
        images = torch.zeros((len(seeds), 3, 16, 16), dtype=torch.uint8)
        handed_out.append(weakref.ref(images))
        return images

    saved = [0]
    monkeypatch.setattr(engine.generate, "generate", fake_generate)
    monkeypatch.setattr(kittyterm.cats, "save_cat", lambda folder, image, info, stem=None: saved.__setitem__(0, saved[0] + 1) or Path(folder) / "x.png")
    out = files["root"] / f"huge-{grid}"
    args = ["sample", "--out", out, "-n", 100_000, "--batch-size", 64, "--steps", 1, "--checkpoint", files["checkpoint"], "--device", "cpu"]
    result = invoke(*args, *(["--grid"] if grid else []))
    assert result.exit_code == 0, result.output
    assert sum(chunks) == 100_000 == saved[0] and max(chunks) <= 64 and len(chunks) == 1563
    assert alive_max[0] <= 1, f"{alive_max[0]} earlier chunks were still in memory"
    if grid:
        sheet = Image.open(next(out.glob("grid-*.png")))
        assert sheet.size[0] < 40 * 18 + 10  # 1024 cats at most on the sheet, not 100 000
        assert "the first 1024 cats" in result.output
    record("arguments", faults=1, survived=1, note=f"-n 100000{' --grid' if grid else ''}: 1563 chunks of ≤ 64, at most one chunk alive")
