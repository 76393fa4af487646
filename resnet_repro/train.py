"""The fit process: what this project adds to Lightning for `resnet-repro fit`, `validate` and `test`.

RunCLI (LightningCLI) checks every setting (fit_config.py), the run directory's lock and a resume's checkpoint and
config before anything is written; a run directory with a checkpoint resumes. The run is logged to metrics.csv and
checkpoints are written atomically (run_logs.py), W&B on rank 0 (tracking.py), summary.json kept current
(run_summary.py). After fit, the final weights are tested under each protocol the config names. The private
names of Lightning used here and in run_logs.py are listed, with their use, in lightning_internals.py.
"""

import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import yaml
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

from .batchnorm import PreciseBN
from .data import image_side  # imported, its data modules are the subclasses --help lists
from .errors import AlreadyFinished
from .files import read_yaml
from .fit_config import TRAINER_DEFAULTS, check_same_net, check_values, config_changes
from .models import get_spec
from .models.size import count_macs, count_params, meta_model
from .module import ResNetClassifier
from .run_logs import AtomicCheckpointIO, make_loggers
from .run_summary import RunSummary
from .rundir import RunLock, check_no_links, final_errors, last_checkpoint, read_checkpoint, read_summary
from .tracking import finish_wandb


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
        self.resumed_at: int | None = None  # the iteration a fit starts from (0 for a new run); None: not a fit
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            finish_wandb(exit_code=1)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def add_core_arguments_to_parser(self, parser) -> None:
        """Lightning's three groups with the project's two first, so that `--help` shows the net's and the data's
        settings before the Trainer's hundreds (the config is the same)."""
        parser.add_lightning_class_args(ResNetClassifier, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(L.LightningDataModule, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{key}": value for key, value in self.trainer_defaults.items() if key != "callbacks"})

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
        plugins = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {}).get("plugins") or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        record = self.config_record(config)
        kwargs["logger"] = make_loggers(run_dir, record, self.datamodule.dataset,
                                        use_wandb=config.wandb and self.subcommand == "fit", resumed_at=self.resumed_at)
        trainer = super().instantiate_trainer(**kwargs)
        self.run_summary = RunSummary(run_dir, self.command, self.config_change, config.budget)
        trainer.callbacks.append(self.run_summary)
        if config.precise_bn_batches:
            trainer.callbacks.append(PreciseBN(config.precise_bn_batches))
        return trainer

    def config_record(self, config) -> dict:
        """The command's config as config.yaml holds it (as_dict keeps some init_args as the strings they were
        given as): the dump of the subcommand's own parser, which LightningCLI keeps private."""
        return yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False))

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
        if config.model.compile_mode is not None:
            # Lightning evaluates under torch.inference_mode, whose tensors a compiled net's CUDA graphs
            # (reduce-overhead) cannot take back into training; no_grad evaluates the same, and they can
            config.trainer.inference_mode = False
        if self.subcommand is not None:  # checkpoints are loaded as data (tensors, plain containers), never as code
            config.weights_only = True
        self.check_run_dir(config)

    def check_run_dir(self, config) -> None:
        """On every rank alike: each reads the checkpoint and config.yaml, so each resumes from the same point and
        each refuses, or finds the run finished, with the same line (a rank that a launcher started exits as rank 0
        does instead of waiting for it). Nothing is written before the ranks meet, so they all read the same
        files. The lock is rank 0's, the writer's. First of all, a run directory holding a symbolic link is
        refused: every file of the run is read and written below, by this project, Lightning and W&B."""
        run_dir = Path(config.run_dir)
        check_no_links(run_dir)
        if rank_zero_only.rank == 0:
            self.lock = RunLock(run_dir)
        if self.subcommand != "fit":
            return
        checkpoint = last_checkpoint(run_dir)
        if config.ckpt_path is None and checkpoint.is_file():
            config.ckpt_path = str(checkpoint)
        state = read_checkpoint(Path(config.ckpt_path)) if config.ckpt_path else None
        resumed_at = state["global_step"] if state else 0
        self.resumed_at = resumed_at
        saved = run_dir / "config.yaml"
        changed = {}
        if saved.is_file():
            saved_config = read_yaml(saved)
            if not isinstance(saved_config, dict):
                raise ValueError(f"{saved} is not the config of a run (a mapping of settings): restore it or start "
                                 f"the run in a new --run_dir")
            changed = config_changes(saved_config, self.config_record(config))
        if changed and not config.accept_config_change:
            shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(f"{run_dir} holds a run with other settings ({shown}): a resumed run keeps what defines "
                             f"it. Use a new --run_dir, or pass --accept_config_change true to go on with the new "
                             f"values from iteration {resumed_at} (recorded in summary.json)")
        if state:  # after a refused change of settings, whose line says more
            check_same_net(Path(config.ckpt_path), state["hyper_parameters"], config.model)
        if changed:
            self.config_change = {"step": resumed_at, "changed": changed}
            rank_zero_only(print)(f"warning: {run_dir} goes on from iteration {resumed_at} with changed settings: "
                  f"{json.dumps(changed)}", file=sys.stderr)
        elif saved.is_file() and read_summary(run_dir).get("status") == "finished" and \
                resumed_at >= config.trainer.max_steps:
            again = shlex.join(["resnet-repro", "test", "--config", str(saved), "--ckpt_path", str(checkpoint)])
            raise AlreadyFinished(f"{run_dir} has finished its {resumed_at} iterations: nothing to train ({again} "
                                  f"evaluates it again)")

    def before_fit(self) -> None:
        hparams = self.model.hparams
        net = meta_model(hparams.model, hparams.shortcut, hparams.num_classes)  # the same net, shapes only
        side = image_side(lambda name: getattr(self.datamodule, name, None), get_spec(hparams.model).input_size)
        if rank_zero_only.rank == 0:
            print(f"{hparams.model}: {net.num_layers} layers, {count_params(net):,} parameters, "
                  f"{count_macs(net, side) / 1e6:,.2f}M multiply-adds per {side}x{side} image (forward)")

    def after_fit(self) -> None:
        self.evaluate(self.command_config.protocols)
        # only now: a run stopped in its evaluations is not finished, and `run` or `fit` takes it up again
        self.run_summary.write(self.trainer, self.model, "finished")
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
