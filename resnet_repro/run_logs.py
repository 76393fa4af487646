"""What a fit writes as it goes: checkpoints (atomically) and metrics.csv (appended to on resume); W&B beside it."""

import csv
import os
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from .files import write_atomically
from .rundir import drop_rows_after, repair_torn_line
from .tracking import start_wandb


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint written beside its target and renamed over it (see write_atomically): Lightning's own
    writes to a temporary file wherever $TMPDIR is and, across filesystems, falls back to truncating the
    checkpoint and copying into it, where a full disk mid-copy would lose the last good checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


class AppendingWriter(ExperimentWriter):
    """Appends to the run's metrics.csv; a fit first drops the rows after the iteration it resumes from
    (`keep_through`), which it logs again, so that the file ends as the uninterrupted run's."""

    def __init__(self, log_dir: str, keep_through: int | None):
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            repair_torn_line(Path(self.metrics_file_path))
        if os.path.isfile(self.metrics_file_path) and keep_through is not None:
            drop_rows_after(Path(self.metrics_file_path), keep_through)
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
    """metrics.csv directly in the run directory, appended to by evaluations and, from the iteration it resumes
    from, by a resumed fit."""

    def __init__(self, run_dir: Path, keep_through: int | None):
        super().__init__(run_dir, name="", version="")
        self.keep_through = keep_through

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = AppendingWriter(log_dir=self.log_dir, keep_through=self.keep_through)
        return self._experiment


def make_loggers(run_dir: Path, config: dict, dataset: str, use_wandb: bool, resumed_at: int | None) -> list[Logger]:
    """metrics.csv and, for a fit, W&B. A resumed fit's metrics.csv loses its rows after `resumed_at` first (the
    CSV writer is made now), so that W&B takes up the run's history from the file as the run goes on from there."""
    csv_logger = RunCSVLogger(run_dir, keep_through=resumed_at)
    csv_logger.experiment
    loggers: list[Logger] = [csv_logger]
    # rank 0's alone: on another rank W&B's logger has no run, and would write its id, None, over rank 0's
    if use_wandb and rank_zero_only.rank == 0:
        wandb_logger = start_wandb(run_dir, config, dataset)
        if wandb_logger is not None:
            loggers.append(wandb_logger)
    return loggers


