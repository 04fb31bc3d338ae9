import dataclasses
import threading
import time

import torch

from engine import events
from engine.checkpoint import read_checkpoint
from engine.threads import SamplingThread, TrainingThread
from engine.trainer import TrainConfig, Trainer
from engine.unet import PRESETS, UNet
from tests.faults.fixtures import single_torch_thread  # noqa: F401  (fixture)

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16)


def make_trainer():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    return Trainer(SMALL, images, TrainConfig(batch_size=2))


class Recorder:
    def __init__(self):
        self.events = []
        self.condition = threading.Condition()

    def __call__(self, event):
        with self.condition:
            self.events.append(event)
            self.condition.notify_all()

    def wait_for(self, kind, count=1, timeout=30.0):
        with self.condition:
            ok = self.condition.wait_for(lambda: sum(isinstance(e, kind) for e in self.events) >= count, timeout)
        assert ok, f"no {kind.__name__} within {timeout} s"

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def test_training_thread_runs_to_its_step_budget_and_saves(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    thread = TrainingThread(make_trainer(), path, max_steps=5)
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    steps = recorder.of(events.TrainingStep)
    assert [e.step for e in steps] == [1, 2, 3, 4, 5]
    assert all(e.images_per_second > 0 and e.loss > 0 for e in steps)
    assert isinstance(recorder.events[0], events.TrainingStarted)
    assert recorder.of(events.TrainingFinished)[0].reason == "budget"
    assert read_checkpoint(path)[1]["step"] == "5"


def test_training_thread_stops_at_its_time_budget_not_counting_pauses(tmp_path):
    """Seen to catch: `max_seconds` ignored (the thread trained on until stopped)."""
    path = tmp_path / "ckpt.safetensors"
    thread = TrainingThread(make_trainer(), path, max_seconds=0.5, start_paused=True)
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    recorder.wait_for(events.TrainingPaused)
    time.sleep(0.6)  # longer than the budget, but paused: it does not count
    thread.resume()
    thread.join(60)
    assert not thread.is_alive()
    steps = recorder.of(events.TrainingStep)
    # it stops at the first step boundary after 0.5 s of training
    assert steps and all(step.elapsed < 0.5 for step in steps[:-1]) and steps[-1].elapsed >= 0.5
    finished = recorder.of(events.TrainingFinished)[0]
    assert finished.reason == "budget" and finished.step == steps[-1].step
    assert read_checkpoint(path)[1]["step"] == str(finished.step)


def test_pause_saves_and_blocks_resume_continues_stop_is_prompt(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    thread = TrainingThread(make_trainer(), path)
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    recorder.wait_for(events.TrainingStep, 2)
    thread.pause()
    recorder.wait_for(events.TrainingPaused)
    paused_at = recorder.of(events.TrainingPaused)[0].step
    assert read_checkpoint(path)[1]["step"] == str(paused_at)
    time.sleep(0.3)
    assert max(e.step for e in recorder.of(events.TrainingStep)) == paused_at  # nothing runs while paused
    thread.resume()
    recorder.wait_for(events.TrainingResumed)
    recorder.wait_for(events.TrainingStep, paused_at + 2)
    began = time.monotonic()
    thread.stop(timeout=10)
    assert not thread.is_alive() and time.monotonic() - began < 5
    final = recorder.of(events.TrainingFinished)[0]
    assert final.reason == "stopped"
    assert read_checkpoint(path)[1]["step"] == str(final.step)


def test_stop_while_paused_exits(tmp_path):
    thread = TrainingThread(make_trainer(), tmp_path / "c.safetensors", start_paused=True)
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    recorder.wait_for(events.TrainingPaused)
    thread.stop(timeout=5)
    assert not thread.is_alive()


def test_failed_checkpoint_write_is_reported_and_training_continues(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    thread = TrainingThread(make_trainer(), blocker / "c.safetensors", max_steps=4, checkpoint_every_steps=2)
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    thread.join(60)
    assert recorder.of(events.EngineError) and "checkpoint not saved" in recorder.of(events.EngineError)[0].message
    assert recorder.of(events.TrainingFinished)[0].step == 4


def test_training_error_is_an_event_not_a_crash(tmp_path):
    trainer = make_trainer()

    def broken(*_):
        raise RuntimeError("simulated failure\nwith detail")

    trainer.forward = broken
    thread = TrainingThread(trainer, tmp_path / "c.safetensors")
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    thread.join(30)
    assert recorder.of(events.EngineError)[0].message == "RuntimeError: simulated failure"
    assert recorder.of(events.TrainingFinished)[0].reason == "error"


def test_sampling_thread_emits_every_step_then_images(trained_tiny):
    from engine.checkpoint import load_model
    from engine.generate import generate

    loaded = load_model(trained_tiny.weights)
    thread = SamplingThread(loaded.model, loaded.schedule, [1, 2, 3], "ddim", 8, model_sha256="abc")
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    thread.join(30)
    steps = recorder.of(events.SamplingStep)
    assert [e.step for e in steps] == list(range(8)) and all(e.total == 8 for e in steps)
    assert steps[0].x_t.shape == (3, 3, 32, 32) and steps[0].x0.abs().max() <= 1
    done = recorder.of(events.SamplingFinished)[0]
    assert done.images.dtype == torch.uint8 and done.images.shape == (3, 3, 32, 32)
    assert done.seeds == (1, 2, 3) and done.model_sha256 == "abc"
    assert torch.equal(done.images, generate(loaded.model, loaded.schedule, [1, 2, 3], "ddim", 8))
    assert trained_tiny.distance_from_fresh(done.images.permute(0, 2, 3, 1).numpy(), [1, 2, 3], "ddim", 8) > 20


def test_sampling_can_be_cancelled():
    from engine.schedules import NoiseSchedule

    thread = SamplingThread(UNet(SMALL).eval(), NoiseSchedule(), [1], "ddpm", 1000)
    recorder = Recorder()
    thread.subscribe(recorder)
    thread.start()
    recorder.wait_for(events.SamplingStep, 3)
    thread.cancel(timeout=10)
    assert not thread.is_alive()
    assert recorder.of(events.SamplingCancelled) and not recorder.of(events.SamplingFinished)
