"""`resnet-repro report runs/<experiment>`: the table (Markdown, CSV), the training curves (PNG) and a README
saying what made them, written all at once: a crash half-way leaves the previous report as it was."""

import argparse
import contextlib
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from .collect import budgets, collect_runs, collect_wandb, read_manifest
from .figures import training_curves
from .tables import error_table, findings, format_table


MARKER = ".resnet-repro-output"  # in every folder this tool writes, listing the files it wrote


def check_replaceable(out: Path) -> None:
    """`out` may be replaced only if it is missing, empty, or a folder this tool wrote that holds nothing else:
    anything else is refused in one line, before any work, and never deleted."""
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link: name the folder itself (a link would be replaced by a "
                         f"folder, or lead the output elsewhere)")
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private (0700); the output is shared as the umask says
    try:
        yield staging
        (staging / MARKER).write_text("".join(f"{p.name}\n" for p in sorted(staging.iterdir())))
        check_replaceable(out)  # again: something may have been put there while the output was made
        if out.exists():  # swap in the new folder, then drop the old one, moved into a folder made for it here
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            out.rename(old / out.name)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_report(folders: list[Path], out: Path, command: str, wandb_project: str | None = None) -> str:
    if wandb_project:
        runs, evaluated, curves = collect_wandb(wandb_project, folders[0].name)
    else:
        runs, evaluated, curves = collect_runs(folders)
    table = error_table(runs, evaluated)
    markdown = "\n".join([format_table(table), "", *(f"- {line}" for line in findings(runs, curves))])
    with staged(out) as folder:
        table.to_csv(folder / "table.csv", index=False)
        (folder / "table.md").write_text(markdown + "\n")
        figure = training_curves(runs, curves)
        figure.savefig(folder / "curves.png", dpi=120)
        plt.close(figure)
        (folder / "README.md").write_text(readme(folders, runs, markdown, command))
    return markdown


def readme(folders: list[Path], runs, markdown: str, command: str) -> str:
    listed = "\n".join(f"- `{r.run}`: {r.status}, {r.steps} iterations, git {r.git_revision}: `{r.command}`"
                       for r in runs.itertuples())
    smoke = [f for f in folders if (read_manifest(f) or {}).get("smoke")]
    warning = ("**A miniature (`run --smoke`): a few iterations on stand-in data. Its numbers say that the path "
               "works, nothing about the paper.**\n\n" if smoke else "")
    fractions = " and ".join(budgets(runs))
    at_budget = f" at {fractions} of the paper's schedule" if fractions else ""
    if fractions:
        warning += (f"**Trained for {fractions} of the paper's schedule (`run --budget`): every iteration "
                    f"count scaled, nothing else. The paper's numbers, of the full schedule, stand beside ours as "
                    f"context only, with no difference computed.**\n\n")
    return (f"# Report of {', '.join(f'`{f}`' for f in folders)}{at_budget}\n\n{warning}Made by `{command}` from these runs:\n\n"
            f"{listed}\n\nErrors are in percent, each under a named test protocol (`single_view`: each CIFAR test "
            f"image once, Table 6; `ten_crop`: Tables 2 and 3; `multi_scale`: Table 4; `center`: no paper number), "
            f"from each run's latest evaluation under it, and set beside the paper's number of the same statistic: "
            f"our best of N beside a best of N, our mean±std (ddof=1) beside a mean±std, our mean beside a single "
            f"run. `reference`: a well-known reproduction under the same protocol. `train error`: the mean training "
            f"error over the last 5% of iterations, on which the paper's findings are checked with a 95% bootstrap "
            f"interval over seeds and iterations (\"holds\" only when the interval excludes no difference). "
            f"`curves.png`: training error dashed, test (CIFAR) or validation (ImageNet) error bold.\n\n{markdown}\n")


def report_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="resnet-repro report", description="tables and figures from run directories")
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
