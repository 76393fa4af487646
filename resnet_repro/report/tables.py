"""The experiment's table (our numbers beside the paper's and a reference reproduction's, under the same test
protocol and as the same statistic) and the paper's findings, each checked against its noise."""

import pandas as pd

from ..models import get_spec
from ..paper import PAPER_DATASETS, copied_dataset, paper_numbers, reference_number
from ..stats import bootstrap_difference, verdict
from .collect import final_train_window


NAN = float("nan")
# what a reader compares first (a notebook shows a frame's first and last columns), then the detail behind it
COLUMNS = ["net", "data", "shortcut", "budget", "protocol", "metric", "ours", "paper", "difference", "statistic",
           "paper std", "source", "reference", "reference source", "runs", "finished", "unfinished", "n", "mean", "std",
           "best", "train error", "test images", "params", "iterations"]
# table.md's columns, each with the line that says what it holds; one is shown only where some row has a value
SHOWN = {
    "net": "",
    "data": "the data set trained and tested on (a copy of the paper's is named: the paper's number then stands "
            "beside ours as context)",
    "budget": "the fraction of the paper's schedule trained (the paper's number then stands beside ours as context)",
    "protocol": "the test protocol",
    "metric": "",
    "runs": "finished runs of all, the others named",
    "ours": "our error in percent, as the paper's statistic: best of N beside a best of N, mean±std (ddof=1) "
            "beside a mean±std, the mean beside one run",
    "statistic": "the paper's statistic",
    "paper": "the paper's number",
    "source": "its table",
    "difference": "ours minus the paper's, in points",
    "reference": "a well-known reproduction's number under the same protocol",
    "reference source": "that reproduction",
    "train error": "the mean training error over the last 5% of iterations (percent)",
    "test images": "the images each error is over",
    "params": "",
    "iterations": "",
}


def unfinished(group: pd.DataFrame) -> str:
    """'s2 failed; s3 running': the runs of a row that are not finished, by seed (or by name)."""
    return "; ".join(f"s{int(r.seed)} {r.status}" if pd.notna(r.seed) else f"{r.run} {r.status}"
                     for r in group.itertuples() if r.status != "finished")


def error_table(runs: pd.DataFrame, evaluated: pd.DataFrame) -> pd.DataFrame:
    """One row per (net, test protocol, metric, paper statistic), errors in percent, one number per cell, over
    the finished runs' latest evaluation under that protocol: their number n, mean, std (ddof=1) and best, and
    `ours`, the one compared with the paper's number of the same statistic: our best beside a best of N, our
    mean beside a mean±std or a single run (the only estimate of one run's value we have). A run at a budget (a
    fraction of the paper's schedule) or on a copy of the paper's data set (a JPEG copy of CIFAR-10) is never
    compared: the paper's number stands beside it, with no difference."""
    rows = []
    for group_name, group in runs.groupby("group", sort=False):
        if (group.status == "not started").all():  # listed in experiment.json, nothing to say yet: the README lists it
            continue
        first, done = group.iloc[0], group[group.status == "finished"]
        results = evaluated[evaluated.run.isin(done.run)]
        for protocol in results.protocol.unique() if len(results) else [None]:
            here = results[results.protocol == protocol]
            budget = first.budget if isinstance(first.budget, str) else None  # None: the full schedule
            # the option as built, the family's default filled in
            shortcut = get_spec(first.model).shortcut(first.shortcut)
            comparable = budget is None and first.dataset in PAPER_DATASETS
            base = {"net": group_name, "data": first.dataset, "shortcut": shortcut or "none", "budget": budget or "full",
                    "protocol": protocol or "not evaluated", "runs": len(group), "finished": len(done),
                    "unfinished": unfinished(group), "train error": done.train_error.mean(),
                    "test images": here.images.max() if len(here) else NAN, "params": first.params,
                    "iterations": done.steps.max() if len(done) else first.max_steps}
            papers = paper_numbers(first.dataset, first.model, shortcut, protocol) if protocol else []
            reference = (reference_number(first.dataset, first.model, shortcut, protocol) if protocol else None) or {}
            for metric, column, key in [("top-1", "error", "top1"), ("top-5", "top5_error", "top5")]:
                errors = here[column].dropna()
                if metric == "top-5" and errors.empty:
                    continue
                n = len(errors)
                ours = {"n": n, "mean": errors.mean() if n else NAN, "std": errors.std(ddof=1) if n > 1 else NAN,
                        "best": errors.min() if n else NAN}
                for paper in [p for p in papers if key in p] or [{}]:
                    statistic = paper.get("statistic", "")
                    compared = ours["best"] if statistic.startswith("best of") else ours["mean"]
                    number = paper.get(key, NAN)
                    rows.append({**base, "metric": metric, **ours, "ours": compared, "statistic": statistic,
                                 "paper": number, "paper std": paper.get("top1_std", NAN) if key == "top1" else NAN,
                                 "source": paper.get("source", ""),
                                 "difference": compared - number if comparable else NAN,
                                 "reference": reference.get(key, NAN),
                                 "reference source": reference["source"] if key in reference else ""})
    return pd.DataFrame(rows, columns=COLUMNS)


def ours_text(row: pd.Series) -> str:
    n, mean = row["n"], row["mean"]
    if n == 0:
        return ""
    if row["statistic"].startswith("best of"):
        return f"{row['best']:.2f} (best of {n})"
    return f"{mean:.2f} (1 run)" if n == 1 else f"{mean:.2f}±{row['std']:.2f} (mean±std of {n})"


def paper_text(row: pd.Series) -> str:
    if pd.isna(row["paper"]):
        return ""
    text = f"{row['paper']:.2f}" + (f"±{row['paper std']:.2f}" if pd.notna(row["paper std"]) else "")
    unlike = [*(["full schedule"] if row["budget"] != "full" else []),
              *([f"on {copied_dataset(row['data'])} itself"] if row["data"] not in PAPER_DATASETS else [])]
    return text + (f" ({', '.join(unlike)}: context, not comparable)" if unlike else "")


def format_table(table: pd.DataFrame) -> str:
    """Markdown, numbers to two decimals, with a column only where some row has a value (the budget only where a
    row has one), under one line that says what the columns shown hold."""
    def number(format_):
        return lambda x: "" if pd.isna(x) else format_.format(x)

    shown = pd.DataFrame({
        "net": table.net, "data": table.data, "budget": table.budget.where(table.budget != "full", ""), "protocol": table.protocol,
        "metric": table.metric,
        "runs": [f"{r.finished}/{r.runs} finished" + (f"; {r.unfinished}" if r.unfinished else "")
                 for r in table.itertuples()],
        "ours": [ours_text(row) for _, row in table.iterrows()], "statistic": table.statistic,
        "paper": [paper_text(row) for _, row in table.iterrows()], "source": table.source,
        "difference": table.difference.map(number("{:+.2f}")), "reference": table.reference.map(number("{:.2f}")),
        "reference source": table["reference source"], "train error": table["train error"].map(number("{:.2f}")),
        **{column: table[column].map(number("{:,.0f}")) for column in ("test images", "params", "iterations")},
    }, columns=list(SHOWN)).fillna("")
    shown = shown[[column for column in shown if (shown[column] != "").any()]]
    legend = "; ".join(f"`{column}`: {SHOWN[column]}" for column in shown if SHOWN[column])
    return f"{legend}.\n\n{shown.to_markdown(index=False, disable_numparse=True)}"  # keep "3.00" as written


def findings(runs: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """The paper's three findings on the finished nets' final training error (the last 5% of iterations, per
    seed): a deeper plain net trains worse than a shallower one (degradation), a residual net trains better than
    its plain twin, and a deeper residual net better than a shallower one (Figure 6, middle); each with a 95%
    bootstrap interval over seeds and iterations."""
    done = runs[(runs.status == "finished") & runs.model.notna()]
    samples = {}
    for model, group in done.groupby("model"):
        samples[model] = [final_train_window(curves[curves.run == run]).to_numpy() for run in group.run]
        samples[model] = [s for s in samples[model] if len(s)]
    samples = {model: s for model, s in samples.items() if s}
    specs = {model: get_spec(model) for model in samples}

    def line(what: str, worse: str, better: str) -> str:
        difference, low, high = bootstrap_difference(samples[worse], samples[better])
        measured = (f"{what}: {better} trains better than {worse}: {difference:+.2f} points of training error "
                    f"[{low:+.2f}, {high:+.2f}] ({len(samples[worse])} and {len(samples[better])} seeds)")
        if min(sum(map(len, samples[worse])), sum(map(len, samples[better]))) < 2:
            return f"{measured}: cannot tell (one value of a net: its noise is unknown)."
        return f"{measured}: {verdict(low, high)}."

    by_depth = sorted(samples, key=lambda model: specs[model].depth)
    plain = [model for model in by_depth if not specs[model].residual]
    lines = [line("Degradation", deep, shallow) for shallow, deep in zip(plain, plain[1:])]
    lines += [line("Residual learning", specs[model].plain_twin, model) for model in by_depth
              if specs[model].plain_twin in samples]
    residual = [model for model in by_depth if specs[model].residual]
    lines += [line("Depth with residual learning", shallow, deep) for shallow, deep in zip(residual, residual[1:])]
    return lines
