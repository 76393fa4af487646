"""Run directories (or W&B runs) into two tidy DataFrames: one row per run, and the curves of all runs."""

import io
import sys
from pathlib import Path

import pandas as pd

from ..rundir import read_summary

RUN_COLUMNS = ["run", "model", "shortcut", "seed", "data", "status", "params", "steps", "max_steps",
               "train_error", "error", "top5_error", "eval_metric", "git_revision", "command"]


def tidy_metrics(wide: pd.DataFrame) -> pd.DataFrame:
    """Logged rows (a step column and one column per metric) to one row per step and metric name; a step
    logged twice (a resumed run re-logs the iterations after its last checkpoint) keeps its last value."""
    metrics = [c for c in wide.columns if c.startswith(("train/", "val/", "test/")) or c == "lr"]
    long = wide.melt(id_vars="step", value_vars=metrics, var_name="metric", value_name="value")
    long = long.dropna(subset=["value"]).astype({"step": int, "value": float})
    return long.drop_duplicates(["step", "metric"], keep="last").sort_values(["metric", "step"], ignore_index=True)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's metrics.csv, tidy. A last line without its newline (a writer killed mid-line, or one writing now)
    is left out with a warning; anything else that is not a number fails naming the file and line."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return tidy_metrics(pd.DataFrame(columns=["step"]))
    text = path.read_text(errors="replace")
    if text and not text.endswith("\n"):
        torn = text[text.rfind("\n") + 1:]
        print(f"warning: {path} ends in an incomplete line ({torn[:40]!r}): left out", file=sys.stderr)
        text = text[:len(text) - len(torn)]
    try:
        wide = pd.read_csv(io.StringIO(text)) if text else pd.DataFrame(columns=["step"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"{path} cannot be read: {error}; repair or delete the line") from error
    for column in wide.columns:
        numbers = pd.to_numeric(wide[column], errors="coerce")
        bad = wide[column].notna() & numbers.isna()
        if bad.any():
            line = int(bad.idxmax()) + 2  # the header is line 1
            raise ValueError(f"{path} line {line}: {column} is {wide[column][bad].iloc[0]!r}, not a number; repair "
                             f"or delete the line")
        wide[column] = numbers
    if "step" not in wide.columns:
        raise ValueError(f"{path} has no step column: it is not a metrics.csv written by resnet-repro")
    return tidy_metrics(wide)


def final_train_error(curves: pd.DataFrame, fraction: float = 0.05) -> float:
    """Mean training error over the last `fraction` of the logged iterations (one batch is a noisy estimate)."""
    train = curves[curves.metric == "train/error"]
    if train.empty:
        return float("nan")
    return train.value.tail(max(1, round(len(train) * fraction))).mean()


def last(curves: pd.DataFrame, metric: str) -> float:
    values = curves[curves.metric == metric].value
    return values.iloc[-1] if len(values) else float("nan")


def collect_runs(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of every run directory below `experiment_dir`. A run's error is the last logged test error
    (the test set during fit, or a later `resnet-repro test`), else the last validation error; errors are
    fractions. Runs without a finished summary keep their status (running, failed, not started)."""
    found = []
    for run_dir in sorted(p for p in Path(experiment_dir).iterdir() if p.is_dir()):
        summary, metrics = read_summary(run_dir), read_metrics(run_dir)
        if summary or not metrics.empty:  # else not a run directory
            found.append((run_dir.name, summary, metrics))
    if not found:
        raise FileNotFoundError(f"no run directories in {experiment_dir}: run an experiment first "
                                f"(resnet-repro run experiments/...)")
    return tabulate_runs(found)


def tabulate_runs(found: list[tuple[str, dict, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(name, summary, tidy metrics) of each run into the (runs, curves) frames."""
    runs = []
    for name, summary, metrics in found:
        eval_metric = "test" if (metrics.metric == "test/error").any() else "val"
        runs.append({
            "run": name, "model": summary.get("model"), "shortcut": summary.get("shortcut"),
            "seed": summary.get("seed"), "data": summary.get("data"), "status": summary.get("status", "not started"),
            "params": summary.get("params"), "steps": summary.get("steps"), "max_steps": summary.get("max_steps"),
            "train_error": final_train_error(metrics), "error": last(metrics, f"{eval_metric}/error"),
            "top5_error": last(metrics, f"{eval_metric}/top5_error"), "eval_metric": eval_metric,
            "git_revision": summary.get("git_revision"), "command": summary.get("command"),
        })
    curves = pd.concat([metrics.assign(run=name) for name, _, metrics in found], ignore_index=True)
    return pd.DataFrame(runs, columns=RUN_COLUMNS), curves


def collect_wandb(project: str, group: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same frames from the W&B runs of one group (an experiment), through W&B's public API: the run's
    resolved config (logged at its start), its state, and its full metric history."""
    import wandb

    from ..analysis.complexity import count_params, meta_model

    found = []
    for run in wandb.Api().runs(project, filters={"group": group}):
        config = run.config
        model = config["model"]
        history = pd.DataFrame(run.scan_history()).rename(columns={"trainer/global_step": "step"})
        params = count_params(meta_model(model["model"], model.get("shortcut"), model["num_classes"]))
        summary = {
            "model": model["model"], "shortcut": model.get("shortcut"), "seed": config.get("seed_everything"),
            "data": config["data"]["class_path"].rsplit(".", 1)[-1], "params": params,
            "status": {"finished": "finished", "running": "running"}.get(run.state, "failed"),
            "steps": run.summary.get("trainer/global_step"), "max_steps": config["trainer"]["max_steps"],
            "git_revision": None,
        }
        found.append((run.name, summary, tidy_metrics(history)))
    if not found:
        raise FileNotFoundError(f"no W&B runs in {project} with group {group}")
    return tabulate_runs(found)
