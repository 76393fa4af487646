"""summary.json, kept whole and current by a callback through a fit and its evaluations."""

import os
import subprocess
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .files import write_json_atomically
from .hardware import device_name
from .models import get_spec
from .rundir import EVALUATION_PREFIXES, read_summary


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


PROGRESS_EVERY_S = 10  # how often summary.json's iteration is renewed while training: the live view of `run` reads it


class RunSummary(L.Callback):
    """Keeps `summary.json` whole and current: written at the start, at every validation and checkpoint, and at
    the end of a fit (running / evaluating / failed / interrupted; RunCLI.after_fit writes finished once the final
    weights are tested under the run's protocols), and after every evaluation. What a write does not renew (the
    last errors of an earlier session, the history of accepted config changes) is kept."""

    def __init__(self, run_dir: Path, command: str, config_change: dict | None = None, budget: str | None = None):
        self.run_dir, self.command, self.budget = Path(run_dir), command, budget
        self.previous_wall_time = read_summary(self.run_dir).get("wall_time_s", 0.0)
        self.config_change = config_change  # {"step": ..., "changed": {key: [old, new]}} accepted on resume
        self.git_revision = git_revision()
        self.started = time.monotonic()
        # training rate: the images and seconds of this session's iterations, but those during which a validation or
        # a checkpoint ran (by all ranks; a checkpoint is written after our end-of-batch hook, a validation after it)
        self.images_timed, self.seconds_timed = 0, 0.0
        self.batch_started_at = self.batch_ended_at = None
        self.paused = False
        self.written_at = time.monotonic()

    def throughput(self) -> dict:
        """train_images_per_s: the images of this session's iterations over their time, each iteration timed from the
        end of the one before (its first from its start), those during which a validation or a checkpoint ran left
        out: the rate of training alone; none before an iteration has been timed."""
        if not self.seconds_timed:
            return {}
        return {"train_images_per_s": round(self.images_timed / self.seconds_timed, 1)}

    def update(self, trainer: L.Trainer, fields: dict, drop: tuple[str, ...] = ()) -> None:
        if not trainer.is_global_zero:
            return
        summary = {k: v for k, v in read_summary(self.run_dir).items() if k not in drop}
        errors = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(EVALUATION_PREFIXES)}
        write_json_atomically(self.run_dir / "summary.json", {**summary, **fields, **errors})
        self.written_at = time.monotonic()

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra) -> None:
        if not trainer.is_global_zero:
            return
        device = trainer.strategy.root_device
        self.update(trainer, {
            "status": status,
            "run": self.run_dir.name,
            "experiment": self.run_dir.parent.name,
            "model": pl_module.hparams.model,
            "data": type(trainer.datamodule).__name__,
            "dataset": trainer.datamodule.dataset,  # "CIFAR-10 (JPEG copy)": the report labels the run's numbers by it
            "seed": int(os.environ.get("PL_GLOBAL_SEED", 0)),  # set by LightningCLI's seed_everything
            **get_spec(pl_module.hparams.model).columns(pl_module.hparams.shortcut),  # family, depth, shortcut
            "params": pl_module.num_params,
            "steps": trainer.global_step,
            "max_steps": trainer.max_steps,
            "budget": self.budget,  # None: the paper's full schedule; "1/32": its iteration counts scaled by 1/32
            "wall_time_s": round(self.previous_wall_time + time.monotonic() - self.started, 1),
            "devices": trainer.world_size,
            "device": device_name(device),
            "git_revision": self.git_revision,
            "command": self.command,
            **self.throughput(),
            **extra,
        }, drop=("error",))  # the error of an earlier session is history once the run goes on

    def on_fit_start(self, trainer, pl_module) -> None:
        changes = read_summary(self.run_dir).get("config_changes", [])
        accepted = {"config_changes": [*changes, self.config_change]} if self.config_change else {}
        self.write(trainer, pl_module, "running", **accepted)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch_ended_at is None:
            self.batch_started_at = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not self.paused:
            self.seconds_timed += now - (self.batch_ended_at or self.batch_started_at)
            self.images_timed += len(batch[1]) * trainer.world_size  # each rank's share of the global batch
        self.batch_ended_at, self.paused = now, False
        # rank 0's clock alone decides (only rank 0 writes it, and no rank waits for another)
        if trainer.is_global_zero and now - self.written_at >= PROGRESS_EVERY_S:
            self.write(trainer, pl_module, "running")

    def on_validation_start(self, trainer, pl_module) -> None:
        self.paused = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.write(trainer, pl_module, "running")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.paused = True
        self.write(trainer, pl_module, "running")

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "evaluating")

    def on_test_end(self, trainer, pl_module) -> None:
        self.update(trainer, {})  # the evaluation's errors; the status stays what it was

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return  # a failed evaluation leaves the run's summary alone
        stopped = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        self.write(trainer, pl_module, "interrupted" if stopped else "failed",
                   error=f"{type(exception).__name__}: {exception}")


