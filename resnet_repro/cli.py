"""The `resnet-repro` command.

    resnet-repro models                                   the registered nets, their params and MACs
    resnet-repro fit --config experiments/cifar10/base.yaml [--model.model resnet56 ...]
    resnet-repro validate|test --config RUN_DIR/config.yaml --ckpt_path RUN_DIR/checkpoints/last.ckpt
    resnet-repro run experiments/cifar10/table6.yaml [--dry-run] [--devices N] [--launcher local|torchrun|slurm]
                     [--parallel N [--gpus 0,1,... --runs-per-gpu K]]   N runs at once (slurm: N array tasks)
    resnet-repro report runs/cifar10-table6 [--out results/cifar10-table6]
    resnet-repro responses runs/demo/*/checkpoints/last.ckpt [--out results/demo-responses]
    resnet-repro bench resnet20 [--device cpu|cuda] [--steps N]
"""

import errno
import importlib
import json
import re
import shlex
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Optional

import torch
import yaml
from jsonargparse import ArgumentError
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .batchnorm import PreciseBN
from .files import read_yaml
from .models import get_spec
from .module import ResNetClassifier
from .rundir import (AtomicCheckpointIO, RunLock, RunSummary, final_errors, last_checkpoint, make_loggers, read_checkpoint,
                     read_summary)

LIGHTNING_COMMANDS = ("fit", "validate", "test")
TRAINER_DEFAULTS = {
    "max_epochs": -1,  # the recipes stop at max_steps: schedules are in iterations
    "check_val_every_n_epoch": None,  # validate every val_check_interval iterations, across epochs
    "use_distributed_sampler": False,  # our data modules shard themselves, without repeating eval images
    "num_sanity_val_steps": 0,
    # Lightning's summary counts FLOPs only with an example input and prints "Total FLOPs: 0" without one: `fit`
    # prints the net's exact parameters and multiply-adds instead (before_fit)
    "enable_model_summary": False,
}


# Settings that say where and how a run is executed, logged and checkpointed, not what it computes: a resumed run
# may change these. Any other change (model, data, recipe values, seed, iterations, devices, precision) would
# make the resumed run a different run, and is refused unless accepted with --accept_config_change.
HOW_NOT_WHAT = ("config", "run_dir", "ckpt_path", "weights_only", "wandb", "accept_config_change", "protocols",
                "checkpoint.",
                "trainer.accelerator", "trainer.strategy", "trainer.callbacks", "trainer.logger",
                "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.enable_checkpointing",
                "trainer.default_root_dir", "trainer.benchmark", "trainer.log_every_n_steps",
                "trainer.val_check_interval", "trainer.limit_val_batches", "trainer.limit_test_batches",
                "trainer.num_sanity_val_steps", "trainer.profiler", "model.channels_last", "model.compile_mode",
                "precise_bn_batches",  # evaluation only: what is tested, not what is trained
                "data.init_args.data_dir", "data.init_args.download", "data.init_args.num_workers",
                "data.init_args.eval_batch_size", "data.init_args.eval_mode", "data.init_args.scales")


class AlreadyFinished(Exception):
    """`fit` on a run that has nothing left to train: said in one line, exit 0, nothing touched."""


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, new: dict) -> dict[str, list]:
    """{dotted key: [saved value, new value]} for the settings that define a run and differ (missing = None)."""
    saved, new = flatten(saved), flatten(new)
    return {key: [saved.get(key), new.get(key)] for key in sorted(saved.keys() | new.keys())
            if not key.startswith(HOW_NOT_WHAT) and saved.get(key) != new.get(key)}


def data_class(class_path: str) -> type:
    """The data module class a config names by its dotted path, as LightningCLI reads it."""
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def check_values(config, subcommand: str | None) -> None:
    """Values the parser's types cannot rule out, refused in one line that names the key."""
    max_steps = config.trainer.max_steps
    if subcommand in ("fit", None) and not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"trainer.max_steps must be a positive number of iterations, not {max_steps} (the "
                         f"recipes stop at max_steps: their schedules are in iterations)")
    milestones = config.model.milestones
    if not all(is_count(m) for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(f"model.milestones must be iterations in increasing order, each 1 or more (the lr drops at "
                         f"each), e.g. [32000, 48000], not {list(milestones)}")
    for key, value in (("trainer.log_every_n_steps", config.trainer.log_every_n_steps),
                       ("trainer.val_check_interval", config.trainer.val_check_interval),
                       ("checkpoint.every_n_train_steps", config.checkpoint.every_n_train_steps)):
        if value is not None and not (is_count(value) or key.endswith("val_check_interval") and 0 < value <= 1):
            raise ValueError(f"{key} must be a number of iterations, 1 or more, not {value}"
                             + (" (or a fraction of an epoch, above 0 and at most 1)" if "val_check" in key else ""))
    if config.budget is not None:
        budget_fraction(config.budget)
    check_sync_batchnorm(config)
    data = data_class(config.data.class_path)
    unknown = [protocol for protocol in config.protocols if protocol not in data.protocols]
    if unknown:
        raise ValueError(f"--protocols {' '.join(unknown)}: {data.__name__} is tested by {', '.join(data.protocols)}")
    run_dir = Path(config.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run_dir {run_dir} is a file: a run directory is a folder (runs/<experiment>/<run>)")


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_sync_batchnorm(config) -> None:
    """SyncBatchNorm replaces every BN, ghost BN's included, and normalises the images of all ranks as one batch:
    the BN switches, which assume per-rank BatchNorm2d, are refused beside it rather than silently undone."""
    if not config.trainer.sync_batchnorm:
        return
    if config.model.bn_group_size is not None:
        raise ValueError(f"--trainer.sync_batchnorm true normalises the images of all ranks as one batch, and "
                         f"model.bn_group_size {config.model.bn_group_size} asks for BN over groups of that many: "
                         f"leave out one of the two")
    if config.precise_bn_batches:
        raise ValueError(f"--trainer.sync_batchnorm true turns every BN into a SyncBatchNorm, whose statistics "
                         f"precise_bn_batches {config.precise_bn_batches} cannot recompute: leave out one of the two")


def budget_fraction(text: str) -> Fraction:
    """A budget, the fraction of the paper's schedule a run trains for: 1/2, 1/8, 0.25 (at most 1)."""
    try:
        budget = Fraction(text)
    except (ValueError, ZeroDivisionError):
        budget = None
    if budget is None or not 0 < budget <= 1:
        raise ValueError(f"--budget {text}: give the fraction of the paper's schedule to train for, above 0 and at most "
                         f"1, e.g. 1/8 or 0.125")
    return budget


class SaveFitConfig(SaveConfigCallback):
    """Saves the resolved config into the run directory for `fit` only (validate/test leave it alone)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class RunCLI(LightningCLI):
    def __init__(self, *args, command: str = "", **kwargs):
        self.command = command  # the command line, for the run's summary
        self.lock: RunLock | None = None  # held from the checks before anything is written to the end
        self.config_change: dict | None = None  # an accepted change of a resumed run's settings
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            finish_wandb(exit_code=1)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", default="runs/default/run",
                            help="runs/<experiment>/<run>: logs, checkpoints, summary; fit resumes a run found there")
        parser.add_argument("--wandb", type=bool, default=True, help="also log to Weights & Biases (never required)")
        parser.add_argument("--protocols", type=list[str], default=[],
                            help="test protocols to evaluate the final weights under, after fit or in test (CIFAR: "
                                 "single_view; ImageNet: center, ten_crop, multi_scale); each logs test/<protocol>/")
        parser.add_argument("--precise_bn_batches", type=NonNegativeInt, default=0,
                            help="before each test, recompute the BN statistics over this many training batches with "
                                 "the weights frozen (precise BN); 0: the moving averages of training")
        parser.add_argument("--budget", type=Optional[str], default=None,
                            help="the fraction of the paper's schedule (e.g. 1/32) that `run --budget` scaled this run's "
                                 "iteration counts to; recorded in summary.json and W&B. None: the full schedule")
        parser.add_argument("--accept_config_change", type=bool, default=False,
                            help="resume a run with settings that differ from its config.yaml (the change is "
                                 "recorded in summary.json); without it such a resume is refused")
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
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        # the config as config.yaml holds it (as_dict keeps some init_args as the strings they were given as)
        record = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False))
        kwargs["logger"] = make_loggers(run_dir, record, use_wandb=config.wandb and self.subcommand == "fit")
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(RunSummary(run_dir, self.command, self.config_change, config.budget))
        if config.precise_bn_batches:
            trainer.callbacks.append(PreciseBN(config.precise_bn_batches))
        return trainer

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the model's settings from a given checkpoint here, first of all: check it first
        ckpt_path = self.config.get(self.config.get("subcommand") or "", {}).get("ckpt_path")
        if ckpt_path is not None:
            read_checkpoint(Path(ckpt_path))
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Every check that can refuse the command runs here, before anything (loggers, W&B, config.yaml,
        summary.json) has touched the run directory: values, the run directory's lock, a resume's checkpoint
        and settings. `fit` on a run directory with a checkpoint resumes it."""
        config = self.command_config
        check_values(config, self.subcommand)
        if config.trainer.deterministic:  # cuDNN's benchmark picks conv algorithms by timing them: not repeatable
            config.trainer.benchmark = False
        if self.subcommand is not None:  # checkpoints are loaded as data (tensors, plain containers), never as code
            config.weights_only = True
        self.check_run_dir(config)

    def check_run_dir(self, config) -> None:
        """On every rank alike: each reads the checkpoint and config.yaml, so each resumes from the same point and
        each refuses, or finds the run finished, with the same line (a rank that a launcher started exits as rank 0
        does instead of waiting for it). Nothing is written before the ranks meet, so they all read the same
        files. The lock is rank 0's, the writer's."""
        run_dir = Path(config.run_dir)
        if rank_zero_only.rank == 0:
            self.lock = RunLock(run_dir)
        if self.subcommand != "fit":
            return
        checkpoint = last_checkpoint(run_dir)
        if config.ckpt_path is None and checkpoint.is_file():
            config.ckpt_path = str(checkpoint)
        resumed_at = read_checkpoint(Path(config.ckpt_path))["global_step"] if config.ckpt_path else 0
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            return
        saved_config = read_yaml(saved)
        if not isinstance(saved_config, dict):
            raise ValueError(f"{saved} is not the config of a run (a mapping of settings): restore it or start the "
                             f"run in a new --run_dir")
        changed = config_changes(saved_config, yaml.safe_load(self._parser("fit").dump(config, skip_none=False)))
        if changed and not config.accept_config_change:
            shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(f"{run_dir} holds a run with other settings ({shown}): a resumed run keeps what defines "
                             f"it. Use a new --run_dir, or pass --accept_config_change true to go on with the new "
                             f"values from iteration {resumed_at} (recorded in summary.json)")
        if changed:
            self.config_change = {"step": resumed_at, "changed": changed}
            rank_zero_only(print)(f"warning: {run_dir} goes on from iteration {resumed_at} with changed settings: "
                  f"{json.dumps(changed)}", file=sys.stderr)
        elif read_summary(run_dir).get("status") == "finished" and resumed_at >= config.trainer.max_steps:
            raise AlreadyFinished(f"{run_dir} has finished its {resumed_at} iterations: nothing to train (resnet-repro "
                                  f"test --config {saved} --ckpt_path {checkpoint} evaluates it again)")

    def before_fit(self) -> None:
        from .analysis.complexity import count_macs, count_params, meta_model

        hparams = self.model.hparams
        net = meta_model(hparams.model, hparams.shortcut, hparams.num_classes)  # the same net, shapes only
        if rank_zero_only.rank == 0:
            print(f"{hparams.model}: {net.num_layers} layers, {count_params(net):,} parameters, "
                  f"{count_macs(net, get_spec(hparams.model).input_size) / 1e6:,.2f}M multiply-adds per image "
                  f"(forward)")

    def after_fit(self) -> None:
        self.evaluate(self.command_config.protocols)
        # W&B's summary holds each key's last value logged in this session; summary.json's final errors are the
        # run's, whatever session logged them (a resumed run's val/ error may come from before the kill)
        finish_wandb(exit_code=0, summary=final_errors(Path(self.command_config.run_dir)))

    def use_protocol(self, protocol: str) -> None:
        """Evaluate under `protocol` from now on. cuDNN's benchmark (trainer.benchmark) tunes the convolutions for
        each new input shape: once for fixed crops, but for every image of the multi-scale test, each of its own
        size, so it is off there."""
        self.datamodule.use_protocol(protocol)
        torch.backends.cudnn.benchmark = bool(self.command_config.trainer.benchmark) and protocol != "multi_scale"

    def before_test(self) -> None:
        protocols = self.command_config.protocols
        if protocols:
            self.use_protocol(protocols[0])

    def after_test(self) -> None:
        self.evaluate(self.command_config.protocols[1:], ckpt_path=self.command_config.ckpt_path)

    def evaluate(self, protocols: list[str], ckpt_path: str | None = None) -> None:
        """The final weights under each test protocol, one after another in this process (and its DDP ranks)."""
        for protocol in protocols:
            self.use_protocol(protocol)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)


def finish_wandb(exit_code: int, summary: dict | None = None) -> None:
    """Ends this process's W&B run, if any, whether the command succeeded or failed (a run left open would be
    taken up by the next one in the same process). finish() returns once W&B's service has the run, not once
    it has closed the .wandb file; teardown waits for the service to stop, so an offline run is complete on
    disk, ready for `wandb sync`, when the command returns."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.summary.update(summary or {})
        wandb.run.finish(exit_code=exit_code)
        wandb.teardown()


class ConfigCheck(RunCLI):
    """Parses a config (unknown keys, wrong types) and builds nothing."""

    def _set_seed(self) -> None:
        pass  # parsing must not reseed the caller's random generators

    def check_run_dir(self, config) -> None:
        pass  # a check of the settings alone: no run directory is touched or read

    def instantiate_classes(self) -> None:
        pass


def check_config(args: list[str]) -> dict:
    """The config `resnet-repro fit ARGS` resolves to (defaults included); jsonargparse's ArgumentError if it
    would not parse."""
    with warnings.catch_warnings():  # LightningCLI warns when given args while sys.argv holds another command
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return build_cli(args, run=False, cli_class=ConfigCheck).config.as_dict()


def build_cli(args: list[str] | None, run: bool = True, cli_class: type[RunCLI] = RunCLI) -> RunCLI:
    """The LightningCLI of this project; with run=False it only builds the model, data and trainer."""
    from . import data  # noqa: F401 (imported, the project's data modules are the known subclasses --help lists)

    command = shlex.join(["resnet-repro", *(sys.argv[1:] if args is None else args)])
    return cli_class(ResNetClassifier, command=command, subclass_mode_data=True, args=args, run=run, seed_everything_default=0,
                  trainer_defaults=TRAINER_DEFAULTS, save_config_callback=SaveFitConfig,
                  save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})


def config_files(argv: list[str]) -> list[Path]:
    """The files given to --config (jsonargparse also takes a YAML string there: that is no file)."""
    values = [value for flag, value in zip(argv, argv[1:]) if flag == "--config"]
    values += [arg.removeprefix("--config=") for arg in argv if arg.startswith("--config=")]
    return [Path(value) for value in values if Path(value).is_file()]


def lightning_command(argv: list[str]) -> None:
    for path in config_files(argv):  # jsonargparse reads them itself: refuse a key given twice or an alias bomb first
        read_yaml(path)
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


def innermost(message: str) -> str:
    """jsonargparse nests the error of a data module's argument in the Union of data modules; say only the key
    and the reason: `data.init_args.batch_size: Not of type PositiveInt: ...`."""
    nested = re.search(r'Parser key "(\w+)": Does not validate against any of the Union subtypes .*? class_path '
                       r"'[\w.]+': (?:Parser key \"(\w+)\": )?(.*?) - Expected", message)
    if not nested:
        return message
    return f"{nested[1]}.init_args.{nested[2]}: {nested[3]}" if nested[2] else f"{nested[1]}: {nested[3]}"


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
    except AlreadyFinished as done:
        print(f"resnet-repro {command}: {done}")
    except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError, ArgumentError) as error:
        text = str(error)
        if "\nOriginal Traceback" in text:  # raised in a DataLoader worker: the error is the traceback's last line
            text = text.strip().splitlines()[-1].split(": ", 1)[-1]
        message = " ".join(text.split())  # one line, whatever the source of the message
        if isinstance(error, ArgumentError):
            message = f"{innermost(message)} (resnet-repro {command} --help lists the valid keys)"
        sys.exit(f"resnet-repro {command}: {message}")
    except OSError as error:  # a full disk, a folder that cannot be written: what the system said, on which file
        where = f" ({error.filename})" if error.filename else ""
        advice = (": free some space, then the same command goes on from the last checkpoint"
                  if error.errno == errno.ENOSPC else "")
        sys.exit(f"resnet-repro {command}: {error.strerror or error}{where}{advice}")
    except (KeyboardInterrupt, SIGTERMException) as stop:
        sys.exit(f"resnet-repro {command}: stopped by {'Ctrl-C' if isinstance(stop, KeyboardInterrupt) else 'SIGTERM'}; "
                 f"a run keeps its last checkpoint, and the same command resumes it")


if __name__ == "__main__":  # `python -m resnet_repro.cli`: how torchrun and the local launcher start a run
    # the package's module, not this copy of it named __main__: the classes other modules import from
    # resnet_repro.cli (AlreadyFinished, RunCLI) are then the ones this command raises and catches
    from resnet_repro.cli import main as package_main

    package_main()
