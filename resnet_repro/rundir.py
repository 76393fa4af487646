"""A run directory, `runs/<experiment>/<run>/`: everything one training run leaves behind.

    config.yaml          the resolved LightningCLI config (written by fit)
    metrics.csv          per-iteration train/loss, train/error, lr; val/ and test/ error at each validation
    checkpoints/last.ckpt  written atomically every `checkpoint.every_n_train_steps` iterations and at the end
    summary.json         status (running / finished / failed), final errors, params, steps, wall time, device,
                         git revision
    wandb/               the W&B run (offline when there is no key or WANDB_MODE=offline)

The run's name and its experiment (the W&B run name and group) are the directory's name and its parent's.
`fit` on a directory that holds a checkpoint resumes from it.
"""

import csv
import json
import netrc
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def check_checkpoint(path: Path) -> None:
    """Fail with one line, before anything is written, if a checkpoint cannot be read."""
    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:
        raise ValueError(f"checkpoint {path} is unreadable ({type(error).__name__}: {str(error).splitlines()[0]}); "
                         f"restore a good copy, or delete it to start the run over") from error


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):  # continue with the columns already in the file
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's writer deletes an existing metrics.csv here; a resumed run appends to it


class RunCSVLogger(CSVLogger):
    """metrics.csv directly in the run directory, appended to on resume (the reader keeps, for a step
    logged twice, its last row: the resumed run's)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def make_loggers(run_dir: Path, config: dict, use_wandb: bool) -> list[Logger]:
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    if use_wandb:
        wandb_logger = start_wandb(run_dir, config)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


def start_wandb(run_dir: Path, config: dict) -> Logger | None:
    """A W&B logger for the run, or None with one warning when W&B cannot be used: training never depends on
    it. Offline unless WANDB_MODE says otherwise or an API key is configured; resumes the run's W&B id."""
    try:
        from lightning.pytorch.loggers import WandbLogger

        offline = os.environ.get("WANDB_MODE", "online" if has_wandb_key() else "offline") in ("offline", "dryrun")
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        logger = WandbLogger(name=run_dir.name, group=run_dir.parent.name, project="resnet-repro", save_dir=str(run_dir),
                             offline=offline, id=run_id, resume="allow" if run_id else None, config=config)
        logger.experiment  # start W&B now, so that a failure to start shows here and not mid-run
        id_file.write_text(logger.version + "\n")
        return logger
    except Exception as error:
        print(f"warning: W&B is unusable ({type(error).__name__}: {error}); this run logs to {run_dir}/metrics.csv only",
              file=sys.stderr)
        return None


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunSummary(L.Callback):
    """Keeps `summary.json` up to date: running at the start, finished or failed at the end."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self.previous_wall_time = read_summary(self.run_dir).get("wall_time_s", 0.0)
        self.started = time.monotonic()

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra) -> None:
        if not trainer.is_global_zero:
            return
        device = trainer.strategy.root_device
        errors = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))}
        write_json_atomically(self.run_dir / "summary.json", {
            "status": status,
            "run": self.run_dir.name,
            "experiment": self.run_dir.parent.name,
            "model": pl_module.hparams.model,
            "data": type(trainer.datamodule).__name__,
            "seed": int(os.environ.get("PL_GLOBAL_SEED", 0)),  # set by LightningCLI's seed_everything
            "shortcut": pl_module.hparams.shortcut,
            "params": pl_module.num_params,
            "steps": trainer.global_step,
            "max_steps": trainer.max_steps,
            **errors,
            "wall_time_s": round(self.previous_wall_time + time.monotonic() - self.started, 1),
            "devices": trainer.world_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "git_revision": git_revision(),
            "command": self.command,
            **extra,
        })

    def on_fit_start(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "running")

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.write(trainer, pl_module, "failed", error=f"{type(exception).__name__}: {exception}")
