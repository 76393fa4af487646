"""The private names of Lightning that the fit process relies on, where Lightning has no public way to do the
same, each with what it is used for. A Lightning upgrade that renames or removes one breaks resume, logging or
the config record silently; `missing_internals` says which, and tests/test_dependencies.py fails on it naming the
Lightning version."""

import inspect

import lightning
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

# (class, name, its parameters after self) -> what the project does with it
INTERNALS = {
    (LightningCLI, "_parser", ("subcommand",)): "train.RunCLI.config_record dumps the subcommand's config as "
                                                "config.yaml",
    (LightningCLI, "_parse_ckpt_path", ()): "train.RunCLI checks a given checkpoint before LightningCLI reads "
                                            "the model's settings from it",
    (LightningCLI, "_set_seed", ()): "train.ConfigCheck parses a config without reseeding the caller",
    (ExperimentWriter, "_check_log_dir_exists", ()): "run_logs.AppendingWriter keeps the metrics.csv that "
                                                     "Lightning's writer deletes there",
    (ExperimentWriter, "_rewrite_with_new_header", ("fieldnames",)): "run_logs.AppendingWriter rewrites metrics.csv "
                                                                     "atomically for a new column",
    (CSVLogger, "_experiment", None): "run_logs.RunCSVLogger.experiment sets its AppendingWriter",
}


def missing_internals() -> list[str]:
    """One line for each private name above that this Lightning lacks or calls with other parameters."""
    lines = []
    for (owner, name, parameters), use in INTERNALS.items():
        if parameters is None:  # an attribute that Lightning's own code of the class sets
            found = any(f"self.{name} =" in inspect.getsource(cls) for cls in owner.__mro__
                        if cls.__module__.startswith("lightning"))
        else:
            method = getattr(owner, name, None)
            found = callable(method) and tuple(inspect.signature(method).parameters)[1:] == parameters
        if not found:
            shown = f"{name}({', '.join(parameters)})" if parameters is not None else name
            lines.append(f"lightning {lightning.__version__} has no {owner.__name__}.{shown} (used where {use})")
    return lines
