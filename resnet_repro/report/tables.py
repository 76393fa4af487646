"""The experiment's table: one row per net, measured error over seeds next to the paper's number."""

import pandas as pd

from ..models import get_spec
from .paper import paper_error


def describe_runs(group: pd.DataFrame) -> str:
    """'2/3 finished; s2 failed': every run of the row is accounted for, the unfinished ones by name."""
    finished = (group.status == "finished").sum()
    others = [f"s{int(r.seed)} {r.status}" if pd.notna(r.seed) else f"{r.run} {r.status}"
              for r in group.itertuples() if r.status != "finished"]
    return "; ".join([f"{finished}/{len(group)} finished", *others])


def error_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Errors in percent. Mean, std (over seeds, ddof=1) and best are over finished runs only; a row whose
    runs are not all finished says so in its `runs` cell, and one with none finished has no error."""
    rows = []
    keys = runs[["model", "shortcut"]].astype(str).apply(tuple, axis=1)
    for _, group in runs.groupby(keys, sort=False):
        done = group[group.status == "finished"]
        first = group.iloc[0]
        paper_top1, paper_top5 = paper_error(first.data, first.model, first.shortcut)
        error = 100 * done.error
        row = {
            "model": first.model,
            "shortcut": first.shortcut,
            "runs": describe_runs(group),
            "seeds": len(done),
            "error mean": error.mean(),
            "error std": error.std(ddof=1),
            "error best": error.min(),
            "paper": paper_top1,
            "difference": error.mean() - paper_top1 if paper_top1 is not None else float("nan"),
            "train error": 100 * done.train_error.mean(),
            "params": first.params,
            "iterations": done.steps.max() if len(done) else first.max_steps,
        }
        if group.top5_error.notna().any():
            row["top-5 mean"], row["paper top-5"] = 100 * done.top5_error.mean(), paper_top5
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """Markdown with errors to two decimals; empty cells where there is nothing to show."""
    shown = table.astype(object).where(table.notna(), "")
    for column in table.columns:
        if table[column].dtype.kind == "f" and column not in ("params", "iterations"):
            shown[column] = table[column].map(lambda x: "" if pd.isna(x) else f"{x:.2f}")
    for column in ("params", "iterations"):
        shown[column] = table[column].map(lambda x: "" if pd.isna(x) else f"{int(x):,}")
    return shown.to_markdown(index=False, disable_numparse=True)  # keep "3.00" as written


def findings(table: pd.DataFrame) -> list[str]:
    """The paper's two findings, checked on the finished nets' final training error: a deeper plain net trains
    worse than a shallower one (degradation), and a residual net trains better than its plain twin."""
    done = table[table.seeds > 0].set_index("model")["train error"]
    depth = {model: get_spec(model).depth for model in done.index}
    plain = sorted((m for m in done.index if m.startswith("plain")), key=depth.get)
    lines = []
    for shallow, deep in zip(plain, plain[1:]):
        holds = "holds" if done[deep] > done[shallow] else "does not hold"
        lines.append(f"Degradation: {deep} trains worse than {shallow}: {done[deep]:.2f}% vs {done[shallow]:.2f}% "
                     f"training error: {holds}.")
    for model in done.index:
        twin = model.replace("resnet", "plain")
        if model.startswith("resnet") and twin in done.index:
            holds = "holds" if done[model] < done[twin] else "does not hold"
            lines.append(f"Residual learning: {model} trains better than {twin}: {done[model]:.2f}% vs "
                         f"{done[twin]:.2f}% training error: {holds}.")
    return lines
