"""The compute device: `auto` takes a CUDA GPU, then Apple's GPU (MPS), then the CPU."""

from __future__ import annotations

from ..errors import UserError

CHOICES = "auto, cpu, cuda, cuda:N or mps"
STEP_OVERHEAD = 256 * 2**20  # bytes; see `cpu_training_bytes`


def resolve_device(requested: str = "auto") -> str:
    """A torch device string for `requested`, checked against what this machine has."""
    import torch

    name = requested.strip().lower()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cpu":
        return name
    if name == "mps":
        if not mps:
            raise UserError("--device mps was asked for but this machine has no Apple GPU (MPS)")
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but no CUDA GPU is available")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPUs (cuda:0 …)")
        return name
    raise UserError(f"unknown device {requested!r}; use {CHOICES}")


def is_gpu(device: str) -> bool:
    return device.startswith("cuda") or device == "mps"


def available_memory() -> int | None:
    """Bytes this process could still allocate on the CPU: the kernel's MemAvailable, or less
    where a cgroup (a container) sets a lower limit; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            most = limit.read().strip()
            if most != "max":
                found.append(int(most) - int(current.read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def cpu_training_bytes(preset: str) -> tuple[int, int]:
    """(fixed, per image): the bytes a CPU training step of `preset` holds, estimated without
    allocating: the tensors saved for the backward pass (`engine.unet.saved_for_backward`; what
    they hold for every image, and the rest), five float32 copies of the parameters (weights,
    gradients, two AdamW moments, the EMA), and for the backward pass's own gradients and what
    the allocator keeps, a tenth more per image and `STEP_OVERHEAD`: real steps peaked 12–42 %
    above the first two alone (BENCHMARKS.md, "Memory of a CPU training step")."""
    import torch

    from engine.unet import PRESETS, UNet, count_parameters, saved_for_backward

    config = PRESETS[preset]
    one, two = saved_for_backward(config, 1), saved_for_backward(config, 2)
    with torch.device("meta"):
        parameters = count_parameters(UNet(config))
    per_image = two - one
    return one - per_image + 5 * 4 * parameters + STEP_OVERHEAD, per_image + per_image // 10


def check_cpu_batch_fits(preset: str, batch: int, processes: int = 1) -> None:
    """Refuse a CPU batch whose training step would not fit in the memory free now (the kernel
    would kill the run without a word), by `cpu_training_bytes` for each process."""
    from engine.limits import human_bytes

    available = available_memory()
    if available is None:
        return
    fixed, per_image = cpu_training_bytes(preset)
    needed = processes * (fixed + batch // processes * per_image)
    if needed > available:
        fits = max(0, (available // processes - fixed) // per_image) * processes
        hint = f"--batch-size {fits} would fit" if fits else "not even one image fits"
        raise UserError(
            f"--batch-size {batch} would need about {human_bytes(needed)} of memory to train {preset} on the CPU, "
            f"more than the {human_bytes(available)} free now; {hint}"
        )
