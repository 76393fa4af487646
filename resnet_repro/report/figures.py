"""The paper's training-curve figures from run logs: Figure 4 (ImageNet: plain and ResNet panels, training error
dashed, centre-crop validation error bold) and Figure 6 (CIFAR-10: plain nets; ResNets up to 110 layers;
ResNet-110 vs 1202, with the test error during training bold)."""

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..models import get_spec
from .collect import budgets


def smoothed_train_error(curves: pd.DataFrame, points: int = 200) -> pd.Series:
    """Per-iteration training error of one batch is noisy: a running mean over 1/`points` of the run."""
    train = curves[curves.metric == "train/error"].set_index("step").value
    return train.rolling(max(1, len(train) // points), min_periods=1).mean()


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


def training_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """One colour per net (its lowest seed): training error dashed, evaluation error bold, in percent against
    iterations (in units of 1e4 for paper-length runs). The bold curve is the test error logged during training
    where there is one (CIFAR-10, Figure 6), else the periodic validation error (ImageNet, Figure 4)."""
    shown = runs[runs.model.notna()].sort_values("seed").drop_duplicates("group")
    layout = panels(shown)
    longest = curves.step.max()
    unit, x_label = (1e4, "iterations (1e4)") if longest >= 2e4 else (1, "iterations")
    figure, axes = plt.subplots(1, len(layout), figsize=(5 * len(layout), 4), sharey=True, squeeze=False)
    for ax, (title, members) in zip(axes[0], layout):
        for colour, run in zip(plt.cm.tab10.colors, members.sort_values("model", key=lambda m: m.map(
                lambda name: get_spec(name).depth)).itertuples()):
            run_curves = curves[curves.run == run.run]
            train = smoothed_train_error(run_curves)
            ax.plot(train.index / unit, 100 * train.values, "--", color=colour, linewidth=1, label=f"{run.group} train")
            split = "test" if (run_curves.metric == "test/error").any() else "val"
            evaluation = run_curves[run_curves.metric == f"{split}/error"]
            ax.plot(evaluation.step / unit, 100 * evaluation.value, "-", color=colour, linewidth=2.5,
                    label=f"{run.group} {split}")
        ax.set(title=title, xlabel=x_label, ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    datasets = " and ".join(sorted(shown.dataset.dropna().unique()))
    fractions = " and ".join(budgets(shown))  # never to be read as the paper's curves
    figure.suptitle(datasets + (f", at {fractions} of the paper's schedule (run --budget)" if fractions else ""))
    figure.tight_layout()
    return figure
