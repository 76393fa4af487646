"""Callbacks for tests: a real SIGKILL of the training process at a given iteration, or a pause there."""

import os
import signal
import time

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(L.Callback):
    """Holds the run at a given iteration (after its checkpoints up to there), saying so in `<run_dir>/paused`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
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
