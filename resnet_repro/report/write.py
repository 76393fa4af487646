"""`resnet-repro report runs/<experiment>`: the table (Markdown, CSV), the training curves (PNG) and a README
saying what made them, written all at once: a crash half-way leaves the previous report as it was."""

import argparse
import contextlib
import shlex
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from .collect import collect_runs, collect_wandb
from .figures import training_curves
from .tables import error_table, findings, format_table


MARKER = ".resnet-repro-output"  # in every folder this tool writes, listing the files it wrote


def check_replaceable(out: Path) -> None:
    """`out` may be replaced only if it is missing, empty, or a folder this tool wrote that holds nothing else:
    anything else is refused in one line, before any work, and never deleted."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file: name a folder for the output (default results/<name>)")
    present = {p.name for p in out.iterdir()}
    if not present:
        return
    marker = out / MARKER
    if not marker.is_file():
        raise ValueError(f"--out {out} is a folder this tool did not write ({len(present)} entries, no {MARKER}): "
                         f"choose a new or empty folder; nothing in it was touched")
    foreign = sorted(present - set(marker.read_text().split()) - {MARKER})
    if foreign:
        raise ValueError(f"--out {out} holds files this tool did not write ({', '.join(foreign[:5])}): move them "
                         f"away or choose another folder; nothing in it was touched")


@contextlib.contextmanager
def staged(out: Path):
    """Yields an empty folder to write into; on success it replaces `out` whole, on failure it is removed and
    `out` stays as it was. Only a folder that this tool wrote is replaced (see check_replaceable)."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        (staging / MARKER).write_text("".join(f"{p.name}\n" for p in sorted(staging.iterdir())))
        check_replaceable(out)  # again: something may have been put there while the output was made
        if out.exists():  # swap in the new folder, then drop the old one
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_report(experiment_dir: Path, out: Path, command: str, wandb_project: str | None = None) -> str:
    runs, curves = collect_wandb(wandb_project, experiment_dir.name) if wandb_project else collect_runs(experiment_dir)
    table = error_table(runs)
    markdown = "\n".join([format_table(table), "", *(f"- {line}" for line in findings(table))])
    with staged(out) as folder:
        table.to_csv(folder / "table.csv", index=False)
        (folder / "table.md").write_text(markdown + "\n")
        figure = training_curves(runs, curves)
        figure.savefig(folder / "curves.png", dpi=120)
        plt.close(figure)
        (folder / "README.md").write_text(readme(experiment_dir, runs, markdown, command))
    return markdown


def readme(experiment_dir: Path, runs, markdown: str, command: str) -> str:
    listed = "\n".join(f"- `{r.run}`: {r.status}, {r.steps} iterations, git {r.git_revision}: `{r.command}`"
                       for r in runs.itertuples())
    return (f"# Report of `{experiment_dir}`\n\nMade by `{command}` from these runs:\n\n{listed}\n\n"
            f"Errors are in percent: the last test error each run logged (validation error where it logged none), "
            f"mean, std (ddof=1) and best over the finished seeds; `train error` is the mean training error over "
            f"the last 5% of iterations, on which the paper's findings below are checked. `curves.png`: training "
            f"error dashed, test error bold.\n\n{markdown}\n")


def report_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="resnet-repro report", description="tables and figures from run directories")
    parser.add_argument("experiment_dir", type=Path, help="runs/<experiment>")
    parser.add_argument("--out", type=Path, help="default: results/<experiment>")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read the experiment's runs (the W&B group named like its directory) from W&B instead")
    args = parser.parse_args(argv)
    if not args.wandb and not args.experiment_dir.is_dir():
        raise ValueError(f"{args.experiment_dir} is not a folder: pass runs/<experiment>, the folder of an "
                         f"experiment's runs")
    out = args.out or Path("results") / args.experiment_dir.name
    command = shlex.join(["resnet-repro", "report", str(args.experiment_dir), "--out", str(out),
                          *(["--wandb", args.wandb] if args.wandb else [])])
    print(write_report(args.experiment_dir, out, command, args.wandb))
    print(f"\nwritten to {out}/: table.md, table.csv, curves.png, README.md")
