"""Run directories (or W&B runs) into tidy DataFrames: one row per run, one row per evaluation under a test
protocol, and the curves of all runs."""

import io
import re
import sys
from pathlib import Path

import pandas as pd

from ..files import read_json
from ..rundir import read_summary

RUN_COLUMNS = ["run", "group", "experiment", "model", "shortcut", "seed", "data", "status", "params", "steps",
               "max_steps", "budget", "train_error", "git_revision", "command"]
EVALUATION_COLUMNS = ["run", "protocol", "error", "top5_error", "images", "step"]
PROTOCOL_METRIC = re.compile(r"test/(?P<protocol>\w+)/(?P<name>error|top5_error|images)$")


def tidy_metrics(wide: pd.DataFrame) -> pd.DataFrame:
    """Logged rows (a step column and one column per metric) to one row per step and metric name; a step
    logged twice (a resumed run re-logs the iterations after its last checkpoint, an evaluation repeated on the
    same weights) keeps its last value."""
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


def final_train_window(curves: pd.DataFrame, fraction: float = 0.05) -> pd.Series:
    """The per-iteration training errors of the last `fraction` of the logged iterations: their mean is a run's
    final training error (one batch is a noisy estimate), their spread its batch-to-batch noise."""
    train = curves[curves.metric == "train/error"].value
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


def read_manifest(folder: Path) -> dict | None:
    """An experiment folder's experiment.json (written by `run`), or None. It may come from elsewhere: it must
    be an object whose runs are folders `<runs root>/<experiment>/<run>` of the runs root this folder is in,
    else it is refused in one line, so that it cannot make `report` read (and quote) files anywhere else."""
    folder = Path(folder)
    path = folder / "experiment.json"
    if not path.is_file():
        return None
    manifest = read_json(path)
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, str) for run in runs):
        raise ValueError(f"{path} is not an experiment manifest of resnet-repro (an object whose runs are a list of "
                         f"run folders): restore it, or delete it to report every run in {folder}")
    root = folder.resolve().parent
    outside = [run for run in runs if (folder / run).resolve().parent.parent != root]
    if outside:
        raise ValueError(f"{path} names run folders outside {root}/<experiment>/<run> ({', '.join(outside[:3])}): "
                         f"a manifest names runs of its own runs root only; pass other experiment folders yourself")
    return manifest


def run_dirs(folder: Path) -> list[Path]:
    """The runs of an experiment: those its experiment.json names (some may live in another experiment's folder
    of the same runs root), else every run directory in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: pass runs/<experiment>, the folder of an experiment's runs")
    manifest = read_manifest(folder)
    if manifest is not None:
        return [(folder / path).resolve() for path in manifest["runs"]]
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def budgets(runs: pd.DataFrame) -> list[str]:
    """The budgets ("1/32") of the runs trained for a fraction of the paper's schedule (none: all full)."""
    return sorted({budget for budget in runs.budget if isinstance(budget, str)})


def collect_runs(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, evaluations, curves) of the runs of one or more experiment folders (each run once). Errors are
    fractions. Runs without a finished summary keep their status (running, failed, not started)."""
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


def tabulate_runs(found: list[tuple[str, dict, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(name, summary, tidy metrics) of each run into the (runs, evaluations, curves) frames."""
    runs, evaluated = [], []
    for name, summary, metrics in found:
        runs.append({
            "run": name, "group": re.sub(r"-s\d+$", "", name), "experiment": summary.get("experiment"),
            "model": summary.get("model"), "shortcut": summary.get("shortcut"), "seed": summary.get("seed"),
            "data": summary.get("data"), "status": summary.get("status", "not started"),
            "params": summary.get("params"), "steps": summary.get("steps"), "max_steps": summary.get("max_steps"),
            "budget": summary.get("budget"), "train_error": final_train_window(metrics).mean(),
            "git_revision": summary.get("git_revision"),
            "command": summary.get("command"),
        })
        evaluated += evaluations(name, metrics)
    curves = pd.concat([metrics.assign(run=name) for name, _, metrics in found], ignore_index=True)
    return (pd.DataFrame(runs, columns=RUN_COLUMNS), pd.DataFrame(evaluated, columns=EVALUATION_COLUMNS), curves)


def collect_wandb(project: str, group: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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
            "experiment": group, "model": model["model"], "shortcut": model.get("shortcut"),
            "seed": config.get("seed_everything"), "data": config["data"]["class_path"].rsplit(".", 1)[-1],
            "params": params, "status": {"finished": "finished", "running": "running"}.get(run.state, "failed"),
            "steps": run.summary.get("trainer/global_step"), "max_steps": config["trainer"]["max_steps"],
            "budget": config.get("budget"),
            "git_revision": None,
        }
        found.append((run.name, summary, tidy_metrics(history)))
    if not found:
        raise FileNotFoundError(f"no W&B runs in {project} with group {group}")
    return tabulate_runs(found)
