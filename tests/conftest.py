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
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

# The longest files first (their seconds on 2 cores): make test's workers take whole files in this order
# (--dist loadfile --no-loadscope-reorder), so that no worker starts a long file while the other is nearly done.
LONGEST_FIRST = ["test_training.py", "test_hardening.py", "test_gpu_check_compiled.py", "test_gpu_check_eager.py",
                 "test_smoke.py", "test_ranks.py", "test_hostile.py", "test_experiments.py", "test_parallel.py",
                 "test_speed.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: each file keeps its own order


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


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "data")
    return tmp_path / "data"
