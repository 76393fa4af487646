"""Callbacks for tests: a real SIGKILL of the training process at a given iteration, or a pause there."""

import json
import os
import signal
import time

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL at the start of iteration `step + 1`: of every rank, or of rank `rank` alone, which first writes the
    time it dies to `<run_dir>/killed` (so that a test can time how long the other ranks outlive it)."""

    def __init__(self, step: int, rank: int | None = None):
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            if self.rank is not None:
                with open(f"{trainer.default_root_dir}/killed", "w") as f:
                    f.write(f"{time.time()}\n")
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(L.Callback):
    """Holds the run at a given iteration (after its checkpoints up to there), saying so in `<run_dir>/paused`; with
    `once`, not in a run directory that has been paused before (the same command, run again, goes on)."""

    def __init__(self, step: int, once: bool = False):
        self.step = step
        self.once = once

    def setup(self, trainer, pl_module, stage) -> None:
        # decided before training, so that every rank decides alike whichever writes `paused` first
        self.armed = not (self.once and os.path.exists(f"{trainer.default_root_dir}/paused"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.armed:
            with open(f"{trainer.default_root_dir}/paused", "w") as f:
                f.write(f"{os.getpid()}\n")
            while not trainer.received_sigterm:  # Lightning's SIGTERM handler sets it; it then stops the run
                time.sleep(0.05)


class SleepAfterStep(L.Callback):
    """Makes every training iteration last at least `seconds`: a known ceiling for a measured rate."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class RecordProgress(L.Callback):
    """Appends what `run`'s live view would read of the run (rundir.run_progress) at the start of every iteration to
    `<run_dir>/progress.jsonl`."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from resnet_repro.rundir import run_progress

        with open(f"{trainer.default_root_dir}/progress.jsonl", "a") as f:
            f.write(json.dumps([trainer.global_step, run_progress(trainer.default_root_dir)]) + "\n")


class KillAtTest(L.Callback):
    """SIGKILL at the start of the run's first evaluation under a test protocol (after fit: its final evaluation),
    once per run directory (`<run_dir>/killed-at-test` says it was done): the same command run again goes on."""

    def on_test_start(self, trainer, pl_module) -> None:
        marker = f"{trainer.default_root_dir}/killed-at-test"
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
