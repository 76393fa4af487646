"""`run --smoke`: every run of an experiment file in miniature, through the same code path as a real run: a few
iterations in this process on the CPU, on small stand-in data written in the data set's real on-disk format."""

import functools
import json
import shutil
from pathlib import Path

from ..data import data_module_class, standin_writer
from ..experiments import Run

SMOKE_ARGS = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "2",
              "--checkpoint.every_n_train_steps", "4", "--model.milestones", "[2, 3]", "--data.init_args.batch_size",
              "8", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.benchmark", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def smoke_args(run: Run, data_root: Path) -> list[str]:
    """The settings that make `run` a miniature: SMOKE_ARGS, and data of the run's kind (see standin_data)."""
    settings = standin_data(data_module_class(run.setting("data.class_path")), data_root)
    data = [arg for key, value in settings.items()
            for arg in (f"--data.init_args.{key}", value if isinstance(value, str) else json.dumps(value))]
    return [*SMOKE_ARGS, *data]


@functools.cache  # once per data module and command: every run of the experiment reads the same files
def standin_data(data: type, data_root: Path) -> dict:
    """Stand-in data written by the writer next to the data module's reader (in the dataset's real on-disk
    format) into `data_root/<data module>/`; the data module's settings for it."""
    folder = data_root / data.__name__
    shutil.rmtree(folder, ignore_errors=True)  # written afresh: small, and the same every time
    return standin_writer(data)(folder)
