"""The `resnet-repro` command.

    resnet-repro models                                   the registered nets, their params and MACs
    resnet-repro fit --config experiments/cifar10/base.yaml [--model.model resnet56 ...]
    resnet-repro validate|test --config RUN_DIR/config.yaml --ckpt_path RUN_DIR/checkpoints/last.ckpt
    resnet-repro run experiments/cifar10/table6.yaml [--dry-run] [--devices N] [--launcher local|torchrun|slurm]
    resnet-repro report runs/cifar10-table6 [--out results/cifar10-table6]
    resnet-repro responses runs/demo/*/checkpoints/last.ckpt [--out results/demo-responses]
    resnet-repro bench resnet20 [--device cpu|cuda] [--steps N]
"""

import importlib
import shlex
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from .module import ResNetClassifier
from .rundir import RunSummary, check_checkpoint, last_checkpoint, make_loggers

LIGHTNING_COMMANDS = ("fit", "validate", "test")
TRAINER_DEFAULTS = {
    "max_epochs": -1,  # the recipes stop at max_steps: schedules are in iterations
    "check_val_every_n_epoch": None,  # validate every val_check_interval iterations, across epochs
    "use_distributed_sampler": False,  # our data modules shard themselves, without repeating eval images
    "num_sanity_val_steps": 0,
}


class SaveFitConfig(SaveConfigCallback):
    """Saves the resolved config into the run directory for `fit` only (validate/test leave it alone)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class RunCLI(LightningCLI):
    def __init__(self, *args, command: str = "", **kwargs):
        self.command = command  # the command line, for the run's summary
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", default="runs/default/run",
                            help="runs/<experiment>/<run>: logs, checkpoints, summary; fit resumes a run found there")
        parser.add_argument("--wandb", type=bool, default=True, help="also log to Weights & Biases (never required)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "checkpoint.every_n_train_steps": 1000, "checkpoint.enable_version_counter": False})
        parser.link_arguments("seed_everything", "data.init_args.seed")

    @property
    def command_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config  # run=False has no subcommand

    def instantiate_trainer(self, **kwargs):
        config = self.command_config
        run_dir = Path(config.run_dir)
        kwargs["default_root_dir"] = str(run_dir)
        kwargs["logger"] = make_loggers(run_dir, config.as_dict(), use_wandb=config.wandb and self.subcommand == "fit")
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":
            trainer.callbacks.append(RunSummary(run_dir, self.command))
        return trainer

    def before_instantiate_classes(self) -> None:
        """`fit` on a run directory with a checkpoint resumes it; a checkpoint that cannot be read stops the
        command here, before anything (loggers, W&B) has touched the run directory."""
        config = self.command_config
        checkpoint = last_checkpoint(Path(config.run_dir))
        if self.subcommand == "fit" and config.ckpt_path is None and checkpoint.is_file():
            config.ckpt_path = str(checkpoint)
        if config.get("ckpt_path") is not None:
            check_checkpoint(Path(config.ckpt_path))

    def after_fit(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.finish()
                # finish() returns once W&B's service has the run, not once it has closed the .wandb file;
                # teardown waits for the service to stop, so the offline run is complete on disk, ready for `wandb sync`
                wandb.teardown()


class ConfigCheck(RunCLI):
    """Parses a config (unknown keys, wrong types) and builds nothing."""

    def _set_seed(self) -> None:
        pass  # parsing must not reseed the caller's random generators

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def check_config(args: list[str]) -> None:
    """Raise jsonargparse's ArgumentError if `resnet-repro fit ARGS` would not parse."""
    with warnings.catch_warnings():  # LightningCLI warns when given args while sys.argv holds another command
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        build_cli(args, run=False, cli_class=ConfigCheck)


def build_cli(args: list[str] | None, run: bool = True, cli_class: type[RunCLI] = RunCLI) -> RunCLI:
    """The LightningCLI of this project; with run=False it only builds the model, data and trainer."""
    command = shlex.join(["resnet-repro", *(sys.argv[1:] if args is None else args)])
    return cli_class(ResNetClassifier, command=command, subclass_mode_data=True, args=args, run=run, seed_everything_default=0,
                  trainer_defaults=TRAINER_DEFAULTS, save_config_callback=SaveFitConfig,
                  save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})


def lightning_command(argv: list[str]) -> None:
    # LightningCLI reads sys.argv itself, and warns when it is also given the same arguments
    build_cli(None if argv == sys.argv[1:] else argv)


def models_command(argv: list[str]) -> None:
    from .analysis.complexity import complexity_table, format_complexity_table

    if argv:
        raise ValueError(f"models takes no arguments, got {' '.join(argv)}")
    print(format_complexity_table(complexity_table()))


# command -> where its function lives, imported only when that command runs: no command pays for
# the imports of another
COMMANDS = {
    **{name: "resnet_repro.cli:lightning_command" for name in LIGHTNING_COMMANDS},
    "models": "resnet_repro.cli:models_command",
    "run": "resnet_repro.experiments:run_command",
    "report": "resnet_repro.report.write:report_command",
    "responses": "resnet_repro.analysis.responses:responses_command",
    "bench": "resnet_repro.bench:bench_command",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"resnet-repro: unknown command {command!r}: valid commands are {', '.join(COMMANDS)}")
    try:
        module, function = COMMANDS[command].split(":")
        getattr(importlib.import_module(module), function)([command, *rest] if command in LIGHTNING_COMMANDS else rest)
    except (ValueError, FileNotFoundError, FloatingPointError, ArgumentError) as error:
        message = " ".join(str(error).split())  # one line, whatever the source of the message
        if isinstance(error, ArgumentError):
            message += f" (resnet-repro {command} --help lists the valid keys)"
        sys.exit(f"resnet-repro {command}: {message}")


if __name__ == "__main__":  # `python -m resnet_repro.cli`: how torchrun and the local launcher start a run
    main()
