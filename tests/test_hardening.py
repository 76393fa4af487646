"""Hostile but fair use: bad input refused in one line with nothing touched, checkpoints and configs read as data
(never run as code), one writer per run directory, and nothing lost when a run is killed at any iteration."""

import errno
import json
import os
import pickle
import re
import stat
import struct
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import DIGITS, QUIET, REPO, as_flags, cli_error, fit, run_cli, summary, tiny_run, write_cifar10
from resnet_repro.report.collect import read_metrics

TINY = as_flags(tiny_run())
HANG = 600  # seconds: a guard against a process that never ends, far beyond any step on a busy machine
PLANTED = "planted-code-ran"


def snapshot(folder: Path) -> dict[Path, bytes | None]:
    """Every file's bytes, and every folder (None), under `folder`."""
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*")) if p.name != ".lock"}


# nine lists of nine aliases of the one before: 9^9 (387 million) nodes from about 300 characters
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def write_lying_datasets(root: Path) -> None:
    """CIFAR-10 batches and Fashion-MNIST idx files whose arrays lie about what they hold."""
    import gzip
    import numpy as np
    from resnet_repro.data.fashion_mnist import write_standin as write_fashion

    def rewrite_batch(name: str, change) -> None:
        path = write_cifar10(root / name) / "data_batch_1"
        batch = pickle.loads(path.read_bytes(), encoding="bytes")
        change(batch)
        path.write_bytes(pickle.dumps(batch, protocol=2))

    rewrite_batch("cifar-nan", lambda b: b.update({b"data": np.full((40, 3072), np.nan)}))
    rewrite_batch("cifar-300", lambda b: b.update({b"data": b[b"data"].astype(np.int64) + 200}))
    rewrite_batch("cifar-more-labels", lambda b: b[b"labels"].append(3))
    rewrite_batch("cifar-fewer-labels", lambda b: b[b"labels"].pop())

    def rewrite_idx(name: str, file: str, array: np.ndarray) -> None:
        write_fashion(root / name)
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        with gzip.open(root / name / "FashionMNIST/raw" / f"{file}.gz", "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    rewrite_idx("fashion-more-labels", "train-labels-idx1-ubyte", np.zeros(241))
    rewrite_idx("fashion-20x20", "train-images-idx3-ubyte", np.zeros((240, 20, 20)))


class Payload:
    """Unpickling this runs a shell command that leaves a file behind: what a planted checkpoint could do."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A finished tiny digits run, a tiny CIFAR-10 with labels out of range, a report folder, foreign files."""
    root = tmp_path_factory.mktemp("hostile")
    fit(*DIGITS, *TINY, "--run_dir", str(root / "exp" / "done"))
    bad = write_cifar10(root / "badlabels")
    batch = pickle.loads((bad / "data_batch_2").read_bytes(), encoding="bytes")
    batch[b"labels"][5] = 12
    (bad / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my notes\n")
    (root / "a-file").write_text("not a folder\n")
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    write_lying_datasets(root)
    from resnet_repro.data.imagenet import write_standin as write_imagenet
    write_imagenet(root / "imagenet", classes=2, train_per_class=2, val_per_class=1)
    for image in (root / "imagenet" / "train").rglob("*.JPEG"):
        image.write_bytes(image.read_bytes()[:200])  # cut off mid-file
    # run folders from elsewhere: a config.yaml that is an alias bomb; a run whose config names its own data
    # folder and a download; manifests and summaries that point outside or have another shape
    (root / "exp" / "bombed").mkdir()
    (root / "exp" / "bombed" / "config.yaml").write_text(ALIAS_BOMB)
    planted = root / "elsewhere" / "planted"
    shutil.copytree(root / "exp" / "done", planted, ignore=shutil.ignore_patterns(".lock"))
    config = yaml.safe_load((planted / "config.yaml").read_text())
    config["data"] = {"class_path": "resnet_repro.data.CIFAR10DataModule",
                      "init_args": {"data_dir": str(root / "planted-data"), "download": True}}
    (planted / "config.yaml").write_text(yaml.safe_dump(config))
    for name, manifest in {"outside": {"runs": ["../../exp/done"]}, "absolute": {"runs": [str(root / "exp/done")]},
                           "list-manifest": [1, 2], "runs-of-numbers": {"runs": [1]}}.items():
        (root / "manifests" / name).mkdir(parents=True)
        (root / "manifests" / name / "experiment.json").write_text(json.dumps(manifest))
    (root / "list-summary" / "run").mkdir(parents=True)
    (root / "list-summary" / "run" / "summary.json").write_text("[]")
    (root / "link").symlink_to(root / "mine")
    # run state from elsewhere (issue 38): links in a run folder or a manifest, checkpoints of another net or without
    # their iteration count, a summary from an older layout
    (root / "linked-exp" / "run").mkdir(parents=True)
    (root / "linked-exp" / "run" / "metrics.csv").symlink_to(root / "mine" / "notes.txt")
    (root / "manifests" / "loop").mkdir(parents=True)
    (root / "manifests" / "loop" / "loop").symlink_to(root / "manifests" / "loop" / "loop")
    (root / "manifests" / "loop" / "experiment.json").write_text(json.dumps({"runs": ["loop"]}))
    (root / "string-summary" / "run").mkdir(parents=True)
    (root / "string-summary" / "run" / "summary.json").write_text(json.dumps({"status": "finished", "steps": "4"}))
    checkpoint = torch.load(root / "exp" / "done" / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != "global_step"}, root / "no-step.ckpt")
    torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "model": "resnet56"}},
               root / "renamed-net.ckpt")
    shutil.copytree(root / "exp" / "done", root / "foreign" / "swapped", ignore=shutil.ignore_patterns(".lock"))
    from resnet_repro.models import build_model
    torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "model": "resnet32"},
                "state_dict": {f"net.{k}": v for k, v in build_model("resnet32").state_dict().items()}},
               root / "foreign" / "swapped" / "checkpoints" / "last.ckpt")
    (root / "corrupt.ckpt").write_bytes(b"\x80\x02garbage")
    experiments = root / "exps"
    experiments.mkdir()
    recipe = str(REPO / "experiments/digits/base.yaml")
    for name, spec in {
        "grid-list": {"recipe": recipe, "grid": [{"model.model": ["resnet20"]}]},
        "overrides-list": {"recipe": recipe, "overrides": ["trainer.max_steps", 4]},
        "recipe-list": {"recipe": [recipe]},
        "grid-string": {"recipe": recipe, "grid": {"model.model": "resnet20"}},
        "runs-names": {"recipe": recipe, "runs": ["resnet20"]},
        "negative-steps": {"recipe": recipe, "overrides": {"trainer.max_steps": -5}},
        "long-names": {"recipe": recipe, "grid": {"model.milestones": [list(range(1, 40)), list(range(2, 41))]}},
        "number-key": {"recipe": recipe, "grid": {1: [2, 3]}},
        "million": {"recipe": recipe, "grid": {"model.lr": list(range(1, 101)), "model.momentum": list(range(100)),
                                               "model.weight_decay": list(range(100))}},
    }.items():
        (experiments / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    (experiments / "bomb.yaml").write_text(f"recipe: {recipe}\noverrides:\n  trainer.max_steps: 4\n  bomb: &bomb\n"
                                           + "".join(f"    {line}\n" for line in ALIAS_BOMB.splitlines())
                                           + "  trainer.callbacks: [*bomb]\n")
    (root / "twice.yaml").write_text("trainer:\n  max_steps: 4\ntrainer:\n  max_steps: 8\n")
    (experiments / "two-grids.yaml").write_text(f"recipe: {recipe}\ngrid: {{model.model: [resnet20]}}\n"
                                                f"grid: {{model.model: [resnet32]}}\n")
    (experiments / "experiments").mkdir()
    (experiments / "experiments" / "...yaml").write_text(f"recipe: {recipe}\n")
    return root


HOSTILE = {  # argv (with {root} for the workspace) -> what the one line must say
    "batch size 0": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--data.init_args.batch_size", "0"],
                     "data.init_args.batch_size: Not of type PositiveInt: 0"),
    "negative batch size": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--data.init_args.batch_size", "-8"],
                            "data.init_args.batch_size: Not of type PositiveInt: -8"),
    "negative max_steps": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--trainer.max_steps", "-5"],
                           "trainer.max_steps must be a positive number of iterations, not -5"),
    "negative max_steps in a dry run": (["run", "{root}/exps/negative-steps.yaml", "--dry-run"],
                                        "trainer.max_steps must be a positive number of iterations, not -5"),
    "grid as a list": (["run", "{root}/exps/grid-list.yaml"], "grid must be a mapping of dotted config keys"),
    "overrides as a list": (["run", "{root}/exps/overrides-list.yaml"], "overrides must be a mapping"),
    "recipe as a list": (["run", "{root}/exps/recipe-list.yaml"], "recipe must be one path"),
    "a bare string in a grid": (["run", "{root}/exps/grid-string.yaml"],
                                "grid key model.model must be a non-empty list of values, e.g. model.model: [resnet20], not str 'resnet20'"),
    "runs as names": (["run", "{root}/exps/runs-names.yaml"],
                      "each entry of runs must be a mapping of settings, e.g. {model.model: resnet20}, not str"),
    "labels out of range": (["fit", "--config", str(REPO / "experiments/cifar10/base.yaml"), "--run_dir",
                             "{root}/exp/new", "--data.init_args.data_dir", "{root}/badlabels", "--data.init_args.download",
                             "false", "--trainer.max_steps", "2"], "data_batch_2 holds labels from 0 to 12, outside 0..9"),
    "test on a corrupt checkpoint": (["test", *DIGITS, "--run_dir", "{root}/exp/new", "--ckpt_path",
                                      "{root}/corrupt.ckpt"], "checkpoint {root}/corrupt.ckpt is unreadable"),
    "test on a foreign checkpoint": (["test", *DIGITS, "--run_dir", "{root}/exp/new", "--ckpt_path",
                                      "{root}/foreign.pt"], "foreign.pt is not a checkpoint of resnet-repro"),
    "responses on a foreign .pt": (["responses", "{root}/foreign.pt", "--out", "{root}/resp"],
                                   "foreign.pt is not a checkpoint of resnet-repro"),
    "run_dir that is a file": (["fit", *DIGITS, "--run_dir", "{root}/a-file"], "--run_dir {root}/a-file is a file"),
    "report on a file": (["report", "{root}/a-file", "--out", "{root}/rep"], "{root}/a-file is not a folder"),
    "report into a folder it did not write": (["report", "{root}/exp", "--out", "{root}/mine"],
                                              "--out {root}/mine is a folder this tool did not write"),
    "report into the repository's results": (["report", "{root}/exp", "--out", str(REPO / "experiments")],
                                             "is a folder this tool did not write"),
    "responses into a folder it did not write": (["responses", "{root}/exp/done/checkpoints/last.ckpt", "--out",
                                                  "{root}/mine"], "--out {root}/mine is a folder this tool did not"),
    "resume with another lr": (["fit", *DIGITS, *TINY, "--run_dir", "{root}/exp/done", "--model.lr", "1e6"],
                               "holds a run with other settings (model.lr 0.1 -> 1000000.0)"),
    "resume with another model": (["fit", *DIGITS, *TINY, "--run_dir", "{root}/exp/done", "--model.model",
                                   "plain56"], "model.model 'resnet20' -> 'plain56'"),
    "sync BN with ghost BN": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--trainer.sync_batchnorm", "true",
                               "--model.bn_group_size", "8"],
                              "--trainer.sync_batchnorm true normalises the images of all ranks as one batch, and "
                              "model.bn_group_size 8 asks for BN over groups of that many: leave out one of the two"),
    "sync BN with precise BN": (["test", *DIGITS, "--run_dir", "{root}/exp/done", "--trainer.sync_batchnorm", "true",
                                 "--precise_bn_batches", "4", "--ckpt_path", "{root}/exp/done/checkpoints/last.ckpt"],
                                "whose statistics precise_bn_batches 4 cannot recompute: leave out one of the two"),
    "a second writer": (["fit", *DIGITS, *TINY, "--run_dir", "{root}/exp/done"], "is in use by process"),
    # YAML documents: expanded far beyond their size, or a key given twice
    "an alias bomb in an experiment's overrides": (["run", "{root}/exps/bomb.yaml", "--dry-run"],
                                                   "{root}/exps/bomb.yaml: its aliases (*name) expand to more than"),
    "an alias bomb in a run's config.yaml": (["fit", *DIGITS, *TINY, "--run_dir", "{root}/exp/bombed"],
                                             "{root}/exp/bombed/config.yaml: its aliases (*name) expand to more than"),
    "an alias bomb in a --config file": (["fit", "--config", "{root}/exp/bombed/config.yaml", "--run_dir",
                                           "{root}/exp/fresh-run"],
                                          "{root}/exp/bombed/config.yaml: its aliases (*name) expand to more than"),
    "a key given twice in a --config file": (["fit", *DIGITS, "--config", "{root}/twice.yaml", "--run_dir",
                                              "{root}/exp/fresh-run"],
                                             "{root}/twice.yaml line 3: the key 'trainer' is given twice"),
    "a key given twice": (["run", "{root}/exps/two-grids.yaml", "--dry-run"],
                          "{root}/exps/two-grids.yaml line 3: the key 'grid' is given twice in one mapping"),
    # names that are not one safe folder, grids too large or keyed by numbers
    "an experiment named ..": (["run", "{root}/exps/experiments/...yaml"],
                               "the experiment name '..' is not a safe folder name"),
    "an over-long run name": (["run", "{root}/exps/long-names.yaml"],
                              "the run name 'resnet20-milestones_1__2__3__4"),
    "a number as a grid key": (["run", "{root}/exps/number-key.yaml"],
                               "each key of grid must be a dotted config key, e.g. model.model, not int 1"),
    "a million runs": (["run", "{root}/exps/million.yaml", "--dry-run"],
                       "makes 1,000,000 runs, more than 1,000 in one go: pick some with --only"),
    # values that would train something else than asked, or fail later in a traceback
    "milestones out of order": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--model.milestones", "[3, 1]"],
                                "model.milestones must be iterations in increasing order, each 1 or more"),
    "a negative milestone": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--model.milestones", "[-1]"],
                             "not [-1]"),
    "log every 0 steps": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--trainer.log_every_n_steps", "0"],
                          "trainer.log_every_n_steps must be a number of iterations, 1 or more, not 0"),
    "validate every 0 steps": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--trainer.val_check_interval", "0"],
                               "trainer.val_check_interval must be a number of iterations, 1 or more, not 0"),
    "checkpoint every -1 steps": (["fit", *DIGITS, "--run_dir", "{root}/exp/new", "--checkpoint.every_n_train_steps",
                                   "-1"], "checkpoint.every_n_train_steps must be a number of iterations, 1 or more"),
    # dataset files that lie about what they hold
    **{f"CIFAR-10 {case}": (["fit", "--config", str(REPO / "experiments/cifar10/base.yaml"), "--run_dir", "{root}/exp/new",
                            "--data.init_args.data_dir", f"{{root}}/cifar-{folder}", "--data.init_args.download", "false",
                            "--trainer.max_steps", "2"], f"{{root}}/cifar-{folder}/cifar-10-batches-py/data_batch_1 {what}")
       for case, folder, what in [
           ("NaN pixels", "nan", "holds pixels of type float64 from nan to nan, not bytes 0..255"),
           ("pixels above 255", "300", "holds pixels of type int64 from 200 to 455, not bytes 0..255"),
           ("more labels than images", "more-labels", "hold 40 images and 41 labels: every image has exactly one label"),
           ("fewer labels than images", "fewer-labels", "hold 40 images and 39 labels")]},
    "Fashion-MNIST with more labels than images": (
        ["fit", "--config", str(REPO / "experiments/cifar10/base.yaml"), "--data", "resnet_repro.data.FashionMNISTDataModule",
         "--run_dir", "{root}/exp/new", "--data.init_args.data_dir", "{root}/fashion-more-labels",
         "--data.init_args.download", "false", "--trainer.max_steps", "2"], "train-images-idx3-ubyte.gz and "
        "{root}/fashion-more-labels/FashionMNIST/raw/train-labels-idx1-ubyte.gz hold 240 images and 241 labels"),
    "Fashion-MNIST of 20x20 images": (
        ["fit", "--config", str(REPO / "experiments/cifar10/base.yaml"), "--data", "resnet_repro.data.FashionMNISTDataModule",
         "--run_dir", "{root}/exp/new", "--data.init_args.data_dir", "{root}/fashion-20x20",
         "--data.init_args.download", "false", "--trainer.max_steps", "2"], "train-images-idx3-ubyte.gz holds images "
        "of shape (20, 20), not (28, 28)"),
    "an unreadable ImageNet JPEG": (
        ["fit", "--config", str(REPO / "experiments/imagenet/base.yaml"), "--run_dir", "{root}/exp/new",
         "--data.init_args.data_dir", "{root}/imagenet", "--data.init_args.num_workers", "0",
         "--data.init_args.crop_size", "32", "--data.init_args.batch_size", "4", "--trainer.accelerator", "cpu",
         "--trainer.devices", "1", "--trainer.strategy", "auto",
         "--trainer.precision", "32-true", "--trainer.max_steps", "2"], ".JPEG is not a readable image (OSError"),
    # a run folder or an experiment folder from elsewhere must not choose what this machine reads, writes, fetches
    "responses on a run that names its own data folder and a download": (
        ["responses", "{root}/elsewhere/planted", "--out", "{root}/resp"],
        "CIFAR-10 is not in data/cifar-10-batches-py"),
    **{f"report on a manifest {case}": (["report", f"{{root}}/manifests/{name}", "--out", "{root}/rep"], what)
       for case, name, what in [
           ("naming a run outside its runs root", "outside", "names run folders outside {root}/manifests/<experiment>/<run> (../../exp/done)"),
           ("naming a run by an absolute path", "absolute", "names run folders outside {root}/manifests"),
           ("that is a list", "list-manifest", "{root}/manifests/list-manifest/experiment.json is not an experiment manifest"),
           ("whose runs are numbers", "runs-of-numbers", "runs-of-numbers/experiment.json is not an experiment manifest")]},
    "report on a summary that is a list": (["report", "{root}/list-summary", "--out", "{root}/rep"],
                                           "{root}/list-summary/run/summary.json is not a run summary of resnet-repro"),
    "report --out a symbolic link": (["report", "{root}/exp", "--out", "{root}/link"],
                                     "--out {root}/link is a symbolic link"),
    # issue 38, a row per class that takes this form (scripts, SIGHUP, concurrent writers: tests/test_hostile.py)
    "fit on a run directory holding a link": (
        ["fit", *DIGITS, *TINY, "--run_dir", "{root}/linked-exp/run"],
        "{root}/linked-exp/run/metrics.csv is a symbolic link inside the run directory {root}/linked-exp/run"),
    "report on a run whose metrics.csv is a link": (
        ["report", "{root}/linked-exp", "--out", "{root}/rep"],
        "{root}/linked-exp/run/metrics.csv is a symbolic link inside the run directory"),
    "report on a manifest naming a link loop": (
        ["report", "{root}/manifests/loop", "--out", "{root}/rep"],
        "{root}/manifests/loop/loop (a run directory) is a symbolic link"),
    "test on a checkpoint without its iteration count": (
        ["test", *DIGITS, "--run_dir", "{root}/exp/new", "--ckpt_path", "{root}/no-step.ckpt"],
        "checkpoint {root}/no-step.ckpt has no iteration count (global_step None"),
    "test on a checkpoint whose hyperparameters name another net": (
        ["test", *DIGITS, "--run_dir", "{root}/exp/new", "--ckpt_path", "{root}/renamed-net.ckpt"],
        "checkpoint {root}/renamed-net.ckpt does not hold the weights of the resnet56 it names"),
    "responses on a checkpoint whose hyperparameters name another net": (
        ["responses", "{root}/renamed-net.ckpt", "--data", str(REPO / "experiments/digits/base.yaml"), "--out",
         "{root}/resp"], "checkpoint {root}/renamed-net.ckpt does not hold the weights of the resnet56 it names"),
    "resume from a checkpoint of another net": (
        ["fit", *DIGITS, *TINY, "--run_dir", "{root}/foreign/swapped"],
        "checkpoint {root}/foreign/swapped/checkpoints/last.ckpt holds a resnet32 (shortcut A) of 10 classes, and this "
        "run is a resnet20 (shortcut A) of 10 classes"),
    "report on a summary with numbers as strings": (
        ["report", "{root}/string-summary", "--out", "{root}/rep"],
        "{root}/string-summary/run/summary.json: steps is '4', not a number"),
    **{f"run {flag} {value}": (["run", str(REPO / "experiments/demo.yaml"), "--launcher", "slurm", flag, value],
                               f"argument {flag}: '{value}' is not a whole number, 1 or more (resnet-repro run --help "
                               f"lists the options)")
       for flag, value in [("--nodes", "0"), ("--nodes", "-1"), ("--devices", "0"), ("--parallel", "0")]},
    "a budget of 1e-99999999": (["run", str(REPO / "experiments/demo.yaml"), "--dry-run", "--budget", "1e-99999999"],
                                "--budget 1e-99999999: give the fraction of the paper's schedule to train for"),
    "bench --batch-size 0": (["bench", "resnet20", "--batch-size", "0"],
                             "argument --batch-size: '0' is not a whole number, 1 or more"),
    "responses --images 0": (["responses", "{root}/exp/done", "--images", "0", "--out", "{root}/resp"],
                             "argument --images: '0' is not a whole number, 1 or more"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=str)
def test_hostile_input_is_refused_in_one_line_and_touches_nothing(case, workspace):
    argv, expected = HOSTILE[case]
    argv = [arg.replace("{root}", str(workspace)) for arg in argv]
    holder = None
    if case == "a second writer":  # another process holds the run directory
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from resnet_repro.rundir import RunLock; "
                                   "RunLock(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                                   str(workspace / "exp" / "done")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "held\n"
        expected = f"is in use by process {holder.pid} on {socket.gethostname()}"
    before = snapshot(workspace)
    try:
        message = cli_error(*argv)
    finally:
        if holder:
            holder.kill()
            holder.wait()
    assert expected.replace("{root}", str(workspace)) in message, message
    after = snapshot(workspace)
    assert {path: after.get(path) for path in before} == before  # nothing that was there is changed or deleted
    new_run = workspace / "exp" / "new"  # a new run that fails may leave its record (a failed summary), only there
    assert all(path.is_relative_to(new_run) for path in after.keys() - before.keys())
    shutil.rmtree(new_run, ignore_errors=True)


def test_planted_pickles_are_read_as_data_and_never_run(tmp_path):
    sentinel = tmp_path / PLANTED
    run = tmp_path / "exp" / "planted"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": Payload(sentinel), "hyper_parameters": {"model": "resnet20"}},
               run / "checkpoints" / "last.ckpt")
    for argv in (["fit", *DIGITS, *TINY, "--run_dir", str(run)],
                 ["test", *DIGITS, "--run_dir", str(run), "--ckpt_path", str(run / "checkpoints/last.ckpt")],
                 ["responses", str(run / "checkpoints/last.ckpt"), "--out", str(tmp_path / "resp")]):
        assert "is unreadable or not plain data (UnpicklingError" in cli_error(*argv)
    # a CIFAR-10 batch file is a pickle too
    folder = write_cifar10(tmp_path / "data")
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(sentinel)}, protocol=2))
    assert "posix.system is not part of a CIFAR-10 batch" in cli_error(
        "fit", "--config", str(REPO / "experiments/cifar10/base.yaml"), "--run_dir", str(tmp_path / "exp" / "c"),
        "--data.init_args.data_dir", str(tmp_path / "data"), "--data.init_args.download", "false")
    # a real checkpoint whose run config names code instead of a data module
    good = tmp_path / "exp" / "good"
    fit(*DIGITS, *TINY, "--trainer.max_steps", "2", "--run_dir", str(good))
    config = yaml.safe_load((good / "config.yaml").read_text())
    config["data"] = {"class_path": "subprocess.getoutput", "init_args": {"cmd": f"touch {sentinel}"}}
    (good / "config.yaml").write_text(yaml.safe_dump(config))
    assert "data.class_path 'subprocess.getoutput' is not one of resnet-repro's data modules" in cli_error(
        "responses", str(good / "checkpoints/last.ckpt"), "--out", str(tmp_path / "resp"))
    assert not sentinel.exists()


def test_one_writer_per_run_directory_and_a_dead_writers_lock_is_taken_over(tmp_path):
    run = tmp_path / "exp" / "r"
    args = ["fit", *DIGITS, *TINY, "--trainer.max_steps", "6", "--run_dir", str(run), "--wandb", "false"]
    first = subprocess.Popen([sys.executable, "-m", "resnet_repro.cli", *args, "--trainer.callbacks+=killer.PauseAtStep",
                              "--trainer.callbacks.init_args.step", "3"], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (run / "paused").is_file() and first.poll() is None:  # however long a busy machine takes
            time.sleep(0.1)
        assert (run / "paused").is_file(), f"the first writer ended (exit {first.returncode}) before iteration 3"
        before = snapshot(run)
        message = cli_error(*args, "--seed_everything", "7")  # a second writer, even with other settings
        assert f"{run} is in use by process {first.pid} on {socket.gethostname()}" in message
        assert snapshot(run) == before
    finally:
        first.kill()  # a writer that dies however it dies leaves no lock behind
        first.wait()
    fit(*args[1:])
    assert summary(run)["status"] == "finished" and summary(run)["steps"] == 6


KILL_ARGS = [*DIGITS, "--trainer.max_steps", "6", "--data.init_args.batch_size", "16", "--model.milestones", "[3]",
             "--checkpoint.every_n_train_steps", "2", "--trainer.log_every_n_steps", "3",
             "--trainer.val_check_interval", "3", "--wandb", "false"]


def kill_at(step: int, run: Path) -> subprocess.Popen:
    """A fit of KILL_ARGS in a fresh process that SIGKILLs itself at the start of iteration `step + 1`."""
    return subprocess.Popen([sys.executable, "-m", "resnet_repro.cli", "fit", *KILL_ARGS, "--run_dir", str(run),
                             "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=killer.KillAtStep",
                             "--trainer.callbacks.init_args.step", str(step)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_at_every_iteration_a_resumed_runs_metrics_csv_is_the_uninterrupted_runs_byte_for_byte(tmp_path):
    straight = tmp_path / "exp" / "straight"
    fit(*KILL_ARGS, "--run_dir", str(straight))
    expected = read_metrics(straight)
    assert set(expected.metric) >= {"train/loss", "train/error", "lr", "val/error", "test/error"}
    assert sorted(expected[expected.metric == "train/loss"].step) == [1, 2, 3, 4, 5, 6]

    killed = {step: tmp_path / "exp" / f"killed-at-{step}" for step in range(1, 6)}
    processes = [kill_at(step, run) for step, run in killed.items()]
    assert [process.wait() for process in processes] == [-signal.SIGKILL] * 5
    for step, run in killed.items():
        state = summary(run)
        # as of its last checkpoint (every 2) or validation (every 3), not 0
        assert state["status"] == "running" and max(step - step % 2, step - step % 3) == state["steps"]
    metrics = killed[5] / "metrics.csv"
    metrics.write_bytes(metrics.read_bytes() + b"5,0.43")  # a writer killed in the middle of a line
    for step, run in killed.items():
        fit(*KILL_ARGS, "--run_dir", str(run))
        assert summary(run)["status"] == "finished", step
        assert (run / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes(), f"killed at {step}"
    twice = tmp_path / "exp" / "killed-twice"  # killed at 3, resumed from 2, killed again at 5, resumed from 4
    for step in (3, 5):
        assert kill_at(step, twice).wait() == -signal.SIGKILL
    fit(*KILL_ARGS, "--run_dir", str(twice))
    assert (twice / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()


def test_a_changed_setting_resumes_only_when_accepted_and_is_recorded(tmp_path):
    run = tmp_path / "exp" / "r"
    fit(*DIGITS, *TINY, "--run_dir", str(run))
    finished = summary(run)
    fit(*DIGITS, *TINY, "--run_dir", str(run))  # the same command again: nothing to train, nothing touched
    assert summary(run) == finished
    fit(*DIGITS, *TINY, "--run_dir", str(run), "--trainer.max_steps", "6", "--accept_config_change", "true")
    extended = summary(run)
    assert extended["status"] == "finished" and extended["steps"] == 6
    assert extended["config_changes"] == [{"step": 4, "changed": {"trainer.max_steps": [4, 6]}}]
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_steps"] == 6
    assert read_metrics(run).query("metric == 'train/loss'").step.tolist() == [1, 2, 3, 4, 5, 6]


def test_the_latest_evaluation_wins_and_the_summary_stays_whole(tmp_path):
    data_a, data_b = write_cifar10(tmp_path / "a", seed=1).parent, write_cifar10(tmp_path / "b", seed=2).parent
    run = tmp_path / "exp" / "r"
    cifar = ["--config", str(REPO / "experiments/cifar10/base.yaml"), "--trainer.accelerator", "cpu",
             "--data.init_args.download", "false", "--data.init_args.val_size", "21"]
    fit(*cifar, *TINY, "--run_dir", str(run), "--data.init_args.data_dir", str(data_a))
    fitted = summary(run)
    errors = []
    for data in (data_a, data_b):
        main_test = ["test", *cifar, "--run_dir", str(run), "--wandb", "false", "--data.init_args.data_dir", str(data),
                     "--ckpt_path", str(run / "checkpoints/last.ckpt"), "--trainer.enable_progress_bar", "false"]
        from resnet_repro.cli import main
        main(main_test)
        errors.append(summary(run)["test/single_view/error"])
    rows = read_metrics(run).query("metric == 'test/single_view/error'")
    # the last evaluation of step 4 (read_metrics gives percent, summary.json fractions)
    assert rows.step.tolist() == [4] and rows.value.tolist() == [100 * errors[1]]
    assert errors[0] != errors[1]  # other test images: the two evaluations differ, and the second one is kept
    now = summary(run)
    assert {k: now[k] for k in fitted} == fitted  # status, steps, val/ and test/ errors of the fit are kept


def test_wandb_that_cannot_reach_its_server_gives_up_within_its_init_timeout(tmp_path):
    server = socket.socket()  # accepts connections and never answers: a network that swallows packets
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    run = tmp_path / "exp" / "online"
    result = run_cli("fit", *DIGITS, *TINY, "--run_dir", str(run), "--trainer.enable_progress_bar", "false",
                     env={"WANDB_MODE": "online", "WANDB_API_KEY": "a" * 40, "WANDB_INIT_TIMEOUT": "3",
                          "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}",
                          # W&B's error reporting probes the server once more at exit (10 s); not this run's wait
                          "WANDB_ERROR_REPORTING": "false"},
                     timeout=80)  # W&B's own default would wait 90 s
    assert result.returncode == 0, result.stderr[-2000:]
    [warning] = [line for line in result.stderr.splitlines() if "W&B is unusable" in line]
    assert "Timed out" in warning and f"logs to {run}/metrics.csv only" in warning
    assert summary(run)["status"] == "finished" and accepted  # it did try the server


def test_run_stops_its_child_when_it_is_stopped_or_killed(tmp_path):
    path = tmp_path / "exps" / "pause.yaml"
    path.parent.mkdir()
    run = tmp_path / "runs" / "exps-pause" / "resnet20-s0"
    # the `run` of this checkout, whatever copy the console script was installed from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "WANDB_MODE": "offline"}
    # stopped while paused before iteration 4 (then 6, 8), the child finishes that iteration and its checkpoint
    for how, pause, checkpoint in [(signal.SIGTERM, 3, 4), (signal.SIGHUP, 5, 6), (signal.SIGKILL, 7, 8)]:
        path.write_text(yaml.safe_dump({
            "recipe": str(REPO / "experiments/digits/base.yaml"), "grid": {"model.model": ["resnet20"]},
            "overrides": {"trainer.max_steps": 10, "data.init_args.batch_size": 16, "checkpoint.every_n_train_steps": 2,
                          "trainer.val_check_interval": 10, "wandb": False, "trainer.enable_progress_bar": False,
                          "trainer.callbacks": [{"class_path": "killer.PauseAtStep", "init_args": {"step": pause}}]}}))
        (run / "paused").unlink(missing_ok=True)
        parent = subprocess.Popen([str(Path(sys.executable).parent / "resnet-repro"), "run", str(path), "--runs-root",
                                   str(tmp_path / "runs")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True,
                                  # as from a terminal, even when the tests run under nohup (whose ignored SIGHUP
                                  # every child inherits, and `run` rightly keeps)
                                  preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
        try:
            while not (run / "paused").is_file() and parent.poll() is None:  # however long a busy machine takes
                time.sleep(0.1)
            child = int((run / "paused").read_text())
            if how == signal.SIGHUP:  # a closed terminal or ssh session: to `run` and its fit alike
                os.killpg(parent.pid, how)
            else:
                parent.send_signal(how)
            _, stderr = parent.communicate(timeout=HANG)
        finally:
            parent.kill()
        for _ in range(HANG * 10):  # the child ends too
            if not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"the fit child {child} outlived `run` stopped by {how.name}")
        if how != signal.SIGKILL:  # SIGHUP is handled as SIGTERM
            assert parent.returncode != 0
            assert stderr.strip().splitlines()[-1] == ("resnet-repro run: stopped by SIGTERM; a run keeps its last "
                                                       "checkpoint, and the same command resumes it")
        assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == checkpoint
        assert summary(run)["status"] == "interrupted"


def test_a_full_disk_mid_checkpoint_ends_in_one_line_keeps_the_last_good_checkpoint_and_resumes(tmp_path, monkeypatch):
    run = tmp_path / "exp" / "full"
    save = torch.save
    calls = []

    def fills_the_disk(obj, path, *args, **kwargs):  # the second checkpoint: half written, then no space left
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    message = cli_error("fit", *QUIET, "--wandb", "false", *DIGITS, *TINY, "--run_dir", str(run))
    assert calls[1].parent == run / "checkpoints"  # written beside its target, not in $TMPDIR
    assert re.fullmatch(rf"last\.ckpt\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", calls[1].name)  # this process's own
    assert message == (f"resnet-repro fit: No space left on device ({calls[1]}): free some space, then the same "
                       f"command goes on from the last checkpoint")
    assert summary(run)["status"] == "failed" and "No space left on device" in summary(run)["error"]
    assert sorted(p.name for p in run.rglob("*.tmp")) == []  # no half-written leftovers
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 2  # the last good one
    monkeypatch.setattr(torch, "save", save)
    fit(*DIGITS, *TINY, "--run_dir", str(run))
    assert summary(run)["status"] == "finished" and summary(run)["steps"] == 4


def test_replacing_an_output_keeps_every_sibling_and_its_folders_follow_the_umask(tmp_path):
    from resnet_repro.files import staged

    (tmp_path / ".rep-old").mkdir()  # a user's folder that the old replacement would have deleted
    (tmp_path / ".rep-old" / "thesis.tex").write_text("mine\n")
    old_umask = os.umask(0o022)
    try:
        for text in ("first", "second"):
            with staged(tmp_path / "rep") as folder:
                (folder / "table.md").write_text(text)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "rep" / "table.md").read_text() == "second"
    assert (tmp_path / ".rep-old" / "thesis.tex").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rep-old", "rep"]
    assert stat.S_IMODE((tmp_path / "rep").stat().st_mode) == 0o755
