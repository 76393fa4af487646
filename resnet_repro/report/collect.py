"""Run directories (or W&B runs) into two tidy DataFrames: one row per run, and the curves of all runs."""

from pathlib import Path

import pandas as pd

from ..rundir import read_summary

RUN_COLUMNS = ["run", "model", "shortcut", "seed", "data", "status", "params", "steps", "max_steps",
               "train_error", "error", "top5_error", "eval_metric", "git_revision"]


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv with one row per step and metric name; a step logged twice (a resumed run re-logs the
    iterations after its last checkpoint) keeps its last value."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["step", "metric", "value"])
    wide = pd.read_csv(path).drop(columns=["epoch"], errors="ignore")
    long = wide.melt(id_vars="step", var_name="metric", value_name="value").dropna(subset=["value"])
    return long.drop_duplicates(["step", "metric"], keep="last").sort_values(["metric", "step"], ignore_index=True)


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
    runs, curves = [], []
    for run_dir in sorted(p for p in Path(experiment_dir).iterdir() if p.is_dir()):
        summary, metrics = read_summary(run_dir), read_metrics(run_dir)
        if not summary and metrics.empty:
            continue  # not a run directory
        eval_metric = "test" if (metrics.metric == "test/error").any() else "val"
        runs.append({
            "run": run_dir.name, "model": summary.get("model"), "shortcut": summary.get("shortcut"),
            "seed": summary.get("seed"), "data": summary.get("data"), "status": summary.get("status", "not started"),
            "params": summary.get("params"), "steps": summary.get("steps"), "max_steps": summary.get("max_steps"),
            "train_error": final_train_error(metrics), "error": last(metrics, f"{eval_metric}/error"),
            "top5_error": last(metrics, f"{eval_metric}/top5_error"), "eval_metric": eval_metric,
            "git_revision": summary.get("git_revision"),
        })
        curves.append(metrics.assign(run=run_dir.name))
    if not runs:
        raise FileNotFoundError(f"no run directories in {experiment_dir}: run an experiment first "
                                f"(resnet-repro run experiments/...)")
    return pd.DataFrame(runs, columns=RUN_COLUMNS), pd.concat(curves, ignore_index=True)
