"""Weights & Biases, all of it: a run's W&B logger (offline unless a key is configured; never required), the end of a
process's W&B run, and the report's reading of an experiment's runs back from W&B."""

import netrc
import os
import sys
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger

from .models import get_spec
from .rundir import metrics_rows

INIT_TIMEOUT_S = 20  # how long a W&B run may take to start before this run goes on with CSV only


def start_wandb(run_dir: Path, config: dict, dataset: str) -> Logger | None:
    """A W&B logger for the run, or None with one warning when W&B cannot be used: training never depends on
    it. Offline unless WANDB_MODE says otherwise or an API key is configured; resumes the run's W&B id."""
    try:
        import wandb
        offline = os.environ.get("WANDB_MODE", "online" if has_wandb_key() else "offline") in ("offline", "dryrun")
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        # W&B waits 90 s for its server by default; a run that cannot reach it should not wait that long to go on
        settings = wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S)))
        columns = wandb_columns(run_dir, config, dataset)
        logger = RunWandbLogger(name=run_dir.name, group=run_dir.parent.name, project="resnet-repro",
                                save_dir=str(run_dir), offline=offline, id=run_id, resume="allow" if run_id else None,
                                config={**config, **columns}, settings=settings)
        logger.experiment  # start W&B now, so that a failure to start shows here and not mid-run
        id_file.write_text(logger.version + "\n")
        if run_id:
            take_up_history(logger, run_dir)
        return logger
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        print(f"warning: W&B is unusable ({type(error).__name__}: {reason}); this run logs to {run_dir}/metrics.csv "
              f"only", file=sys.stderr)
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()  # end W&B's service now rather than have it retry at exit
        return None


def wandb_columns(run_dir: Path, config: dict, dataset: str) -> dict:
    """Flat keys of the run's W&B config that a researcher groups and colours runs by in the W&B UI (Figure 6:
    group by family, colour by depth): dataset (as the data module names it: "CIFAR-10 (JPEG copy)"), family (plain
    / residual), depth, shortcut, seed, experiment, budget (the fraction of the paper's schedule: "1" for the full
    one)."""
    return {
        "dataset": dataset,
        **get_spec(config["model"]["model"]).columns(config["model"]["shortcut"]),
        "seed": config["seed_everything"],
        "experiment": Path(run_dir).parent.name,
        "budget": config.get("budget") or "1",
    }


class RunWandbLogger(WandbLogger):
    """The W&B config is the run's config (as config.yaml holds it) and its flat columns, given once at the start.
    Lightning's own record of the module's hyperparameters, at the start of fit and of each test, is left out:
    it would add a second copy with `shortcut: None` (the family's default) beside the `shortcut` column. Rows of
    iterations that W&B already holds (`logged_through`, see take_up_history) are not logged again."""

    logged_through = 0

    def log_hyperparams(self, params) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        if step is None or step > self.logged_through:
            super().log_metrics(metrics, step)


def take_up_history(logger: RunWandbLogger, run_dir: Path) -> None:
    """A resumed run's W&B record goes on with the run's one history, keyed by the iteration. Offline, each session
    is a new record (`wandb sync` of an older one after it would replace the history): it is given the whole
    history so far, the rows of metrics.csv (cut at the iteration the run resumes from). Online, W&B's server holds
    the run up to its last logged iteration: it gets the rows it lacks, and the iterations the resumed run repeats
    up to there are not sent again."""
    known = logger.experiment.summary.get("trainer/global_step")  # None in a new offline record
    for step, metrics in metrics_rows(run_dir):
        if known is None or step > known:
            WandbLogger.log_metrics(logger, metrics, step)
    logger.logged_through = known or 0


def newest_offline_records(run_dirs: list[Path]) -> list[Path]:
    """Each run's newest offline W&B record (`wandb/offline-run-<time>-<id>`): a resumed run's holds its whole
    history (take_up_history), and it alone is to be uploaded."""
    newest = [max(records, key=lambda record: (record.name.split("-")[2], record.stat().st_mtime_ns))
              for records in (sorted(Path(run).glob("wandb/offline-run-*")) for run in run_dirs) if records]
    return sorted(newest)


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


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
