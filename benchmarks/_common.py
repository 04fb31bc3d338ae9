"""Helpers shared by the benchmark scripts: environment line, markdown tables, timing, peak
memory, FLOP counting, GPU peak throughput and the training speed-feature toggles."""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere, installed or not
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# Dense bf16 tensor-core peak in TFLOP/s (vendor datasheets), matched against
# torch.cuda.get_device_name(); the first matching entry wins, so specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5, reported as "NVIDIA H100 80GB HBM3"
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()}, {os.cpu_count()} cores"


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def header(title: str, device: str, command: str | None = None) -> None:
    """The lines BENCHMARKS.md keeps with every table: what, how, where, when."""
    command = command or "python " + shlex.join([Path(sys.argv[0]).as_posix().split(str(REPO.as_posix()) + "/")[-1], *sys.argv[1:]])
    print(f"### {title}")
    print()
    print(f"- command: `{command}`")
    print(f"- hardware: {device_name(device)}; torch threads {torch.get_num_threads()}")
    print(f"- torch {torch.__version__}, python {platform.python_version()}; cuda {torch.version.cuda or '-'}")
    print(f"- date {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; load average {load_average()} (1/5/15 min)")
    print()


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every speed benchmark takes: --device, --threads and --quick."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help=f"CI smoke run: {quick_help}")
    return parser


def parse_speed_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, bool]:
    """Parse, apply --threads and check --device; returns (args, whether the device is CUDA)."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is available")
    return args, cuda


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def timed(fn, device, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls of fn(), synchronising the GPU around each."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - began)
    return best


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory a block adds: CUDA `max_memory_allocated` above what was allocated at the
    start, or on the CPU the peak resident set (VmHWM, reset through /proc/self/clear_refs)
    above the resident set at the start. `.mib` is None where it cannot be measured."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.mib: float | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()  # hand memory freed by earlier runs back, or this run would reuse it unseen
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self._resettable = True
            except OSError:
                self._resettable = False
            self._base = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            peak = _status_kib("VmHWM")
            if self._resettable and peak is not None and self._base is not None:
                self.mib = (peak - self._base) / 1024

    def text(self) -> str:
        return "-" if self.mib is None else f"{self.mib:,.0f} MiB"


def count_flops(fn) -> int:
    """FLOPs of everything fn() runs, by torch.utils.flop_counter (matmuls, convolutions and
    attention, forward and backward; elementwise ops and normalisations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def model_flops_per_image(model: torch.nn.Module, image_size: int, call=None, batch: int = 2) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image of `model`, counted on the CPU in fp32."""
    call = call or (lambda m, x, t: m(x, t))
    x = torch.randn(batch, 3, image_size, image_size)
    t = torch.randint(0, 1000, (batch,))
    model = model.float().cpu()
    forward = count_flops(lambda: call(model, x, t)) / batch

    def train_step() -> None:
        call(model, x, t).float().pow(2).mean().backward()

    train = count_flops(train_step) / batch
    model.zero_grad(set_to_none=True)
    return forward, train


# ------------------------------------------------------------------- training speed features

FEATURES = ("bf16", "channels_last", "compile", "cuda_graph")


def trainer_defaults(device: str | torch.device) -> dict[str, bool]:
    """What `engine.trainer.Trainer` does on this device without being asked (it always uses
    the fused AdamW kernel and a step without host round trips)."""
    cuda = torch.device(device).type == "cuda"
    return {"bf16": cuda, "channels_last": cuda, "compile": False, "cuda_graph": False}


def feature_variants(device: str, include_compile: bool = True) -> list[tuple[str, dict[str, bool]]]:
    """The device default, each feature flipped alone (CUDA graphs only on CUDA), then all on
    and all off (no repeats)."""
    default = trainer_defaults(device)
    cuda = torch.device(device).type == "cuda"
    names = [f for f in FEATURES if (include_compile or f != "compile") and (cuda or f != "cuda_graph")]
    variants = [("default", dict(default))]
    for name in names:
        flipped = dict(default, **{name: not default[name]})
        variants.append((("+" if flipped[name] else "−") + name, flipped))
    variants.append(("all on", {f: (f in names) for f in FEATURES}))
    variants.append(("all off", {f: False for f in FEATURES}))
    seen, unique = set(), []
    for label, features in variants:
        key = tuple(sorted(features.items()))
        if key not in seen:
            seen.add(key)
            unique.append((label, features))
    return unique


def apply_features(trainer, features: dict[str, bool]) -> None:
    """Benchmark-local switches on a built Trainer (the engine's defaults stay as they are): bf16
    autocast and channels-last weights and inputs. `compile` and `cuda_graph` are the
    trainer's own `TrainConfig` flags, set when it is built. Leaves the trainer untouched when
    the switches are its defaults."""
    defaults = trainer_defaults(trainer.device)
    if all(features[f] == defaults[f] for f in ("bf16", "channels_last")):
        return
    fmt = torch.channels_last if features["channels_last"] else torch.contiguous_format
    trainer.model.to(memory_format=fmt)
    trainer.autocast = torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=features["bf16"], cache_enabled=not features["cuda_graph"])
    model = trainer.model

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=fmt), t)

    trainer._eager_forward = forward  # where a failing torch.compile falls back to
    trainer.forward = torch.compile(forward) if features["compile"] else forward


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


# ------------------------------------------------------------------- held-out cats

HELD_OUT_CATS = 2000  # images of the data folder that recipe training never sees
SPLIT_SEED = 2026


def held_out_split(folder: Path, held_out: int = HELD_OUT_CATS, seed: int = SPLIT_SEED) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of an image folder: a fixed random split of its sorted
    listing, the same on every machine, so every comparison scores on images no run trained on."""
    import numpy as np

    from engine.files import scan_images

    files = scan_images(Path(folder))[0]
    if len(files) <= held_out:
        raise SystemExit(f"{folder} holds {len(files)} images, not more than the {held_out} to hold out")
    order = np.random.default_rng(seed).permutation(len(files))
    held = sorted(files[i] for i in order[:held_out])
    train = sorted(files[i] for i in order[held_out:])
    return train, held


def random_image_folder(folder: Path, count: int, size: int) -> Path:
    """`count` PNGs of uniform random pixels, `size` px square: the data of the --quick smoke runs."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def link_folder(paths: list[Path], folder: Path) -> Path:
    """A folder of symbolic links to `paths` (so the images themselves are never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        (folder / f"{i:05d}{path.suffix}").symlink_to(path.resolve())
    return folder
