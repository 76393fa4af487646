"""The fit's config policy: the Trainer's defaults, which settings define a run, and the checks of values that
Lightning and jsonargparse leave open."""

import re
import warnings
from fractions import Fraction
from pathlib import Path

from .data import check_protocols, data_module_class
from .models import get_spec


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


