"""An experiment file: a recipe, the runs that differ from it, and how to launch them.

    recipe: experiments/cifar10/base.yaml     # the base LightningCLI config, relative to the repository root
    overrides: {trainer.max_steps: 300}        # dotted config keys set in every run
    grid: {model.model: [resnet20, resnet56]}  # the cartesian product of these values ...
    runs: [{model.model: resnet110, seeds: [0, 1, 2]}]  # ... and/or these runs (a run may set its own seeds)
    seeds: [0]                                 # the default seeds of every run
    patches: [{when: {model.model: resnet1202}, set: {model.warmup: true}}]  # settings for the runs that match

A run is named after what sets it apart (`resnet56-s0`, `resnet34-B-s0`) and lives in
`runs/<experiment>/<name>/`, where <experiment> is the file's folder and stem (`cifar10-table6`).
`resnet-repro run FILE` trains the runs one after another here, or writes torchrun / SLURM launch scripts
into their directories; `--dry-run` prints them with their size and cost. Finished runs are skipped and
interrupted ones resume, so rerunning the same command completes an experiment.
"""

import argparse
import ctypes
import itertools
import json
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .analysis.complexity import count_macs, count_params, meta_model
from .cli import check_config
from .models import get_spec
from .rundir import read_summary

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_KEYS = {"recipe", "overrides", "grid", "runs", "seeds", "patches"}
LAUNCHERS = ("local", "torchrun", "slurm")


@dataclass
class Run:
    name: str
    seed: int
    settings: dict  # dotted config key -> value, on top of the recipe

    def fit_args(self, recipe: Path, run_dir: Path) -> list[str]:
        """The arguments of `resnet-repro fit` for this run."""
        args = ["--config", shown(recipe), "--run_dir", shown(run_dir), "--seed_everything", str(self.seed)]
        for key, value in self.settings.items():
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return args


@dataclass
class Experiment:
    name: str  # runs/<name>/: the W&B group
    recipe: Path
    recipe_config: dict
    runs: list[Run]

    def setting(self, run: Run, key: str):
        """A run's value for a dotted key: its own setting, else the recipe's (None if neither has it)."""
        if key in run.settings:
            return run.settings[key]
        value = self.recipe_config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def shown(path: Path) -> str:
    """A path as a command shows it: relative to the working directory when it lies inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def experiment_name(path: Path) -> str:
    path = Path(path).absolute()
    return path.stem if path.parent.name == "experiments" else f"{path.parent.name}-{path.stem}"


def load_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
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


def load_experiment(path: Path) -> Experiment:
    """Read and expand an experiment file; anything malformed raises ValueError naming the file and run."""
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

    grid = spec.get("grid") or {}
    entries = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    entries += [dict(entry) for entry in spec.get("runs") or []]
    if not entries:
        entries = [{}]  # the recipe itself
    default_seeds = spec.get("seeds", [0])
    seeds = [entry.pop("seeds", default_seeds) for entry in entries]
    for entry_seeds in seeds:
        if not isinstance(entry_seeds, list) or not all(isinstance(seed, int) for seed in entry_seeds):
            raise ValueError(f"{path}: seeds must be a list of integers, not {entry_seeds!r}")
    # keys whose value differs between runs name them; model and shortcut come first in every name
    keys = {key for entry in entries for key in entry} - {"model.model", "model.shortcut"}
    distinguishing = sorted(key for key in keys if len({json.dumps(e.get(key)) for e in entries}) > 1)

    experiment = Experiment(experiment_name(path), recipe, load_yaml(recipe, "a recipe"), [])
    for entry, entry_seeds in zip(entries, seeds):
        settings = {**(spec.get("overrides") or {}), **entry}
        for seed in entry_seeds:
            run = Run("", seed, dict(settings))
            model = experiment.setting(run, "model.model")
            run.name = run_name(settings, distinguishing, seed, model)
            for patch in patches:  # after naming: a patch follows from the settings, it does not set a run apart
                if all(experiment.setting(run, key) == value for key, value in patch["when"].items()):
                    run.settings.update(patch["set"])
            try:
                check_config(run.fit_args(recipe, Path("runs") / experiment.name / run.name))
                build_on_meta(experiment, run)
            except (ArgumentError, ValueError) as error:
                raise ValueError(f"{path}: run {run.name}: {error}") from error
            experiment.runs.append(run)

    names = [run.name for run in experiment.runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: more than one run is named {', '.join(duplicates)}: make their settings differ")
    return experiment


def build_on_meta(experiment: Experiment, run: Run) -> torch.nn.Module:
    """The run's net with shapes only: checks the model, counts its size (one build per distinct net)."""
    return meta_model(experiment.setting(run, "model.model"), experiment.setting(run, "model.shortcut"),
                      experiment.setting(run, "model.num_classes"))


def device_args(launcher: str, devices: int, nodes: int, asked: bool) -> list[str]:
    if launcher == "local" and not asked:
        return []  # the recipe's devices
    # under torchrun and SLURM, Lightning checks these against the processes the launcher started
    args = ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(devices)]
    return args + (["--trainer.strategy", "ddp"] if devices * nodes > 1 else [])


def describe(experiment: Experiment, run: Run, command: str) -> str:
    net = build_on_meta(experiment, run)
    model = experiment.setting(run, "model.model")
    steps, batch = experiment.setting(run, "trainer.max_steps"), experiment.setting(run, "data.init_args.batch_size")
    flops = 3 * count_macs(net, get_spec(model).input_size) * batch * steps
    return (f"{run.name}: {model}, {steps:,} iterations of {batch}, {count_params(net):,} params, "
            f"{flops:.3g} training FLOPs\n  {command}")


def launch_command(launcher: str, fit_args: list[str], nodes: int, devices: int) -> str:
    """The command line that trains a run: here, under torchrun (on each node), or as SLURM's job step."""
    fit = shlex.join(fit_args)
    if launcher == "torchrun":
        return (f"torchrun --nnodes {nodes} --nproc_per_node {devices} --node_rank ${{NODE_RANK:-0}} "
                f"--master_addr ${{MASTER_ADDR:-127.0.0.1}} --master_port ${{MASTER_PORT:-29500}} "
                f"-m resnet_repro.cli fit {fit}")
    return f"srun --kill-on-bad-exit=1 resnet-repro fit {fit}" if launcher == "slurm" else f"resnet-repro fit {fit}"


def slurm_script(experiment: Experiment, run: Run, run_dir: Path, command: str, nodes: int, devices: int) -> str:
    # Lightning's SLURM plugin catches SIGUSR1 (sent 90 s before the time limit), saves and requeues the
    # job; the requeued job's `fit` resumes from last.ckpt in the run directory.
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={experiment.name}/{run.name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={devices}",
        f"#SBATCH --gpus-per-node={devices}",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        f"#SBATCH --output={run_dir.absolute()}/slurm-%j.out",
        f"cd {shlex.quote(str(Path.cwd()))}",
        command,
        "",
    ])


def torchrun_script(run: Run, command: str, nodes: int) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# {run.name}: run on each of the {nodes} node(s), with NODE_RANK and MASTER_ADDR set for a multi-node job",
        f"cd {shlex.quote(str(Path.cwd()))}",
        command,
        "",
    ])


def end_with_parent() -> None:
    """In a child, before it starts: have the kernel send it SIGTERM when its parent dies, even by kill -9, so
    that no `fit` outlives the `run` that started it and races a rerun (Linux; elsewhere a no-op)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def raise_sigterm(signum, frame) -> None:
    raise SIGTERMException()


def train_here(fit_args: list[str]) -> int:
    """`resnet-repro fit` in a child process; the exit status. When `run` is stopped (Ctrl-C, SIGTERM) the child
    is stopped with SIGTERM and waited for: it ends between two iterations, its last checkpoint intact."""
    child = subprocess.Popen([sys.executable, "-m", "resnet_repro.cli", "fit", *fit_args], preexec_fn=end_with_parent)
    try:
        return child.wait()
    except BaseException:
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="resnet-repro run", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiment file, e.g. experiments/cifar10/table6.yaml")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these runs (names as --dry-run prints them)")
    parser.add_argument("--devices", type=int, help="devices per node for each run (default: the recipe's)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per run (torchrun and slurm)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: train here, one run after another; torchrun / slurm: write launch scripts")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, their size and cost; start nothing")
    parser.add_argument("--submit", action="store_true", help="start the written scripts (bash / sbatch)")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"), help="where runs/<experiment>/<run>/ go")
    return parser.parse_args(argv)


def run_command(argv: list[str]) -> None:
    args = parse_args(argv)
    experiment = load_experiment(args.experiment)
    runs = experiment.runs
    if args.only:
        missing = sorted(set(args.only) - {run.name for run in runs})
        if missing:
            raise ValueError(f"{args.experiment} has no run {', '.join(missing)}: its runs are "
                             f"{', '.join(run.name for run in runs)}")
        runs = [run for run in runs if run.name in args.only]
    if args.nodes > 1 and args.launcher == "local":
        raise ValueError("--nodes needs --launcher torchrun or slurm: the local launcher uses this machine only")

    signal.signal(signal.SIGTERM, raise_sigterm)  # stopped like Ctrl-C: the child is stopped first
    if args.dry_run:
        print(f"{experiment.name}: {len(runs)} runs on {shown(experiment.recipe)}; training FLOPs are counted as the "
              f"paper counts FLOPs, in multiply-adds: forward + backward ~ 3 x forward, x batch x iterations")
    failed = []
    for run in runs:
        run_dir = args.runs_root / experiment.name / run.name
        devices = args.devices or experiment.setting(run, "trainer.devices") or 1
        fit_args = run.fit_args(experiment.recipe, run_dir) + device_args(args.launcher, devices, args.nodes,
                                                                         asked=args.devices is not None)
        command = launch_command(args.launcher, fit_args, args.nodes, devices)
        if args.dry_run:
            print(describe(experiment, run, command))
            continue
        if read_summary(run_dir).get("status") == "finished":
            print(f"{run.name}: finished, skipped")
            continue
        if args.launcher == "local":
            print(f"{run.name}: {command}", flush=True)
            # a run directory with a checkpoint resumes: fit does that itself
            if train_here(fit_args) != 0:
                failed.append(run.name)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        if args.launcher == "torchrun":
            script = run_dir / "launch.sh"
            script.write_text(torchrun_script(run, command, args.nodes))
            submit = ["bash", str(script)]
        else:
            script = run_dir / "job.sbatch"
            script.write_text(slurm_script(experiment, run, run_dir, command, args.nodes, devices))
            submit = ["sbatch", str(script)]
        print(f"{run.name}: wrote {shown(script)}")
        if args.submit and subprocess.run(submit).returncode != 0:
            failed.append(run.name)
    if failed:
        sys.exit(f"resnet-repro run: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)} "
                 f"(rerun the same command to resume them)")
