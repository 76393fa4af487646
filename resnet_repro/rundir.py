"""A run directory, `runs/<experiment>/<run>/`: everything one training run leaves behind.

    config.yaml          the resolved LightningCLI config (written by fit)
    metrics.csv          per-iteration train/loss, train/error, lr; val/ and test/ error at each validation;
                         test/<protocol>/ error of each evaluation after training
    checkpoints/last.ckpt  written atomically every `checkpoint.every_n_train_steps` iterations and at the end
    summary.json         status (running / evaluating / finished / failed / interrupted), latest errors, params,
                         steps, wall time, training images/s of the latest session, device, git revision
    wandb/               the W&B run (offline when there is no key or WANDB_MODE=offline); its config has flat
                         columns to group by (dataset, family, depth, shortcut, seed, experiment, budget)
    fit.log              the output of its fit and test commands, when `run --parallel` started them
    .lock                held by the one process that writes the run (fit, validate, test)

Beside the runs, `runs/<experiment>/experiment.json` lists the runs that make up an experiment (some may live
in another experiment's folder) and its test protocols. The run's name and its experiment (the W&B run name and
group) are the directory's name and its parent's. `fit` on a directory that holds a checkpoint resumes from it.

This module is that contract on disk: what reads or checks these files (the report included) needs nothing
else, and neither torch nor Lightning is imported until a checkpoint is read.
"""

import csv
import fcntl
import os
import re
import socket
import sys
from pathlib import Path

from .files import read_json, write_atomically, write_json_atomically

# The keys of what a run logs, in metrics.csv, W&B and summary.json alike: every writer and reader takes them from here
TRAIN_LOSS, TRAIN_ERROR, LR = "train/loss", "train/error", "lr"  # per iteration
EVALUATION_PREFIXES = ("val/", "test/")  # the keys of the errors an evaluation logs (test/<protocol>/ included)
LOGGED_PREFIXES = ("train/", *EVALUATION_PREFIXES)
PROTOCOL_METRIC = re.compile(r"test/(?P<protocol>\w+)/(?P<name>error|top5_error|images)$")


def metric_key(split: str, name: str = "error", protocol: str | None = None) -> str:
    """`val/error`, `test/top5_error`, ...; under a test protocol, `test/<protocol>/<name>`."""
    return f"{split}/{protocol}/{name}" if protocol else f"{split}/{name}"


# summary.json's numbers (besides the errors, EVALUATION_PREFIXES): each a number or null, checked where it is read
SUMMARY_NUMBERS = ("seed", "params", "steps", "max_steps", "wall_time_s", "devices", "train_images_per_s")
TAIL_BYTES = 8192  # the end of metrics.csv read for the latest training row: many rows, whatever the file's size


def check_not_a_link(path: Path, what: str) -> None:
    if Path(path).is_symlink():
        raise ValueError(f"{path} ({what}) is a symbolic link: resnet-repro never reads or writes runs through a "
                         f"link; name what it points to, or put that in its place")


def check_no_links(run_dir: Path) -> None:
    """A run directory may come from elsewhere, and a symbolic link in it would make this machine write (the lock,
    metrics.csv, a checkpoint) or read (summary.json, metrics.csv, wandb_run_id) another file: the run directory,
    its experiment folder and everything in the run directory must be no link, else this is refused in one line
    naming the first link. W&B's own folder is W&B's: it links its logs there itself and replaces those links
    rather than writing through them. The runs root above may be a link (runs -> /scratch/runs: the user's own)."""
    run_dir = Path(run_dir)
    check_not_a_link(run_dir.parent, f"the experiment folder of {run_dir}")
    check_not_a_link(run_dir, "a run directory")
    for parent, folders, files in os.walk(run_dir):
        for name in folders + files:
            if os.path.islink(os.path.join(parent, name)):
                raise ValueError(f"{os.path.join(parent, name)} is a symbolic link inside the run directory {run_dir}: "
                                 f"resnet-repro never reads or writes a run's files through a link; remove it (or put "
                                 f"a copy of what it points to in its place)")
        if Path(parent) == run_dir and "wandb" in folders:
            folders.remove("wandb")  # checked itself above; what is inside is W&B's


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint of this project, loaded as data: `weights_only=True` unpickles tensors and plain containers
    only, so a planted file cannot run code. Anything else fails with one line, before anything is written."""
    import torch  # here: the report, which reads no checkpoint, never pays for torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path} is unreadable or not plain data ({type(error).__name__}: {reason}); "
                         f"restore a good copy, or delete it to start the run over") from error
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    model = hparams.get("model") if isinstance(hparams, dict) else None
    if not isinstance(model, str) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a checkpoint of resnet-repro (it has no state_dict and model name); "
                         f"pass runs/<experiment>/<run>/checkpoints/last.ckpt")
    step = checkpoint.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"checkpoint {path} has no iteration count (global_step {step!r}, not a whole number 0 or "
                         f"more): restore a good copy, or delete it to start the run over")
    check_weights(path, checkpoint["state_dict"], model, hparams.get("shortcut"), hparams.get("num_classes"))
    return checkpoint


def check_weights(path: Path, state_dict: dict, model: str, shortcut, num_classes) -> None:
    """The weights fit the net the checkpoint's hyperparameters name, key for key and shape for shape (against the
    net built on the meta device), so that loading them cannot fail half-way with a traceback of every key."""
    from .models.size import meta_model

    try:
        net = meta_model(model, shortcut, num_classes)
    except (ValueError, TypeError) as error:
        raise ValueError(f"checkpoint {path} names a net that cannot be built ({error}): restore a good copy, or "
                         f"delete it to start the run over") from None
    # the LightningModule (module.py) holds the net as `self.net`: its keys are the net's, prefixed
    expected = {f"net.{key}": tensor.shape for key, tensor in net.state_dict().items()}
    shapes = {key: getattr(value, "shape", None) for key, value in state_dict.items()}
    wrong = sorted(expected.keys() ^ shapes.keys()) + sorted(key for key in expected.keys() & shapes.keys()
                                                              if shapes[key] != expected[key])
    if wrong:
        raise ValueError(f"checkpoint {path} does not hold the weights of the {model} it names ({len(wrong)} "
                         f"parameters missing, extra or of another shape, e.g. {', '.join(wrong[:3])}): restore a "
                         f"good copy, or delete it to start the run over")


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise ValueError(f"{path} is not a run summary of resnet-repro (a JSON {type(summary).__name__}, not an "
                         f"object): restore it, or delete it and the next fit writes it again")
    for key, value in summary.items():
        if (key in SUMMARY_NUMBERS or key.startswith(EVALUATION_PREFIXES)) and not (
                value is None or isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ValueError(f"{path}: {key} is {value!r}, not a number: it is not a run summary of this version of "
                             f"resnet-repro; restore it, or delete it and the next fit writes it again")
    return summary


def final_errors(run_dir: Path) -> dict:
    """The run's latest val/, test/ and test/<protocol>/ errors, as summary.json keeps them."""
    return {key: value for key, value in read_summary(run_dir).items() if key.startswith(EVALUATION_PREFIXES)}


class RunLock:
    """One writer per run directory: an exclusive `flock` on `<run_dir>/.lock` for the command's lifetime. The
    kernel releases it when the process ends, however it ends, so the lock of a dead process is free again."""

    def __init__(self, run_dir: Path):
        path = Path(run_dir) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a link: refused, never followed
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 200).decode(errors="replace").split() or ["?"]
            os.close(self.fd)
            where = f" on {holder[1]}" if len(holder) > 1 else ""
            raise ValueError(f"{run_dir} is in use by process {holder[0]}{where}: one run directory takes one "
                             f"writer; wait for that process to end (or stop it), then run this again") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def whole_lines(data: bytes) -> tuple[bytes, bytes]:
    """(the whole lines, the torn last line) of a CSV file's bytes. A process killed while appending, or one
    writing now, leaves a last line without its newline, cut anywhere, even mid-number: it is never read as a row."""
    keep = data.rfind(b"\n") + 1
    return data[:keep], data[keep:]


def repair_torn_line(path: Path) -> None:
    """A process killed while appending to a CSV leaves a last line without its newline, cut anywhere, even
    mid-number. Remove it: those iterations come after the last checkpoint, and the resumed run logs them again."""
    with open(path, "rb+") as f:
        whole, torn = whole_lines(f.read())
        if not torn:
            return
        f.truncate(len(whole))
    print(f"warning: {path} ended in a line cut off mid-write ({torn[:40]!r}...); removed it, and the "
          f"resumed run logs those iterations again", file=sys.stderr)
    if not whole:
        os.remove(path)  # only a torn header was there


def metrics_rows(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """metrics.csv as written, one (iteration, {metric: value}) per row, the row's empty cells left out."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(int(row.pop("step")), {key: float(value) for key, value in row.items() if value})
                for row in csv.DictReader(f)]


def drop_rows_after(path: Path, step: int) -> None:
    """Removes the rows of a metrics.csv logged after iteration `step` (a resumed run logs them again, from its
    checkpoint), byte for byte keeping the others, so that the file of a run resumed any number of times is the
    uninterrupted run's. Without any row left the file goes too, as before a run's first row."""
    with open(path, "rb") as f:
        header, *rows = f.read().splitlines(keepends=True)
    column = header.decode().rstrip("\r\n").split(",").index("step")
    kept = [row for row in rows if int(next(csv.reader([row.decode()]))[column]) <= step]
    if len(kept) == len(rows):
        return
    if kept:
        write_atomically(path, lambda tmp: tmp.write_bytes(header + b"".join(kept)))
    else:
        os.remove(path)


def latest_training_row(run_dir: Path) -> tuple[int, float] | None:
    """(iteration, training error) of the last training row of metrics.csv, reading its header and its last few
    KB only; None while there is none."""
    try:
        with open(Path(run_dir) / "metrics.csv", "rb") as f:
            header = f.readline().decode().strip().split(",")
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            whole, _ = whole_lines(f.read())
        lines = whole.decode(errors="replace").splitlines()[1:]  # the first may be cut (or the header)
        step, error = header.index("step"), header.index(TRAIN_ERROR)
        for line in reversed(lines):
            fields = line.split(",")
            if len(fields) == len(header) and fields[error]:
                return int(fields[step]), float(fields[error])
    except (OSError, ValueError):
        pass
    return None


def run_progress(run_dir: Path) -> tuple[int, float | None] | None:
    """(iteration, training error) of a run as it goes: the iteration from summary.json, which a fit renews every
    few seconds, or from metrics.csv's latest training row where that is later; the error from that row (rows
    reach the file less often); None before either holds an iteration."""
    row = latest_training_row(run_dir)
    try:
        steps = read_summary(run_dir).get("steps")
    except ValueError:  # a summary.json of another shape: the row alone
        steps = None
    if not isinstance(steps, int) and row is None:
        return None
    iteration = max(steps if isinstance(steps, int) else 0, row[0] if row else 0)
    return iteration, row[1] if row else None


def manifest_run_dir(folder: Path, run: str) -> Path:
    """The run folder `run` of an experiment.json in `folder`, as an absolute path with its `..` taken out, not
    resolved: what is read is the path that was checked, and a link there (even a loop) is refused, not followed."""
    return Path(os.path.normpath(Path(folder).absolute() / run))


def read_manifest(folder: Path) -> dict | None:
    """An experiment folder's experiment.json (written by `run`), or None. It may come from elsewhere: it must
    be an object whose runs are folders `<runs root>/<experiment>/<run>` of the runs root this folder is in,
    else it is refused in one line, so that it cannot make `report` read (and quote) files anywhere else."""
    folder = Path(folder)
    path = folder / "experiment.json"
    check_not_a_link(path, "an experiment's list of runs")
    if not path.is_file():
        return None
    manifest = read_json(path)
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, str) for run in runs):
        raise ValueError(f"{path} is not an experiment manifest of resnet-repro (an object whose runs are a list of "
                         f"run folders): restore it, or delete it to report every run in {folder}")
    root = manifest_run_dir(folder, ".").parent
    outside = [run for run in runs if manifest_run_dir(folder, run).parent.parent != root]
    if outside:
        raise ValueError(f"{path} names run folders outside {root}/<experiment>/<run> ({', '.join(outside[:3])}): "
                         f"a manifest names runs of its own runs root only; pass other experiment folders yourself")
    return manifest


def run_dirs(folder: Path) -> list[Path]:
    """The runs of an experiment: those its experiment.json names (some may live in another experiment's folder
    of the same runs root), else every run directory in the folder; each checked for links (check_no_links)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: pass runs/<experiment>, the folder of an experiment's runs")
    manifest = read_manifest(folder)
    if manifest is not None:
        runs = [manifest_run_dir(folder, run) for run in manifest["runs"]]
    else:
        runs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for run_dir in runs:
        check_no_links(run_dir)
    return runs


def write_manifest(folder: Path, experiment: str, file: str, protocols: list[str], runs: list[Path],
                   smoke: bool) -> None:
    """`runs/<experiment>/experiment.json`: which runs make up the experiment (some may live in another
    experiment's folder), its test protocols, and whether it is a miniature; what `report` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(folder / "experiment.json", {
        "experiment": experiment, "file": file, "protocols": protocols, "smoke": smoke,
        "runs": [os.path.relpath(run, folder) for run in runs],
    })
