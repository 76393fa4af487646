"""Run directories (or W&B runs) into tidy DataFrames: one row per run, one row per evaluation under a test
protocol, and the curves of all runs. Every error is in percent, in all three; a net is named by model, family
(plain / residual), depth and shortcut (the option as built, "none" for a plain net), as in W&B's columns."""

import io
import sys
from pathlib import Path

import pandas as pd

from ..rundir import LOGGED_PREFIXES, LR, PROTOCOL_METRIC, TRAIN_ERROR, read_summary, run_dirs, whole_lines

RUN_COLUMNS = ["run", "group", "experiment", "model", "family", "depth", "shortcut", "seed", "data", "dataset", "status", "params", "steps",
               "max_steps", "budget", "train_error", "wall_time_s", "devices", "device", "git_revision", "command"]
EVALUATION_COLUMNS = ["run", "protocol", "error", "top5_error", "images", "step"]


def tidy_metrics(wide: pd.DataFrame) -> pd.DataFrame:
    """Logged rows (a step column and one column per metric) to one row per step and metric name, errors (logged
    as fractions) in percent; a step logged twice (an evaluation repeated on the same weights) keeps its last value."""
    metrics = [c for c in wide.columns if c.startswith(LOGGED_PREFIXES) or c == LR]
    long = wide.melt(id_vars="step", value_vars=metrics, var_name="metric", value_name="value")
    long = long.dropna(subset=["value"]).astype({"step": int, "value": float})
    errors = long.metric.str.endswith("error")
    long.loc[errors, "value"] = 100 * long.loc[errors, "value"]
    return long.drop_duplicates(["step", "metric"], keep="last").sort_values(["metric", "step"], ignore_index=True)


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's metrics.csv, tidy. A last line without its newline (a writer killed mid-line, or one writing now)
    is left out with a warning; anything else that is not a number fails naming the file and line."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return tidy_metrics(pd.DataFrame(columns=["step"]))
    whole, torn = whole_lines(path.read_bytes())
    if torn:
        print(f"warning: {path} ends in an incomplete line ({torn[:40]!r}): left out", file=sys.stderr)
    text = whole.decode(errors="replace")
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


def final_train_window(curves: pd.DataFrame, fraction: float = 0.05) -> pd.Series:
    """The per-iteration training errors of the last `fraction` of the logged iterations: their mean is a run's
    final training error (one batch is a noisy estimate), their spread its batch-to-batch noise."""
    train = curves[curves.metric == TRAIN_ERROR].value
    return train.tail(max(1, round(len(train) * fraction))) if len(train) else train


def evaluations(name: str, metrics: pd.DataFrame) -> list[dict]:
    """The latest evaluation of a run under each test protocol it was evaluated under (`test/<protocol>/...`)."""
    found = {}
    for row in metrics.itertuples():
        match = PROTOCOL_METRIC.match(row.metric)
        if match:  # rows are sorted by step: the last one of a protocol is its latest evaluation
            found.setdefault(match["protocol"], {"run": name, "protocol": match["protocol"]})
            found[match["protocol"]].update({match["name"]: row.value, "step": row.step})
    return list(found.values())


def budgets(runs: pd.DataFrame) -> list[str]:
    """The budgets ("1/32") of the runs trained for a fraction of the paper's schedule (none: all full)."""
    return sorted({budget for budget in runs.budget if isinstance(budget, str)})


def collect_runs(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, evaluations, curves) of the runs of one or more experiment folders (each run once), errors in
    percent. Runs without a finished summary keep their status (running, failed, not started)."""
    found, seen = [], set()
    for folder in folders:
        for run_dir in run_dirs(folder):
            if run_dir in seen:
                continue
            seen.add(run_dir)
            summary, metrics = read_summary(run_dir), read_metrics(run_dir)
            if summary or not metrics.empty or (Path(folder) / "experiment.json").is_file():
                found.append((run_dir.name, summary, metrics))
    if not found:
        raise FileNotFoundError(f"no run directories in {', '.join(map(str, folders))}: run an experiment first "
                                f"(resnet-repro run experiments/...)")
    return tabulate_runs(found)


def group_of(name: str, seed: int | None) -> str:
    """A run's name without its seed (`resnet56-s2` -> `resnet56`): the runs of a table's row, one per seed."""
    return name.removesuffix(f"-s{seed}") if seed is not None else name


def tabulate_runs(found: list[tuple[str, dict, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(name, summary, tidy metrics) of each run into the (runs, evaluations, curves) frames."""
    runs, evaluated = [], []
    for name, summary, metrics in found:
        runs.append({
            "run": name, "group": group_of(name, summary.get("seed")), "experiment": summary.get("experiment"),
            "model": summary.get("model"), "family": summary.get("family"), "depth": summary.get("depth"),
            "shortcut": summary.get("shortcut"), "seed": summary.get("seed"),
            "data": summary.get("data"), "dataset": summary.get("dataset"),
            "status": summary.get("status", "not started"),
            "params": summary.get("params"), "steps": summary.get("steps"), "max_steps": summary.get("max_steps"),
            "budget": summary.get("budget"), "train_error": final_train_window(metrics).mean(),
            "wall_time_s": summary.get("wall_time_s"), "devices": summary.get("devices"), "device": summary.get("device"),
            "git_revision": summary.get("git_revision"),
            "command": summary.get("command"),
        })
        evaluated += evaluations(name, metrics)
    curves = pd.concat([metrics.assign(run=name) for name, _, metrics in found], ignore_index=True)
    return (pd.DataFrame(runs, columns=RUN_COLUMNS), pd.DataFrame(evaluated, columns=EVALUATION_COLUMNS), curves)


def collect_wandb(project: str, group: str) -> tuple:
    """The report's (runs, evaluations, curves) frames from the W&B runs of one group (an experiment), through
    W&B's public API: the run's resolved config (logged at its start), its state, and its full metric history."""
    import wandb  # here: a report read from disk needs neither W&B nor the nets

    from ..models import get_spec
    from ..models.size import count_params, meta_model

    found = []
    for run in wandb.Api().runs(project, filters={"group": group}):
        config = run.config
        model = config["model"]
        history = pd.DataFrame(run.scan_history()).rename(columns={"trainer/global_step": "step"})
        params = count_params(meta_model(model["model"], model.get("shortcut"), model["num_classes"]))
        summary = {
            "experiment": group, "model": model["model"],
            **get_spec(model["model"]).columns(model.get("shortcut")),
            "seed": config.get("seed_everything"), "data": config["data"]["class_path"].rsplit(".", 1)[-1],
            "dataset": config.get("dataset"),
            "params": params, "status": {"finished": "finished", "running": "running"}.get(run.state, "failed"),
            "steps": run.summary.get("trainer/global_step"), "max_steps": config["trainer"]["max_steps"],
            "budget": config.get("budget"),
            "git_revision": None,
        }
        found.append((run.name, summary, tidy_metrics(history)))
    if not found:
        raise FileNotFoundError(f"no W&B runs in {project} with group {group}")
    return tabulate_runs(found)
