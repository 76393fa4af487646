"""A run directory, `runs/<experiment>/<run>/`: everything one training run leaves behind.

    config.yaml          the resolved LightningCLI config (written by fit)
    metrics.csv          per-iteration train/loss, train/error, lr; val/ and test/ error at each validation;
                         test/<protocol>/ error of each evaluation after training
    checkpoints/last.ckpt  written atomically every `checkpoint.every_n_train_steps` iterations and at the end
    summary.json         status (running / finished / failed / interrupted), latest errors, params, steps, wall
                         time, training images/s of the latest session, device, git revision
    wandb/               the W&B run (offline when there is no key or WANDB_MODE=offline); its config has flat
                         columns to group by (dataset, family, depth, shortcut, seed, experiment, budget)
    fit.log              the output of its fit and test commands, when `run --parallel` started them
    .lock                held by the one process that writes the run (fit, validate, test)

The run's name and its experiment (the W&B run name and group) are the directory's name and its parent's.
`fit` on a directory that holds a checkpoint resumes from it.
"""

import csv
import fcntl
import inspect
import netrc
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .files import read_json, write_atomically, write_json_atomically
from .models import get_spec

EVALUATION_PREFIXES = ("val/", "test/")  # the keys of the errors an evaluation logs (test/<protocol>/ included)


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint of this project, loaded as data: `weights_only=True` unpickles tensors and plain containers
    only, so a planted file cannot run code. Anything else fails with one line, before anything is written."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path} is unreadable or not plain data ({type(error).__name__}: {reason}); "
                         f"restore a good copy, or delete it to start the run over") from error
    model = checkpoint.get("hyper_parameters", {}).get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model, str) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a checkpoint of resnet-repro (it has no state_dict and model name); "
                         f"pass runs/<experiment>/<run>/checkpoints/last.ckpt")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint written beside its target and renamed over it (see write_atomically): Lightning's own
    writes to a temporary file wherever $TMPDIR is and, across filesystems, falls back to truncating the
    checkpoint and copying into it, so that a full disk mid-copy lost the last good checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path} is not a run summary of resnet-repro (a JSON {type(summary).__name__}, not an "
                         f"object): restore it, or delete it and the next fit writes it again")
    return summary


def final_errors(run_dir: Path) -> dict:
    """The run's latest val/, test/ and test/<protocol>/ errors, as summary.json keeps them."""
    return {key: value for key, value in read_summary(run_dir).items() if key.startswith(EVALUATION_PREFIXES)}


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class RunLock:
    """One writer per run directory: an exclusive `flock` on `<run_dir>/.lock` for the command's lifetime. The
    kernel releases it when the process ends, however it ends, so the lock of a dead process is free again."""

    def __init__(self, run_dir: Path):
        path = Path(run_dir) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 200).decode(errors="replace").split() or ["?"]
            os.close(self.fd)
            where = f" on {holder[1]}" if len(holder) > 1 else ""
            raise ValueError(f"{run_dir} is in use by process {holder[0]}{where}: one run directory takes one "
                             f"writer; wait for that process to end (or stop it), then run this again") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def repair_torn_line(path: Path) -> None:
    """A process killed while appending to a CSV leaves a last line without its newline, cut anywhere, even
    mid-number. Remove it: those iterations come after the last checkpoint, and the resumed run logs them again."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    print(f"warning: {path} ended in a line cut off mid-write ({data[keep:][:40]!r}...); removed it, and the "
          f"resumed run logs those iterations again", file=sys.stderr)
    if keep == 0:
        os.remove(path)  # only a torn header was there


class AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            repair_torn_line(Path(self.metrics_file_path))
        if os.path.isfile(self.metrics_file_path):  # continue with the columns already in the file
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's writer deletes an existing metrics.csv here; a resumed run appends to it

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """A new column rewrites the whole file: into a temporary file that then replaces it, so that a kill
        half-way leaves the old file whole (Lightning's writer truncates it first)."""
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

        write_atomically(Path(self.metrics_file_path), write)


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
    # rank 0's alone: on another rank W&B's logger has no run, and would write its id, None, over rank 0's
    if use_wandb and rank_zero_only.rank == 0:
        wandb_logger = start_wandb(run_dir, config)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


INIT_TIMEOUT_S = 20  # how long a W&B run may take to start before this run goes on with CSV only


def start_wandb(run_dir: Path, config: dict) -> Logger | None:
    """A W&B logger for the run, or None with one warning when W&B cannot be used: training never depends on
    it. Offline unless WANDB_MODE says otherwise or an API key is configured; resumes the run's W&B id."""
    try:
        import wandb
        offline = os.environ.get("WANDB_MODE", "online" if has_wandb_key() else "offline") in ("offline", "dryrun")
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        # W&B waits 90 s for its server by default; a run that cannot reach it should not wait that long to go on
        settings = wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S)))
        columns = wandb_columns(run_dir, config)
        logger = RunWandbLogger(name=run_dir.name, group=run_dir.parent.name, project="resnet-repro",
                                save_dir=str(run_dir), offline=offline, id=run_id, resume="allow" if run_id else None,
                                config={**config, **columns}, settings=settings)
        logger.experiment  # start W&B now, so that a failure to start shows here and not mid-run
        id_file.write_text(logger.version + "\n")
        return logger
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        print(f"warning: W&B is unusable ({type(error).__name__}: {reason}); this run logs to {run_dir}/metrics.csv "
              f"only", file=sys.stderr)
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()  # end W&B's service now rather than have it retry at exit
        return None


def wandb_columns(run_dir: Path, config: dict) -> dict:
    """Flat keys of the run's W&B config that a researcher groups and colours runs by in the W&B UI (Figure 6:
    group by family, colour by depth): dataset, family (plain / residual), depth, shortcut, seed, experiment, budget
    (the fraction of the paper's schedule: "1" for the full one)."""
    spec = get_spec(config["model"]["model"])
    # the model's shortcut setting None means its family's default (A for CIFAR nets, B for ImageNet nets)
    shortcut = config["model"]["shortcut"] or inspect.signature(spec.family).parameters["shortcut"].default
    return {
        "dataset": config["data"]["class_path"].rsplit(".", 1)[-1].removesuffix("DataModule"),
        "family": "residual" if spec.residual else "plain",
        "depth": spec.depth,
        "shortcut": shortcut if spec.residual else "none",
        "seed": config["seed_everything"],
        "experiment": Path(run_dir).parent.name,
        "budget": config.get("budget") or "1",
    }


class RunWandbLogger(WandbLogger):
    """The W&B config is the run's config (as config.yaml holds it) and its flat columns, given once at the start.
    Lightning's own record of the module's hyperparameters, at the start of fit and of each test, is left out:
    it would add a second copy with `shortcut: None` (the family's default) beside the `shortcut` column."""

    def log_hyperparams(self, params) -> None:
        pass


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunSummary(L.Callback):
    """Keeps `summary.json` whole and current: written at the start, at every validation and checkpoint, and at
    the end of a fit (running / finished / failed / interrupted), and after every evaluation. What a write does
    not renew (the last errors of an earlier session, the history of accepted config changes) is kept."""

    def __init__(self, run_dir: Path, command: str, config_change: dict | None = None, budget: str | None = None):
        self.run_dir, self.command, self.budget = Path(run_dir), command, budget
        self.previous_wall_time = read_summary(self.run_dir).get("wall_time_s", 0.0)
        self.config_change = config_change  # {"step": ..., "changed": {key: [old, new]}} accepted on resume
        self.git_revision = git_revision()
        self.started = time.monotonic()
        self.images_trained = 0  # by all ranks, in this session's training iterations
        self.first_batch_at = self.last_batch_at = None

    def throughput(self) -> dict:
        """train_images_per_s: the images of this session's iterations over the time from the start of its first to
        the end of its last (validation and checkpoints in between included, set-up not); none before an
        iteration has ended."""
        if not self.images_trained or self.last_batch_at == self.first_batch_at:
            return {}
        return {"train_images_per_s": round(self.images_trained / (self.last_batch_at - self.first_batch_at), 1)}

    def update(self, trainer: L.Trainer, fields: dict, drop: tuple[str, ...] = ()) -> None:
        if not trainer.is_global_zero:
            return
        summary = {k: v for k, v in read_summary(self.run_dir).items() if k not in drop}
        errors = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(EVALUATION_PREFIXES)}
        write_json_atomically(self.run_dir / "summary.json", {**summary, **fields, **errors})

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra) -> None:
        device = trainer.strategy.root_device
        self.update(trainer, {
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
            "budget": self.budget,  # None: the paper's full schedule; "1/32": its iteration counts scaled by 1/32
            "wall_time_s": round(self.previous_wall_time + time.monotonic() - self.started, 1),
            "devices": trainer.world_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
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
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images_trained += len(batch[1]) * trainer.world_size  # each rank's share of the global batch
        self.last_batch_at = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.write(trainer, pl_module, "running")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.write(trainer, pl_module, "running")

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "finished")

    def on_test_end(self, trainer, pl_module) -> None:
        self.update(trainer, {})  # the evaluation's errors; the status stays what it was

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return  # a failed evaluation leaves the run's summary alone
        stopped = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        self.write(trainer, pl_module, "interrupted" if stopped else "failed",
                   error=f"{type(exception).__name__}: {exception}")
