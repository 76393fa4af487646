"""What the tests share: the repository's path, the tiny runs' settings as one definition, and the ways a test runs
the CLI and reads a run back. (conftest.py holds only pytest's hooks and fixtures.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from resnet_repro.cli import main
from resnet_repro.data.cifar10 import write_standin

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["--config", str(REPO / "experiments/digits/base.yaml")]  # the digits recipe: offline, a few seconds a run
QUIET_SETTINGS = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}


def as_flags(settings: dict) -> list[str]:
    """Dotted settings as the command line gives them: {"wandb": False} -> ["--wandb", "false"]."""
    return [arg for key, value in settings.items()
            for arg in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))]


QUIET = as_flags(QUIET_SETTINGS)


def tiny_run(steps: int = 4, batch: int = 16, every: int = 2) -> dict:
    """A tiny run's schedule: `steps` iterations of `batch` images, validating, logging and checkpointing every
    `every` iterations; a test adds the rest (W&B, the progress bar) as its purpose needs."""
    return {"trainer.max_steps": steps, "data.init_args.batch_size": batch, "trainer.val_check_interval": every,
            "trainer.log_every_n_steps": every, "checkpoint.every_n_train_steps": every}


def write_cifar10(root: Path, per_batch: int = 40, test: int = 31, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in the exact on-disk format; the folder of its batch files."""
    write_standin(root, per_batch, test, seed)
    return root / "cifar-10-batches-py"


def fit(*args: str) -> None:
    """`resnet-repro fit` in this process, quietly, without W&B unless asked."""
    main(["fit", *QUIET, "--wandb", "false", *args])


def cli_error(*argv: str) -> str:
    """Run the CLI in this process and return its one-line error (it must exit non-zero)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    message = str(exit_.value.code)
    assert exit_.value.code not in (0, None) and "\n" not in message, message
    return message


def run_cli(*argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed `resnet-repro` command in a fresh process."""
    command = [str(Path(sys.executable).parent / "resnet-repro"), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "WANDB_MODE": "offline", **(env or {})})


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def weights(run_dir: Path) -> dict:
    """The state_dict of the run's last checkpoint."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def train_rows(run_dir: Path) -> pd.DataFrame:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    return metrics.dropna(subset=["train/loss"]).drop_duplicates("step", keep="last").set_index("step")
