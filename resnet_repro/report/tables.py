"""The experiment's table (our numbers beside the paper's and a reference reproduction's, under the same test
protocol and as the same statistic) and the paper's findings, each checked against its noise."""

import pandas as pd

from ..models import get_spec
from ..paper import paper_numbers, reference_number
from ..stats import bootstrap_difference, verdict
from .collect import final_train_window


def describe_runs(group: pd.DataFrame) -> str:
    """'2/3 finished; s2 failed': every run of the row is accounted for, the unfinished ones by name."""
    finished = (group.status == "finished").sum()
    others = [f"s{int(r.seed)} {r.status}" if pd.notna(r.seed) else f"{r.run} {r.status}"
              for r in group.itertuples() if r.status != "finished"]
    return "; ".join([f"{finished}/{len(group)} finished", *others])


def ours_as(statistic: str, errors: pd.Series) -> tuple[str, float]:
    """Our errors (percent, one per finished seed) as the paper's statistic: (text, the number compared)."""
    n = len(errors)
    if n == 0:
        return "", float("nan")
    if statistic.startswith("best of"):
        return f"{errors.min():.2f} (best of {n})", errors.min()
    if n == 1:
        return f"{errors.iloc[0]:.2f} (1 run)", errors.iloc[0]
    return f"{errors.mean():.2f}±{errors.std(ddof=1):.2f} (mean±std of {n})", errors.mean()


def error_table(runs: pd.DataFrame, evaluated: pd.DataFrame) -> pd.DataFrame:
    """One row per (net, test protocol, metric, paper statistic), in percent, over the finished runs' latest
    evaluation under that protocol. A paper number that is the best of N is set beside our best, a mean±std
    beside our mean±std, a single run beside our mean (the only estimate of one run's value we have). A run at a
    budget (a fraction of the paper's schedule) is never compared: the paper's number stands beside it as
    context, marked so, with no difference."""
    rows = []
    for group_name, group in runs.groupby("group", sort=False):
        if (group.status == "not started").all():  # listed in experiment.json, nothing to say yet: the README lists it
            continue
        first, done = group.iloc[0], group[group.status == "finished"]
        results = evaluated[evaluated.run.isin(done.run)]
        for protocol in results.protocol.unique() if len(results) else [None]:
            here = results[results.protocol == protocol]
            budget = first.budget if isinstance(first.budget, str) else None  # None: the full schedule
            base = {"net": group_name, "budget": budget or "full", "protocol": protocol or "not evaluated",
                    "runs": describe_runs(group),
                    "train error": 100 * done.train_error.mean(), "params": first.params,
                    "iterations": done.steps.max() if len(done) else first.max_steps,
                    "test images": here.images.max() if len(here) else float("nan")}
            # the option as built, the family's default filled in
            shortcut = get_spec(first.model).shortcut(first.shortcut) if protocol else None
            papers = paper_numbers(first.data, first.model, shortcut, protocol) if protocol else []
            reference = reference_number(first.data, first.model, shortcut, protocol) if protocol else None
            for metric, column, key in [("top-1", "error", "top1"), ("top-5", "top5_error", "top5")]:
                errors = 100 * here[column].dropna()
                if metric == "top-5" and errors.empty:
                    continue
                for paper in [p for p in papers if key in p] or [{}]:
                    statistic = paper.get("statistic", "")
                    text, value = ours_as(statistic, errors)
                    number = paper.get(key)
                    paper_text = (f"{number:.2f}±{paper['top1_std']:.2f}" if "top1_std" in paper and key == "top1"
                                  else f"{number:.2f}") if number is not None else ""
                    if budget and paper_text:
                        paper_text += " (full schedule: context, not comparable)"
                    rows.append({**base, "metric": metric, "ours": text, "statistic": statistic, "paper": paper_text,
                                 "source": paper.get("source", ""),
                                 "difference": value - number if number is not None and not budget else float("nan"),
                                 "reference": f"{reference[key]:.2f}" if reference and key in reference else "",
                                 "reference source": reference["source"] if reference and key in reference else ""})
    columns = ["net", "budget", "protocol", "metric", "runs", "ours", "statistic", "paper", "source", "difference",
               "reference", "reference source", "train error", "test images", "params", "iterations"]
    return pd.DataFrame(rows, columns=columns)


def format_table(table: pd.DataFrame) -> str:
    """Markdown with numbers to two decimals; empty cells where there is nothing to show."""
    shown = table.astype(object).where(table.notna(), "")
    for column in ("difference", "train error"):
        shown[column] = table[column].map(lambda x: "" if pd.isna(x) else f"{x:+.2f}" if column == "difference"
                                          else f"{x:.2f}")
    for column in ("params", "iterations", "test images"):
        shown[column] = table[column].map(lambda x: "" if pd.isna(x) else f"{int(x):,}")
    return shown.to_markdown(index=False, disable_numparse=True)  # keep "3.00" as written


def findings(runs: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """The paper's two findings on the finished nets' final training error (the last 5% of iterations, per
    seed): a deeper plain net trains worse than a shallower one (degradation), and a residual net trains
    better than its plain twin; each with a 95% bootstrap interval over seeds and iterations."""
    done = runs[(runs.status == "finished") & runs.model.notna()]
    samples = {}
    for model, group in done.groupby("model"):
        samples[model] = [100 * final_train_window(curves[curves.run == run]).to_numpy() for run in group.run]
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
    return lines
