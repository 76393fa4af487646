"""The paper's training-curve figures from run logs: Figure 4 (ImageNet: plain and ResNet panels, training error
dashed, centre-crop validation error bold) and Figure 6 (CIFAR-10: plain nets; ResNets up to 110 layers;
ResNet-110 vs 1202, with the test error during training bold). Each net is the mean of its seeds, with the band
from its lowest to its highest seed, in one colour throughout; the title says what the figure shows."""

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..models import get_spec
from ..rundir import TRAIN_ERROR, metric_key
from .collect import budgets

LINE_STYLES = {"plain": "--", "residual": "-"}  # each family's line where one axis shows both (Figure 7)


def net_colours(models_by_group: dict[str, str]) -> dict[str, tuple]:
    """One colour per net (a group of seeds), the same in every panel: the nets in order of depth, then name."""
    order = sorted(models_by_group, key=lambda group: (get_spec(models_by_group[group]).depth, group))
    palette = plt.cm.tab10.colors + plt.cm.Dark2.colors
    return {group: palette[i % len(palette)] for i, group in enumerate(order)}


def smoothed_train_error(curves: pd.DataFrame, points: int = 50) -> pd.Series:
    """Per-iteration training error of one batch is noisy: a running mean over 1/`points` of the run."""
    train = curves[curves.metric == TRAIN_ERROR].set_index("step").value
    return train.rolling(max(1, len(train) // points), min_periods=1).mean()


def seed_spread(curves: pd.DataFrame, runs: list[str], metric: str) -> pd.DataFrame:
    """mean, low and high over the seeds (`runs`) of a metric at each step they all logged (smoothed where it is
    the per-iteration training error)."""
    per_run = {run: smoothed_train_error(curves[curves.run == run]) if metric == TRAIN_ERROR else
               curves[(curves.run == run) & (curves.metric == metric)].set_index("step").value for run in runs}
    table = pd.DataFrame(per_run).dropna()
    return pd.DataFrame({"mean": table.mean(1), "low": table.min(1), "high": table.max(1)})


def panels(shown: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, runs) of each panel, in the paper's layout for the nets present."""
    depth = shown.model.map(lambda m: get_spec(m).depth)
    is_residual = shown.model.map(lambda m: get_spec(m).residual)
    plain, residual = shown[~is_residual], shown[is_residual]
    found = [("plain", plain)]
    if (depth[residual.index] > 110).any():  # Figure 6, right: the 1202-layer net beside the 110-layer one
        found += [("ResNet", residual[depth[residual.index] <= 110]),
                  ("ResNet-110 vs 1202", residual[depth[residual.index].isin([110, 1202])])]
    else:
        found.append(("ResNet", residual))
    return [(title, runs) for title, runs in found if len(runs)]


def seeds_text(seeds_per_net: pd.Series) -> str:
    """'1 seed per net' / 'the mean of 3 seeds per net (band: lowest to highest)'."""
    counts = sorted(set(seeds_per_net))
    if counts == [1]:
        return "1 seed per net"
    return f"the mean of {' or '.join(map(str, counts))} seeds per net (band: lowest to highest)"


def title(shown: pd.DataFrame, curves: pd.DataFrame) -> str:
    """What the figure shows: data set, iterations (and the fraction of the paper's schedule), seeds."""
    datasets = " and ".join(sorted(shown.dataset.dropna().unique())) or "data set not recorded"
    fractions = " and ".join(budgets(shown))  # never to be read as the paper's curves
    iterations = f"{curves.step.max():,.0f} iterations" + (f" ({fractions} of the paper's schedule)" if fractions else "")
    return f"{datasets}: {iterations}, {seeds_text(shown.groupby('group').size())}"


def training_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """One colour per net: training error dashed, evaluation error bold with a marker at each evaluation, in
    percent against iterations (in units of 1e4 for paper-length runs). The bold curve is the test error logged
    during training where there is one (CIFAR-10, Figure 6), else the periodic validation error (ImageNet,
    Figure 4)."""
    logged = runs[runs.model.notna() & runs.run.isin(curves.run.unique())]
    # each net's finished seeds where it has any (a failed seed's curve stops early), else those still going
    shown = logged[(logged.status == "finished") | ~logged.group.isin(logged[logged.status == "finished"].group)]
    layout = panels(shown.drop_duplicates("group"))
    colours = net_colours(dict(zip(shown.group, shown.model)))
    longest = curves.step.max()
    unit, x_label = (1e4, "iterations (1e4)") if longest >= 2e4 else (1, "iterations")
    figure, axes = plt.subplots(1, len(layout), figsize=(6 * len(layout), 4.5), sharey=True, squeeze=False,
                                layout="constrained")
    for ax, (panel, members) in zip(axes[0], layout):
        for net in members.sort_values("model", key=lambda m: m.map(lambda name: get_spec(name).depth)).group:
            seeds = shown[shown.group == net].run.tolist()
            split = "test" if (curves[curves.run.isin(seeds)].metric == metric_key("test")).any() else "val"
            for metric, style, width, marker in ((TRAIN_ERROR, "--", 1, None), (metric_key(split), "-", 2.5, "o")):
                spread = seed_spread(curves, seeds, metric)
                ax.plot(spread.index / unit, spread["mean"], style, color=colours[net], linewidth=width, marker=marker,
                        markersize=4, label=f"{net} {metric.split('/')[0]}")
                if len(seeds) > 1:
                    ax.fill_between(spread.index / unit, spread.low, spread.high, color=colours[net], alpha=0.15,
                                    linewidth=0)
        ax.set(title=panel, xlabel=x_label, ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the curves, never over them
    figure.suptitle(title(shown, curves), fontsize=10)
    return figure
