"""An experiment file: a recipe, the runs that differ from it, and how to launch them.

    recipe: experiments/cifar10/base.yaml     # the base LightningCLI config, relative to the repository root
    overrides: {trainer.max_steps: 300}        # dotted config keys set in every run
    grid: {model.model: [resnet20, resnet56]}  # the cartesian product of these values ...
    runs: [{model.model: resnet110, seeds: [0, 1, 2]}]  # ... and/or these runs (a run may set its own seeds)
    seeds: [0]                                 # the default seeds of every run
    patches: [{when: {model.model: resnet1202}, set: {model.warmup: true}}]  # settings for the runs that match
    evaluate: [single_view]                    # the test protocols each run is evaluated under when it finishes
    runs_from: [{experiment: experiments/imagenet/table2.yaml, runs: [plain34-s0]}]  # runs of another experiment

A run is named after what sets it apart (`resnet56-s0`, `resnet34-B-s0`) and lives in
`runs/<experiment>/<name>/`, where <experiment> is the file's folder and stem (`cifar10-table6`); a run taken
from another experiment stays in that one's folder, and `runs/<experiment>/experiment.json` lists them all.
`resnet-repro run FILE` trains the runs one after another here, or up to N at once with `--parallel N` (each
a child process on devices of its own, its output in its run's fit.log, a live view here: see sweep.py), or
writes a torchrun script into each run's directory or one SLURM array job for the experiment
(runs/<experiment>/job.sbatch); `--dry-run` prints the runs with their size and cost; `--smoke` runs the whole
file in miniature. Finished runs are skipped (and evaluated under any protocol they lack) and interrupted ones
resume, so rerunning the same command completes an experiment.
"""

import argparse
import collections
import functools
import importlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from jsonargparse import ArgumentError
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .analysis.complexity import count_macs, count_params, meta_model
from .batchnorm import bn_groups
from .cli import budget_fraction, check_config, data_class
from .models import get_spec
from .files import read_yaml, write_json_atomically
from .rundir import last_checkpoint, read_summary
from .sweep import DevicePool, Job, cpu_threads, run_side_by_side, start_child, stop_children, visible_gpus

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_KEYS = {"recipe", "overrides", "grid", "runs", "seeds", "patches", "evaluate", "runs_from"}
LAUNCHERS = ("local", "torchrun", "slurm")
# The recipe settings for what the paper leaves implicit (README, Deviations): `--dry-run` names a run's that
# differ from its recipe.
# Every iteration count of a recipe: what `run --budget F` scales by F (nothing else: batch, lr, data and
# augmentation stay the paper's).
SCHEDULE_KEYS = ("trainer.max_steps", "model.milestones", "trainer.val_check_interval",
                 "checkpoint.every_n_train_steps", "model.warmup_max_steps")
FIDELITY_SWITCHES = ("data.init_args.train_on_all", "model.bn_group_size", "model.warmup", "model.sgd_form",
                     "precise_bn_batches", "trainer.deterministic")


def dotted(config: dict, key: str):
    """A nested config's value for a dotted key (None where it has none)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


@dataclass
class Run:
    name: str
    seed: int
    settings: dict  # dotted config key -> value, on top of the recipe
    experiment: str  # the experiment that defines the run: it lives in runs/<experiment>/<name>/
    recipe: Path
    recipe_config: dict
    protocols: list[str]  # its experiment's test protocols, evaluated when it finishes

    def setting(self, key: str):
        """The run's value for a dotted key: its own setting, else the recipe's (None if neither has it)."""
        return self.settings[key] if key in self.settings else self.recipe_setting(key)

    def recipe_setting(self, key: str):
        return dotted(self.recipe_config, key)

    def fit_args(self, run_dir: Path, protocols: list[str] | None = None) -> list[str]:
        """The arguments of `resnet-repro fit` for this run (and of `test` under `protocols`)."""
        protocols = self.protocols if protocols is None else protocols
        args = ["--config", shown(self.recipe), "--run_dir", shown(run_dir), "--seed_everything", str(self.seed)]
        for key, value in self.settings.items():
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return args + (["--protocols", json.dumps(protocols)] if protocols else [])


@dataclass
class Experiment:
    name: str  # runs/<name>/: the W&B group
    recipe: Path
    protocols: list[str]  # the test protocols its report compares with the paper
    runs: list[Run]  # its own runs, then those it takes from other experiments


def shown(path: Path) -> str:
    """A path as a command shows it: relative to the working directory when it lies inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


# A run's or an experiment's name is a folder of the runs root: one path component, never `..` or hidden
SAFE_NAME = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]{0,99}")
MAX_RUNS = 1000  # more runs than this in one file need --only: expanding and checking each takes ~80 ms


def checked_name(name: str, what: str) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is not a safe folder name: letters, digits and . _ - @ +, not "
                         f"starting with '.', at most 100 characters")
    return name


def experiment_name(path: Path) -> str:
    path = Path(path).absolute()
    name = path.stem if path.parent.name == "experiments" else f"{path.parent.name}-{path.stem}"
    try:
        return checked_name(name, "the experiment")
    except ValueError as error:
        raise ValueError(f"{path}: {error} (it is the file's folder and stem): rename the file") from None


def load_yaml(path: Path, what: str) -> dict:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a mapping of keys to values")
    return data


def run_name(settings: dict, distinguishing: list[str], seed: int, model: str) -> str:
    """Model, shortcut if set, then the values of the other keys that vary between runs, then the seed."""
    parts = [model, settings.get("model.shortcut")]
    parts += [f"{key.rsplit('.', 1)[-1]}{settings[key]}" for key in distinguishing if key in settings]
    name = "-".join(str(part) for part in [*parts, f"s{seed}"] if part is not None)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)  # a directory name


def check_shapes(path: Path, spec: dict) -> None:
    """Each top-level key holds the kind of value it must (a value of the wrong kind would otherwise be read in
    some other way: a bare string as a grid's list of characters)."""
    def refuse(key: str, value, expected: str) -> None:
        raise ValueError(f"{path}: {key} must be {expected}, not {type(value).__name__} {value!r}")

    if not isinstance(spec["recipe"], str):
        refuse("recipe", spec["recipe"], "one path, e.g. experiments/cifar10/base.yaml")
    for key in ("overrides", "grid"):
        if not isinstance(spec.get(key) or {}, dict):
            refuse(key, spec[key], "a mapping of dotted config keys, e.g. {model.model: ...}")
    for key in ("overrides", "grid"):
        for name in spec.get(key) or {}:
            if not isinstance(name, str):
                refuse(f"each key of {key}", name, "a dotted config key, e.g. model.model")
    for key, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            refuse(f"grid key {key}", values, f"a non-empty list of values, e.g. {key}: [{values}]")
    if not isinstance(spec.get("runs") or [], list):
        refuse("runs", spec["runs"], "a list of mappings of settings")
    for entry in spec.get("runs") or []:
        if not isinstance(entry, dict):
            refuse("each entry of runs", entry, "a mapping of settings, e.g. {model.model: resnet20}")
    for patch in spec.get("patches") or []:
        if not isinstance(patch, dict) or set(patch) != {"when", "set"} or not all(isinstance(v, dict) for v in patch.values()):
            refuse("each patch", patch, "{when: {key: value}, set: {key: value}}")


def budget_label(budget: Fraction) -> str:
    """How a budget marks the experiment's folder: runs/<experiment>@1-32/ (none for the full schedule)."""
    return "" if budget == 1 else f"@{budget.numerator}-{budget.denominator}"


def scaled_schedule(config: dict, budget: Fraction) -> dict:
    """The settings that train a resolved fit config for `budget` of its schedule: each iteration count x budget
    (rounded, at least 1), the budget recorded."""
    def scale(count: int) -> int:
        return max(1, round(count * budget))

    settings = {}
    for key in SCHEDULE_KEYS:
        value = dotted(config, key)
        if isinstance(value, list):
            settings[key] = [scale(count) for count in value]
        elif isinstance(value, int) and not isinstance(value, bool):
            settings[key] = scale(value)
        elif value is not None:  # val_check_interval as a fraction of an epoch: not an iteration count
            raise ValueError(f"{key} is {value!r}: a budget scales iteration counts, and this one is not a whole "
                             f"number of iterations")
    return {**settings, "budget": str(budget)}


def load_experiment(path: Path, seen: frozenset = frozenset(), budget: Fraction = Fraction(1),
                    only: set[str] | None = None) -> Experiment:
    """Read and expand an experiment file, at `budget` of the paper's schedule (its runs then live in
    runs/<experiment>@<budget>/, apart from the full ones); anything malformed raises ValueError naming the file
    and run. With `only`, only the runs of those names are checked against the recipe (the others are named);
    without it, a file of more than MAX_RUNS runs is refused before expanding it."""
    path = Path(path)
    spec = load_yaml(path, "an experiment file")
    unknown = sorted(set(spec) - TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key {', '.join(unknown)}: valid keys are {', '.join(sorted(TOP_LEVEL_KEYS))}")
    if "recipe" not in spec:
        raise ValueError(f"{path}: no recipe: name the base config, e.g. recipe: experiments/cifar10/base.yaml")
    check_shapes(path, spec)
    recipe = REPO / spec["recipe"]
    if not recipe.is_file():
        raise ValueError(f"{path}: recipe {spec['recipe']} does not exist (paths are relative to {REPO})")
    patches = spec.get("patches") or []

    protocols = spec.get("evaluate") or []
    experiment = Experiment(experiment_name(path) + budget_label(budget), recipe, protocols, [])
    recipe_config = load_yaml(recipe, "a recipe")
    grid = spec.get("grid") or {}
    default_seeds = spec.get("seeds", [0])
    def how_many(seeds) -> int:  # a malformed seeds entry is refused below
        return len(seeds) if isinstance(seeds, list) else 1

    count = (math.prod(map(len, grid.values())) * how_many(default_seeds) if grid else 0) + sum(
        how_many(entry.get("seeds", default_seeds)) for entry in spec.get("runs") or [])
    if count > MAX_RUNS and only is None:
        raise ValueError(f"{path} makes {count:,} runs, more than {MAX_RUNS:,} in one go: pick some with --only NAME "
                         f"..., or split the grid into several files")
    entries = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    entries += [dict(entry) for entry in spec.get("runs") or []]
    if not entries and not spec.get("runs_from"):
        entries = [{}]  # the recipe itself
    seeds = [entry.pop("seeds", default_seeds) for entry in entries]
    for entry_seeds in seeds:
        if not isinstance(entry_seeds, list) or not all(isinstance(seed, int) for seed in entry_seeds):
            raise ValueError(f"{path}: seeds must be a list of integers, not {entry_seeds!r}")
    # keys whose value differs between runs name them; model and shortcut come first in every name
    keys = {key for entry in entries for key in entry} - {"model.model", "model.shortcut"}
    distinguishing = sorted(key for key in keys if len({json.dumps(e.get(key)) for e in entries}) > 1)

    for entry, entry_seeds in zip(entries, seeds):
        settings = {**(spec.get("overrides") or {}), **entry}
        for seed in entry_seeds:
            run = Run("", seed, dict(settings), experiment.name, recipe, recipe_config, protocols)
            run.name = run_name(settings, distinguishing, seed, run.setting("model.model"))
            for patch in patches:  # after naming: a patch follows from the settings, it does not set a run apart
                if all(run.setting(key) == value for key, value in patch["when"].items()):
                    run.settings.update(patch["set"])
            experiment.runs.append(run)
            if only is not None and run.name not in only:
                continue
            try:
                checked_name(run.name, "the run")
                config = check_config(run.fit_args(Path("runs") / experiment.name / run.name))
                if budget != 1:
                    run.settings.update(scaled_schedule(config, budget))
                    check_config(run.fit_args(Path("runs") / experiment.name / run.name))
                build_on_meta(run)
            except (ArgumentError, ValueError) as error:
                raise ValueError(f"{path}: run {run.name}: {error}") from error
    for source in spec.get("runs_from") or []:
        experiment.runs += shared_runs(path, source, seen | {path.resolve()}, budget)
    check_protocols(path, experiment)

    names = collections.Counter((run.experiment, run.name) for run in experiment.runs)
    duplicates = sorted({name for (_, name), times in names.items() if times > 1})
    if duplicates:
        raise ValueError(f"{path}: more than one run is named {', '.join(duplicates)}: make their settings differ")
    return experiment


def shared_runs(path: Path, source: dict, seen: set[Path], budget: Fraction) -> list[Run]:
    """The runs an experiment takes from another (`runs_from: [{experiment: FILE, runs: [NAME, ...]}]`, all of
    its runs when `runs` is left out): trained once, in the other experiment's folder, with its settings."""
    if not isinstance(source, dict) or "experiment" not in source or set(source) - {"experiment", "runs"}:
        raise ValueError(f"{path}: each entry of runs_from is {{experiment: experiments/..., runs: [NAME, ...]}}, "
                         f"not {source!r}")
    other = REPO / source["experiment"]
    if other.resolve() in seen:
        raise ValueError(f"{path}: runs_from {source['experiment']} comes back to an experiment already read")
    if not other.is_file():
        raise ValueError(f"{path}: runs_from {source['experiment']} does not exist (paths are relative to {REPO})")
    runs = load_experiment(other, seen, budget, set(source["runs"]) if source.get("runs") else None).runs
    wanted = source.get("runs") or [run.name for run in runs]
    missing = sorted(set(wanted) - {run.name for run in runs})
    if missing:
        raise ValueError(f"{path}: {source['experiment']} has no run {', '.join(missing)}: its runs are "
                         f"{', '.join(run.name for run in runs)}")
    return [run for run in runs if run.name in wanted]


def check_protocols(path: Path, experiment: Experiment) -> None:
    for run in experiment.runs:
        data = data_class(run.setting("data.class_path"))
        unknown = [protocol for protocol in experiment.protocols if protocol not in data.protocols]
        if unknown:
            raise ValueError(f"{path}: evaluate: {', '.join(unknown)} is not a test protocol of {data.__name__} "
                             f"(run {run.name}), whose protocols are {', '.join(data.protocols)}")


def build_on_meta(run: Run) -> torch.nn.Module:
    """The run's net with shapes only: checks the model, counts its size (one build per distinct net)."""
    return meta_model(run.setting("model.model"), run.setting("model.shortcut"), run.setting("model.num_classes"))


def device_args(launcher: str, devices: int, nodes: int, asked: bool) -> list[str]:
    if launcher == "local" and not asked:
        return []  # the recipe's devices
    # under torchrun and SLURM, Lightning checks these against the processes the launcher started
    args = ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(devices)]
    return args + ["--trainer.strategy", "ddp" if devices * nodes > 1 else "auto"]


def describe(run: Run, command: str, world_size: int) -> str:
    net = build_on_meta(run)
    model = run.setting("model.model")
    steps, batch = run.setting("trainer.max_steps"), run.setting("data.init_args.batch_size")
    flops = 3 * count_macs(net, get_spec(model).input_size) * batch * steps
    switches = [f"{key} {json.dumps(run.settings[key])} (recipe: {json.dumps(run.recipe_setting(key))})"
                for key in FIDELITY_SWITCHES if key in run.settings and run.settings[key] != run.recipe_setting(key)]
    bn, shrunk = bn_groups(run.setting("model.bn_group_size"), batch, world_size)
    budget = run.settings.get("budget")
    schedule = (f"  budget {budget} of the paper's schedule: " + ", ".join(
        f"{key} {json.dumps(run.settings[key])}" for key in SCHEDULE_KEYS if key in run.settings) + "\n") if budget else ""
    return (f"{run.name}: {model}, {steps:,} iterations of {batch}, {count_params(net):,} params, "
            f"{flops:.3g} training FLOPs\n" + schedule + (f"  switches: {'; '.join(switches)}\n" if switches else "")
            + f"  {'warning: ' if shrunk else ''}{bn}\n  {command}")


def launch_command(launcher: str, subcommand: str, args: list[str], nodes: int, devices: int) -> str:
    """The command line that trains (fit) or evaluates (test) a run: here, under torchrun (on each node), or as
    SLURM's job step."""
    line = f"{subcommand} {shlex.join(args)}"
    if launcher == "torchrun":
        return (f"torchrun --nnodes {nodes} --nproc_per_node {devices} --node_rank ${{NODE_RANK:-0}} "
                f"--master_addr ${{MASTER_ADDR:-127.0.0.1}} --master_port ${{MASTER_PORT:-29500}} "
                f"-m resnet_repro.cli {line}")
    return f"srun --kill-on-bad-exit=1 resnet-repro {line}" if launcher == "slurm" else f"resnet-repro {line}"


def slurm_array_script(experiment: Experiment, folder: Path, tasks: list[tuple[Run, Path, list[str]]], nodes: int,
                       devices: int, at_once: int) -> str:
    """One SLURM array job for the experiment (written into `folder`, runs/<experiment>/): task i runs the i-th
    run's commands, at most `at_once` tasks at a time, each task's output in its run directory."""
    cases = []
    for index, (run, run_dir, commands) in enumerate(tasks):
        log = f"{run_dir.absolute()}/slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out"
        cases += [f"  {index})  # {run.name}", f'    exec >>"{log}" 2>&1', *(f"    {command}" for command in commands),
                  "    ;;"]
    # Lightning's SLURM plugin catches SIGUSR1 (sent 90 s before the time limit), saves and requeues the task;
    # the requeued task's `fit` resumes from last.ckpt in the run directory.
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={experiment.name}",
        f"#SBATCH --array=0-{len(tasks) - 1}%{at_once}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={devices}",
        f"#SBATCH --gpus-per-node={devices}",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        f"#SBATCH --output={folder.absolute()}/slurm-%A_%a.out",  # until the task's own log opens
        "set -e  # a task whose fit fails stops there: no evaluation of a run that did not finish",
        f"cd {shlex.quote(str(Path.cwd()))}",
        'case "$SLURM_ARRAY_TASK_ID" in',
        *cases,
        "esac",
        "",
    ])


def torchrun_script(run: Run, commands: list[str], nodes: int) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# {run.name}: run on each of the {nodes} node(s), with NODE_RANK and MASTER_ADDR set for a multi-node job",
        f"cd {shlex.quote(str(Path.cwd()))}",
        *commands,
        "",
    ])


def raise_sigterm(signum, frame) -> None:
    raise SIGTERMException()


def train_here(args: list[str]) -> int:
    """`resnet-repro fit` (or `test`) in a child process; the exit status. When `run` is stopped (Ctrl-C, SIGTERM) the child
    is stopped with SIGTERM and waited for: it ends between two iterations, its last checkpoint intact."""
    child = start_child(args)
    try:
        return child.wait()
    except BaseException:
        stop_children([child])
        raise


def run_in_this_process(args: list[str]) -> int:
    """`resnet-repro fit` (or `test`) in this process, through the same entry point a child runs; the exit status.
    A miniature's runs take seconds, and a fresh process would spend more than that importing torch."""
    from .cli import main

    try:
        main(args)
    except SystemExit as stop:
        if stop.code not in (0, None):
            print(stop.code, file=sys.stderr)
            return 1
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="resnet-repro run", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiment file, e.g. experiments/cifar10/table6.yaml")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these runs (names as --dry-run prints them)")
    parser.add_argument("--devices", type=int, help="devices per node for each run (default: the recipe's)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per run (torchrun and slurm)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: train here; torchrun: write a launch script per run; slurm: write one array job")
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="local: up to N runs at once, each its own fit process on its own devices, its output in "
                             "its run's fit.log, a live view here; slurm: at most N array tasks at once")
    parser.add_argument("--gpus", metavar="I,J,...", help="with --parallel: the GPUs to share out (default: all visible)")
    parser.add_argument("--runs-per-gpu", type=int, metavar="K",
                        help="with --parallel: K one-device runs share each GPU (default 1)")
    parser.add_argument("--budget", default="1", metavar="F",
                        help="train for F of the paper's schedule (1/2, 1/8, 1/32, ...): every iteration count x F "
                             "(max_steps, lr milestones, validation and checkpoint intervals, the warm-up's cap), "
                             "nothing else; the runs live in runs/<experiment>@1-32/, apart from the full ones")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, their size and cost; start nothing")
    parser.add_argument("--submit", action="store_true", help="start the written scripts (bash / sbatch)")
    parser.add_argument("--runs-root", type=Path, help="where <experiment>/<run>/ go (default runs, or runs-smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="a miniature: every run for 4 iterations on small stand-in data in the dataset's real "
                             "format, on the CPU in this process, then its evaluations; report makes the full report")
    return parser.parse_args(argv)


def device_pool(args: argparse.Namespace) -> DevicePool | None:
    """The GPUs that --parallel's runs share (none on a CPU-only machine), or None without --parallel here;
    bad combinations of --parallel, --gpus and --runs-per-gpu refused."""
    sharing = [flag for flag, value in (("--gpus", args.gpus), ("--runs-per-gpu", args.runs_per_gpu)) if value]
    if args.parallel is not None and args.parallel < 1:
        raise ValueError(f"--parallel {args.parallel}: the number of runs at once must be 1 or more")
    if args.parallel is None or args.launcher != "local":
        if sharing:
            raise ValueError(f"{' and '.join(sharing)} share GPUs out between runs side by side here: they go with "
                             f"--parallel N and the local launcher")
        if args.parallel is not None and args.launcher == "torchrun":
            raise ValueError("--parallel is for the local launcher (runs side by side here) and slurm (array tasks "
                             "at once); a torchrun script runs one run")
        return None
    if args.smoke:
        raise ValueError("--smoke runs its miniatures one after another in this process: leave out --parallel")
    visible = len(visible_gpus())
    try:
        gpus = [int(gpu) for gpu in args.gpus.split(",")] if args.gpus else list(range(visible))
    except ValueError:
        raise ValueError(f"--gpus {args.gpus}: give GPU indices separated by commas, e.g. --gpus 0,1") from None
    hidden = [str(gpu) for gpu in gpus if not 0 <= gpu < visible]
    if hidden:
        raise ValueError(f"--gpus {args.gpus}: GPU {', '.join(hidden)} is not visible here (this process sees "
                         + (f"GPUs 0 to {visible - 1})" if visible else "no GPU)"))
    if args.runs_per_gpu is not None and not gpus:
        raise ValueError("--runs-per-gpu shares GPUs, and this machine has none: here --parallel N splits the CPU "
                         "cores between the N runs")
    if args.runs_per_gpu is not None and args.runs_per_gpu < 1:
        raise ValueError(f"--runs-per-gpu {args.runs_per_gpu}: the runs that share a GPU must be 1 or more")
    return DevicePool(gpus, args.runs_per_gpu or 1)


def run_command(argv: list[str]) -> None:
    args = parse_args(argv)
    experiment = load_experiment(args.experiment, budget=budget_fraction(args.budget),
                                 only=set(args.only) if args.only else None)
    runs = experiment.runs
    if args.only:
        missing = sorted(set(args.only) - {run.name for run in runs})
        if missing:
            listed = ", ".join(run.name for run in runs[:20]) + (f", ... ({len(runs):,} in all)" if len(runs) > 20 else "")
            raise ValueError(f"{args.experiment} has no run {', '.join(missing)}: its runs are {listed}")
        runs = [run for run in runs if run.name in args.only]
    if args.nodes > 1 and args.launcher == "local":
        raise ValueError("--nodes needs --launcher torchrun or slurm: the local launcher uses this machine only")
    pool = device_pool(args)

    signal.signal(signal.SIGTERM, raise_sigterm)  # stopped like Ctrl-C: the children are stopped first
    runs_root = args.runs_root or Path("runs-smoke" if args.smoke else "runs")
    if args.dry_run:
        print(f"{experiment.name}: {len(runs)} runs on {shown(experiment.recipe)}; training FLOPs are counted as the "
              f"paper counts FLOPs, in multiply-adds: forward + backward ~ 3 x forward, x batch x iterations")
    else:
        write_manifest(experiment, runs_root, args.experiment, args.smoke)
    jobs, tasks = [], []  # what is left to do: as Jobs (local), as script lines (torchrun, slurm)
    for run in runs:
        run_dir = runs_root / run.experiment / run.name
        devices = 1 if args.smoke else args.devices or run.setting("trainer.devices") or 1
        if not isinstance(devices, int) or devices < 1:
            raise ValueError(f"run {run.name}: {devices!r} devices: each run of an experiment takes a number of "
                             f"devices, 1 or more (set trainer.devices, or --devices N)")
        extra = smoke_args(run, runs_root / ".standin-data" / experiment.name) if args.smoke else []
        extra += device_args(args.launcher, devices, args.nodes, asked=args.devices is not None or args.smoke)
        run_args = run.fit_args(run_dir) + extra
        summary = read_summary(run_dir)
        missing = [p for p in experiment.protocols if f"test/{p}/error" not in summary and p not in run.protocols]
        evaluate_args = [*run.fit_args(run_dir, missing), *extra, "--ckpt_path", shown(last_checkpoint(run_dir))]
        commands = [launch_command(args.launcher, "fit", run_args, args.nodes, devices)]
        if missing:  # protocols of this experiment that the run's own experiment does not evaluate
            commands.append(launch_command(args.launcher, "test", evaluate_args, args.nodes, devices))
        if args.dry_run:
            print(describe(run, "\n  ".join(commands), devices * args.nodes))
            continue
        finished = summary.get("status") == "finished"
        if finished:
            print(f"{run.name}: finished, skipped" + (f"; evaluating {', '.join(missing)}" if missing else ""))
            if not missing:
                continue
        # a run directory with a checkpoint resumes: fit does that itself
        todo = ([] if finished else [["fit", *run_args]]) + ([["test", *evaluate_args]] if missing else [])
        jobs.append(Job(run.name, run_dir, devices, run.setting("trainer.max_steps"),
                        run.setting("data.init_args.batch_size"), todo, on_gpu=run.setting("trainer.accelerator") != "cpu"))
        tasks.append((run, run_dir, devices, commands[1:] if finished else commands))
    if args.dry_run:
        return
    if args.launcher == "local" and pool is not None:
        too_large = [f"{job.name} ({job.devices})" for job in jobs if pool.places and job.devices > len(pool.places)]
        if too_large:
            raise ValueError(f"{', '.join(too_large)} need more GPUs than the {len(pool.places)} shared out here: "
                             f"pass --gpus with more, or --devices")
        failed = [f"{job.name} (log: {shown(job.log)})"
                  for job in run_side_by_side(jobs, args.parallel, pool, cpu_threads(args.parallel))]
    elif args.launcher == "local":
        failed = [job.name for job in jobs if not run_one_after_another(job, args.smoke)]
    else:
        failed = write_scripts(args, experiment, runs_root, tasks)
    if failed:
        sys.exit(f"resnet-repro run: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)} "
                 f"(rerun the same command to resume them)")


def write_scripts(args: argparse.Namespace, experiment: Experiment, runs_root: Path,
                  tasks: list[tuple[Run, Path, int, list[str]]]) -> list[str]:
    """torchrun: launch.sh in each run directory; slurm: one array job, runs/<experiment>/job.sbatch. With
    --submit they are started (bash / sbatch); the names of the runs whose start failed."""
    if args.launcher == "torchrun":
        failed = []
        for run, run_dir, _, commands in tasks:
            run_dir.mkdir(parents=True, exist_ok=True)
            script = run_dir / "launch.sh"
            script.write_text(torchrun_script(run, commands, args.nodes))
            print(f"{run.name}: wrote {shown(script)}")
            if args.submit and subprocess.run(["bash", str(script)]).returncode != 0:
                failed.append(run.name)
        return failed
    if not tasks:
        print(f"{experiment.name}: every run has finished and been evaluated; no array job written")
        return []
    devices = sorted({devices for _, _, devices, _ in tasks})
    if len(devices) > 1:  # an array job asks for the same resources for every task
        raise ValueError(f"the runs of one SLURM array job share its resources, and these ask for {devices} devices "
                         f"per node: pass --devices, or write them in groups with --only")
    folder = runs_root / experiment.name
    script = folder / "job.sbatch"
    script.write_text(slurm_array_script(experiment, folder, [(run, run_dir, commands) for run, run_dir, _, commands
                                                              in tasks], args.nodes, devices[0],
                                         args.parallel or len(tasks)))
    print(f"{experiment.name}: wrote {shown(script)}, an array job of {len(tasks)} tasks ("
          + ", ".join(f"{index}: {run.name}" for index, (run, *_) in enumerate(tasks)) + ")")
    if args.submit and subprocess.run(["sbatch", str(script)]).returncode != 0:
        return [run.name for run, *_ in tasks]
    return []


def run_one_after_another(job: Job, smoke: bool) -> bool:
    """The job's commands here, in order, each in a child (a miniature: in this process); whether all succeeded."""
    execute = run_in_this_process if smoke else train_here
    for command in job.commands:
        if command[0] == "fit":
            print(f"{job.name}: resnet-repro {shlex.join(command)}", flush=True)
        if execute(command) != 0:
            return False
    return True


# A miniature of a real run: the same code path, a few iterations on one CPU process, small stand-in data.
SMOKE_ARGS = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "2",
              "--checkpoint.every_n_train_steps", "2", "--model.milestones", "[2, 3]", "--data.init_args.batch_size",
              "8", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.benchmark", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def smoke_args(run: Run, data_root: Path) -> list[str]:
    """The settings that make `run` a miniature: SMOKE_ARGS, and data of the run's kind (see standin_data)."""
    settings = standin_data(data_class(run.setting("data.class_path")), data_root)
    data = [arg for key, value in settings.items()
            for arg in (f"--data.init_args.{key}", value if isinstance(value, str) else json.dumps(value))]
    return [*SMOKE_ARGS, *data]


@functools.cache  # once per data module and command: every run of the experiment reads the same files
def standin_data(data: type, data_root: Path) -> dict:
    """Stand-in data written by the writer next to the data module's reader (in the dataset's real on-disk
    format) into `data_root/<data module>/`; the data module's settings for it."""
    folder = data_root / data.__name__
    shutil.rmtree(folder, ignore_errors=True)  # written afresh: small, and the same every time
    return importlib.import_module(data.__module__).write_standin(folder)


def write_manifest(experiment: Experiment, runs_root: Path, path: Path, smoke: bool) -> None:
    """`runs/<experiment>/experiment.json`: which runs make up the experiment (some may live in another
    experiment's folder), its test protocols, and whether it is a miniature; what `report` reads."""
    folder = runs_root / experiment.name
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(folder / "experiment.json", {
        "experiment": experiment.name, "file": shown(path), "protocols": experiment.protocols, "smoke": smoke,
        "runs": [os.path.relpath(runs_root / run.experiment / run.name, folder) for run in experiment.runs],
    })
