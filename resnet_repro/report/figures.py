"""The paper's training-curve figures (Figure 4 for ImageNet, Figure 6 for CIFAR-10) from run logs."""

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def smoothed_train_error(curves: pd.DataFrame, points: int = 200) -> pd.Series:
    """Per-iteration training error of one batch is noisy: a running mean over 1/`points` of the run."""
    train = curves[curves.metric == "train/error"].set_index("step").value
    return train.rolling(max(1, len(train) // points), min_periods=1).mean()


def training_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """One panel per family (plain, then ResNet), one colour per net (its lowest seed): training error dashed,
    test (or validation) error bold, both in percent against iterations, in units of 1e4 for paper-length runs."""
    shown = runs.sort_values("seed").drop_duplicates(["model", "shortcut"])
    shown = shown.assign(family=shown.model.str.startswith("plain").map({True: "plain", False: "ResNet"}))
    families = [f for f in ("plain", "ResNet") if f in set(shown.family)]
    longest = curves.step.max()
    unit, x_label = (1e4, "iterations (1e4)") if longest >= 2e4 else (1, "iterations")
    figure, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families):
        for colour, run in zip(plt.cm.tab10.colors, shown[shown.family == family].itertuples()):
            run_curves = curves[curves.run == run.run]
            label = run.model + (f"-{run.shortcut}" if run.shortcut else "")
            train = smoothed_train_error(run_curves)
            ax.plot(train.index / unit, 100 * train.values, "--", color=colour, linewidth=1, label=f"{label} train")
            evaluation = run_curves[run_curves.metric == f"{run.eval_metric}/error"]
            ax.plot(evaluation.step / unit, 100 * evaluation.value, "-", color=colour, linewidth=2.5,
                    label=f"{label} {run.eval_metric}")
        ax.set(title=family, xlabel=x_label, ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure
