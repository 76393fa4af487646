"""`resnet-repro report runs/<experiment>`: the table (Markdown, CSV), the training curves (PNG) and a README
saying what made them, written all at once: a crash half-way leaves the previous report as it was."""

import shlex
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..files import staged
from ..options import OptionParser
from ..paper import PAPER_DATASETS, copied_dataset
from ..rundir import read_manifest
from .collect import budgets, collect_runs, collect_wandb
from .figures import training_curves
from .tables import error_table, findings, format_table


def write_report(folders: list[Path], out: Path, command: str, wandb_project: str | None = None) -> str:
    if wandb_project:
        runs, evaluated, curves = collect_wandb(wandb_project, folders[0].name)
    else:
        runs, evaluated, curves = collect_runs(folders)
    table = error_table(runs, evaluated)
    markdown = "\n".join([format_table(table), "", *(f"- {line}" for line in findings(runs, curves))])
    with staged(out) as folder:
        table.to_csv(folder / "table.csv", index=False, float_format="%.6g")  # 6 digits: 7.0, not 7.000000000000002
        (folder / "table.md").write_text(markdown + "\n")
        figure = training_curves(runs, curves)
        figure.savefig(folder / "curves.png", dpi=120)
        plt.close(figure)
        (folder / "README.md").write_text(readme(folders, runs, markdown, command))
    return markdown


def ran_on(run) -> str:
    """ " in 248 s on 1 x Intel Xeon": a run's wall time and devices, as its summary recorded them."""
    if pd.isna(run.wall_time_s) or pd.isna(run.devices):
        return ""
    return f" in {run.wall_time_s:.0f} s on {run.devices:.0f} x {run.device}"


def readme(folders: list[Path], runs, markdown: str, command: str) -> str:
    listed = "\n".join(f"- `{r.run}`: {r.status}" + (f", {r.steps:.0f} iterations{ran_on(r)}, git {r.git_revision}: "
                                                      f"`{r.command}`" if pd.notna(r.steps) else "")
                       for r in runs.itertuples())
    smoke = [f for f in folders if (read_manifest(f) or {}).get("smoke")]
    warning = ("**A miniature (`run --smoke`): a few iterations on stand-in data. Its numbers say that the path "
               "works, nothing about the paper.**\n\n" if smoke else "")
    fractions = " and ".join(budgets(runs))
    at_budget = f" at {fractions} of the paper's schedule" if fractions else ""
    copies = sorted({dataset for dataset in runs.dataset.dropna() if copied_dataset(dataset) in PAPER_DATASETS
                     and dataset not in PAPER_DATASETS})
    if copies:
        warning += (f"**Trained and tested on {' and '.join(copies)}, not on the paper's own images: the paper's "
                    f"numbers stand beside ours as context only, with no difference computed.**\n\n")
    if fractions:
        warning += (f"**Trained for {fractions} of the paper's schedule (`run --budget`): every iteration "
                    f"count scaled, nothing else. The paper's numbers, of the full schedule, stand beside ours as "
                    f"context only, with no difference computed.**\n\n")
    return (f"# Report of {', '.join(f'`{f}`' for f in folders)}{at_budget}\n\n{warning}Made by `{command}` from these runs:\n\n"
            f"{listed}\n\nErrors are in percent, each under a named test protocol (`single_view`: each CIFAR test "
            f"image once, Table 6; `ten_crop`: Tables 2 and 3; `multi_scale`: Table 4; `center`: no paper number), "
            f"from each run's latest evaluation under it. The paper's findings are checked on the training error of "
            f"the last 5% of iterations with a 95% bootstrap interval over seeds and iterations (\"holds\" only when "
            f"the interval excludes no difference). `table.csv`: the same rows, one number per cell (n, mean, std, "
            f"best, ours, paper, paper std, difference, ...). `curves.png`: training error dashed, test (CIFAR) or "
            f"validation (ImageNet) error bold.\n\n{markdown}\n")


def report_command(argv: list[str]) -> None:
    parser = OptionParser(prog="resnet-repro report", description="tables and figures from run directories")
    parser.add_argument("experiment_dirs", type=Path, nargs="+",
                        help="runs/<experiment> ... (several: one report, e.g. Figure 6's plain and residual runs)")
    parser.add_argument("--out", type=Path, help="default: results/<experiment>[+<experiment>...]")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read the experiment's runs (the W&B group named like its directory) from W&B instead")
    args = parser.parse_args(argv)
    for folder in args.experiment_dirs if not args.wandb else []:
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder: pass runs/<experiment>, the folder of an experiment's runs")
    out = args.out or Path("results") / "+".join(folder.name for folder in args.experiment_dirs)
    command = shlex.join(["resnet-repro", "report", *map(str, args.experiment_dirs), "--out", str(out),
                          *(["--wandb", args.wandb] if args.wandb else [])])
    print(write_report(args.experiment_dirs, out, command, args.wandb))
    print(f"\nwritten to {out}/: table.md, table.csv, curves.png, README.md")
