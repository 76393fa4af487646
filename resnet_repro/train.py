"""The fit process: what this project adds to Lightning for `resnet-repro fit`, `validate` and `test`.

RunCLI (LightningCLI) checks every setting, the run directory's lock and a resume's checkpoint and config before
anything is written; a run directory with a checkpoint resumes. The run is logged to metrics.csv (appended to on
resume, a torn last line repaired) and, on rank 0, to W&B (tracking.py); summary.json is kept current by the
RunSummary callback; checkpoints are written atomically. After fit, the final weights are tested under each
protocol the config names.
"""

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Optional

import lightning as L
import torch
import yaml
from jsonargparse.typing import NonNegativeInt
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .batchnorm import PreciseBN
from .data import check_protocols, data_module_class, image_side  # imported, its data modules are the subclasses --help lists
from .errors import AlreadyFinished
from .files import read_yaml, write_atomically, write_json_atomically
from .hardware import device_name
from .models import get_spec
from .models.size import count_macs, count_params, meta_model
from .module import ResNetClassifier
from .rundir import (EVALUATION_PREFIXES, RunLock, check_no_links, drop_rows_after, final_errors, last_checkpoint,
                     read_checkpoint, read_summary, repair_torn_line)
from .tracking import finish_wandb, start_wandb

TRAINER_DEFAULTS = {
    "max_epochs": -1,  # the recipes stop at max_steps: schedules are in iterations
    "check_val_every_n_epoch": None,  # validate every val_check_interval iterations, across epochs
    "use_distributed_sampler": False,  # our data modules shard themselves, without repeating eval images
    "num_sanity_val_steps": 0,
    # Lightning's summary counts FLOPs only with an example input and prints "Total FLOPs: 0" without one: `fit`
    # prints the net's exact parameters and multiply-adds instead (before_fit)
    "enable_model_summary": False,
}
# Lightning 2.6 calls a torch pytree API that torch has deprecated: printed once per run, nothing a user can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


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
                "trainer.inference_mode",
                "precise_bn_batches",  # evaluation only: what is tested, not what is trained
                "data.init_args.data_dir", "data.init_args.download", "data.init_args.num_workers",
                "data.init_args.eval_batch_size", "data.init_args.eval_mode", "data.init_args.scales",
                "data.init_args.ten_crop_of")
# The recipe settings for what the paper leaves implicit (README, Switches): `run --dry-run` names a run's that
# differ from its recipe.
FIDELITY_SWITCHES = ("data.init_args.train_on_all", "model.bn_group_size", "model.warmup", "model.sgd_form",
                     "precise_bn_batches", "trainer.deterministic")


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
    try:
        check_protocols(data_module_class(config.data.class_path), config.protocols)
    except ValueError as error:
        raise ValueError(f"--protocols: {error}") from None
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
    """A budget, the fraction of the paper's schedule a run trains for: 1/2, 1/8, 0.25 (above 0, at most 1, in
    steps of no less than a billionth, so that its folder's name stays short: runs/<experiment>@1-32). Written in
    a few digits with a point or a slash: an exponent (1e-99999999) could take Python hours to parse."""
    try:
        budget = Fraction(text) if re.fullmatch(r"[0-9./]{1,21}", text) else None
    except (ValueError, ZeroDivisionError):
        budget = None
    if budget is None or not 0 < budget <= 1 or budget.denominator > 10**9:
        raise ValueError(f"--budget {text}: give the fraction of the paper's schedule to train for, above 0 and at most "
                         f"1, e.g. 1/8 or 0.125 (no finer than 1/1000000000)")
    return budget


def check_same_net(path: Path, hparams: dict, model) -> None:
    """A resumed run goes on with the net of its checkpoint: another net (a checkpoint put there from another run)
    is refused in one line, before anything is written, instead of failing to load key by key."""
    def net(name: str, shortcut, num_classes) -> str:
        option = get_spec(name).shortcut(shortcut)
        return f"{name}{f' (shortcut {option})' if option else ''} of {num_classes} classes"

    saved = net(hparams["model"], hparams.get("shortcut"), hparams.get("num_classes"))
    configured = net(model.model, model.shortcut, model.num_classes)
    if saved != configured:
        raise ValueError(f"checkpoint {path} holds a {saved}, and this run is a {configured}: a resumed run keeps its "
                         f"net; use a new --run_dir, or delete the checkpoint to start this run over")


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
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
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
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
        # the config as config.yaml holds it (as_dict keeps some init_args as the strings they were given as)
        record = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False))
        kwargs["logger"] = make_loggers(run_dir, record, self.datamodule.dataset,
                                        use_wandb=config.wandb and self.subcommand == "fit", resumed_at=self.resumed_at)
        trainer = super().instantiate_trainer(**kwargs)
        self.run_summary = RunSummary(run_dir, self.command, self.config_change, config.budget)
        trainer.callbacks.append(self.run_summary)
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
            changed = config_changes(saved_config, yaml.safe_load(self._parser("fit").dump(config, skip_none=False)))
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint written beside its target and renamed over it (see write_atomically): Lightning's own
    writes to a temporary file wherever $TMPDIR is and, across filesystems, falls back to truncating the
    checkpoint and copying into it, where a full disk mid-copy would lose the last good checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


PROGRESS_EVERY_S = 10  # how often summary.json's iteration is renewed while training: the live view of `run` reads it


class RunSummary(L.Callback):
    """Keeps `summary.json` whole and current: written at the start, at every validation and checkpoint, and at
    the end of a fit (running / evaluating / failed / interrupted; RunCLI.after_fit writes finished once the final
    weights are tested under the run's protocols), and after every evaluation. What a write does not renew (the
    last errors of an earlier session, the history of accepted config changes) is kept."""

    def __init__(self, run_dir: Path, command: str, config_change: dict | None = None, budget: str | None = None):
        self.run_dir, self.command, self.budget = Path(run_dir), command, budget
        self.previous_wall_time = read_summary(self.run_dir).get("wall_time_s", 0.0)
        self.config_change = config_change  # {"step": ..., "changed": {key: [old, new]}} accepted on resume
        self.git_revision = git_revision()
        self.started = time.monotonic()
        # training rate: the images and seconds of this session's iterations, but those during which a validation or
        # a checkpoint ran (by all ranks; a checkpoint is written after our end-of-batch hook, a validation after it)
        self.images_timed, self.seconds_timed = 0, 0.0
        self.batch_started_at = self.batch_ended_at = None
        self.paused = False
        self.written_at = time.monotonic()

    def throughput(self) -> dict:
        """train_images_per_s: the images of this session's iterations over their time, each iteration timed from the
        end of the one before (its first from its start), those during which a validation or a checkpoint ran left
        out: the rate of training alone; none before an iteration has been timed."""
        if not self.seconds_timed:
            return {}
        return {"train_images_per_s": round(self.images_timed / self.seconds_timed, 1)}

    def update(self, trainer: L.Trainer, fields: dict, drop: tuple[str, ...] = ()) -> None:
        if not trainer.is_global_zero:
            return
        summary = {k: v for k, v in read_summary(self.run_dir).items() if k not in drop}
        errors = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(EVALUATION_PREFIXES)}
        write_json_atomically(self.run_dir / "summary.json", {**summary, **fields, **errors})
        self.written_at = time.monotonic()

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str, **extra) -> None:
        if not trainer.is_global_zero:
            return
        device = trainer.strategy.root_device
        self.update(trainer, {
            "status": status,
            "run": self.run_dir.name,
            "experiment": self.run_dir.parent.name,
            "model": pl_module.hparams.model,
            "data": type(trainer.datamodule).__name__,
            "dataset": trainer.datamodule.dataset,  # "CIFAR-10 (JPEG copy)": the report labels the run's numbers by it
            "seed": int(os.environ.get("PL_GLOBAL_SEED", 0)),  # set by LightningCLI's seed_everything
            **get_spec(pl_module.hparams.model).columns(pl_module.hparams.shortcut),  # family, depth, shortcut
            "params": pl_module.num_params,
            "steps": trainer.global_step,
            "max_steps": trainer.max_steps,
            "budget": self.budget,  # None: the paper's full schedule; "1/32": its iteration counts scaled by 1/32
            "wall_time_s": round(self.previous_wall_time + time.monotonic() - self.started, 1),
            "devices": trainer.world_size,
            "device": device_name(device),
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
        if self.batch_ended_at is None:
            self.batch_started_at = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not self.paused:
            self.seconds_timed += now - (self.batch_ended_at or self.batch_started_at)
            self.images_timed += len(batch[1]) * trainer.world_size  # each rank's share of the global batch
        self.batch_ended_at, self.paused = now, False
        # rank 0's clock alone decides (only rank 0 writes it, and no rank waits for another)
        if trainer.is_global_zero and now - self.written_at >= PROGRESS_EVERY_S:
            self.write(trainer, pl_module, "running")

    def on_validation_start(self, trainer, pl_module) -> None:
        self.paused = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self.write(trainer, pl_module, "running")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.paused = True
        self.write(trainer, pl_module, "running")

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "evaluating")

    def on_test_end(self, trainer, pl_module) -> None:
        self.update(trainer, {})  # the evaluation's errors; the status stays what it was

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return  # a failed evaluation leaves the run's summary alone
        stopped = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        self.write(trainer, pl_module, "interrupted" if stopped else "failed",
                   error=f"{type(exception).__name__}: {exception}")


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
