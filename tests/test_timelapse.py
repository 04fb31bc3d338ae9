"""The learning timelapse: frames drawn beside a training thread, kept with the run, and the store
that keeps them (engine.timelapse, kittyterm.jobs.timelapse)."""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import torch

from engine import events
from engine.generate import generate
from engine.threads import TrainingThread
from engine.timelapse import SEEDS, TimelapseThread, cpu_copy
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS
from kittyterm.jobs.timelapse import RunFrames, frame_name, read_frames
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)
from tests.test_threads import Recorder

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)
STEPS = 3  # sampler steps per frame: the tests need frames, not good ones


def make_trainer() -> Trainer:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Trainer(SMALL, images, TrainConfig(batch_size=2, lr=2e-3, warmup_steps=1))


def follow(training: TrainingThread, store, **options) -> tuple[TimelapseThread, Recorder]:
    timelapse = TimelapseThread(store, steps=STEPS, every_seconds=math.inf, niceness=0, **options)
    recorder = Recorder()
    timelapse.subscribe(recorder)
    timelapse.attach(training)
    return timelapse, recorder


def frames_of(recorder: Recorder) -> list[int]:
    return [event.step for event in recorder.of(events.TimelapseFrame)]


def wait_until(recorder: Recorder, predicate, timeout: float = 120.0) -> None:
    with recorder.condition:
        assert recorder.condition.wait_for(predicate, timeout), f"timed out waiting for {predicate}"


def test_frames_follow_training_through_pause_and_resume_and_stay_with_the_run(tmp_path):
    """Frames come at the start (step 0), every few steps, on a pause (even when the sampler was
    busy as training paused) and at the budget; they are kept as PNG strips that read back as
    the EMA of their step drew them.
    Seen to catch: the frame drawn with the live weights instead of the EMA; no frame on a pause
    that found the sampler busy."""
    trainer = make_trainer()
    training = TrainingThread(trainer, tmp_path / "checkpoint.safetensors", checkpoint_every_seconds=math.inf)
    steps = Recorder()
    training.subscribe(steps)  # before the timelapse: sees a pause before the timelapse waits on it
    store = GatedStore(tmp_path / "timelapse")
    timelapse, recorder = follow(training, store, every_steps=4)
    training.start()
    recorder.wait_for(events.TimelapseFrame, 2)
    store.gate.clear()
    store.entered.clear()
    assert store.entered.wait(60)  # a frame is being written, and held there …
    training.pause()
    steps.wait_for(events.TrainingPaused)  # … while training saves and pauses
    paused_at = steps.of(events.TrainingPaused)[0].step
    store.gate.set()
    wait_until(recorder, lambda: paused_at in frames_of(recorder))  # the run as it was left, drawn while it waits
    training.resume()
    wait_until(recorder, lambda: max(frames_of(recorder)) > paused_at)
    training.max_steps = trainer.step_count + 3
    training.join(60)
    timelapse.close(timeout=60)
    assert not training.is_alive() and not timelapse.is_alive()

    drawn = frames_of(recorder)
    final = trainer.step_count
    assert drawn[0] == 0 and final in drawn and drawn == sorted(set(drawn))
    assert any(step > paused_at for step in drawn)
    kept = read_frames(tmp_path / "timelapse")
    assert [frame.step for frame in kept] == drawn
    assert all(frame.images.shape == (len(SEEDS), 16, 16, 3) for frame in kept)
    with torch.no_grad():
        ema = generate(cpu_copy(trainer.ema.module), trainer.schedule, list(SEEDS), steps=STEPS).permute(0, 2, 3, 1).numpy()
        live = generate(cpu_copy(trainer.model), trainer.schedule, list(SEEDS), steps=STEPS).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(kept[-1].images, ema)
    assert np.abs(kept[-1].images.astype(int) - live).mean() > 1  # the live weights draw other cats


class GatedStore(RunFrames):
    """Keeps frames like `RunFrames`, but a write waits while the test holds the gate shut."""

    def __init__(self, folder, shut: bool = False) -> None:
        super().__init__(folder)
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not shut:
            self.gate.set()
        self.writes: list[int] = []

    def write(self, step, images):
        self.writes.append(step)
        self.entered.set()
        assert self.gate.wait(120)
        return super().write(step, images)


def test_a_frame_being_drawn_never_holds_training_up_and_is_never_queued(tmp_path, monkeypatch):
    """While a frame is in the works, training goes on; due frames are skipped, not queued: no
    copy of the EMA is taken meanwhile, and the next frame is of the EMA after the sampler was
    free again.
    Seen to catch: the frame drawn on the training thread (training stopped until it was
    written); a copy handed over at every step while the first frame was still being written."""
    import engine.timelapse

    copies = []
    monkeypatch.setattr(engine.timelapse, "cpu_copy", lambda model: copies.append(1) or cpu_copy(model))
    trainer = make_trainer()
    training = TrainingThread(trainer, tmp_path / "checkpoint.safetensors", checkpoint_every_seconds=math.inf)
    store = GatedStore(tmp_path / "timelapse", shut=True)
    timelapse, recorder = follow(training, store, every_steps=1)
    steps = Recorder()
    training.subscribe(steps)
    training.start()
    assert store.entered.wait(60)  # the first frame (step 0) is being written …
    steps.wait_for(events.TrainingStep, 12, timeout=120)  # … and training goes on meanwhile
    assert store.writes == [0] and len(copies) == 1 and not recorder.of(events.TimelapseFrame)
    held_at = trainer.step_count
    store.gate.set()
    recorder.wait_for(events.TimelapseFrame, 2)
    training.stop(timeout=60)
    timelapse.close(timeout=60)
    assert frames_of(recorder)[1] > held_at  # drawn after the release, from the EMA of then


def test_the_sampler_thread_computes_on_one_thread_and_leaves_the_others_their_default():
    """Seen to catch: a plain `torch.set_num_threads(1)` on the sampler thread, which every thread
    started after it (a new training thread, the preview's sampler) took as its own."""
    from engine.timelapse import use_one_thread_here

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the process default (the fixture made it 1)
    seen = {}

    def sampler() -> None:
        use_one_thread_here()
        seen["sampler"] = torch.get_num_threads()

    def later() -> None:
        seen["later"] = torch.get_num_threads()

    try:
        for target in (sampler, later):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join()
    finally:
        torch.set_num_threads(before)
    assert seen == {"sampler": 1, "later": 2}


def test_the_store_keeps_whole_frames_and_forgets_those_after_a_rollback(tmp_path):
    """A frame reads back as it was written; a rollback drops the frames after its step (their
    training was undone), also from what the timelapse thread counts as drawn.
    Seen to catch: frames after a rollback left on disk."""
    store = RunFrames(tmp_path / "timelapse")
    rng = np.random.default_rng(0)
    written = {step: rng.integers(0, 256, (8, 3, 16, 16), dtype=np.uint8) for step in (0, 50, 100, 150)}
    for step, images in written.items():
        assert store.write(step, images).name == frame_name(step)
    (tmp_path / "timelapse" / "step-000200.png").write_bytes(b"not a png")  # unreadable: left out
    frames = read_frames(tmp_path / "timelapse")
    assert [frame.step for frame in frames] == [0, 50, 100, 150]
    for frame in frames:
        assert np.array_equal(frame.images, written[frame.step].transpose(0, 2, 3, 1))

    timelapse = TimelapseThread(store)
    timelapse.on_training_event(events.RolledBack(step=60, from_step=160, lr=1e-4, reason="test"))
    assert sorted(store.steps()) == [0, 50]
    assert timelapse._done == {0, 50}
