"""An experiment file: a recipe, the runs that differ from it (a grid and/or a list, seeds, patches), the test
protocols they are evaluated under, and runs taken from another experiment; its format, its names and its
budgets are described in docs/experiment-files.md.

A run lives in `runs/<experiment>/<name>/`, where <experiment> is the file's folder and stem (`cifar10-table6`); a
run taken from another experiment stays in that one's folder, and `runs/<experiment>/experiment.json` lists them
all. This module reads, expands and checks such a file (every run's config is parsed, its net built on the meta
device) before anything runs; `resnet-repro run` (launch/) starts what it describes.
"""

import collections
import itertools
import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from jsonargparse import ArgumentError

from .data import check_protocols, data_module_class
from .files import read_yaml
from .models.size import meta_model
from .train import check_config

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_KEYS = {"recipe", "overrides", "grid", "runs", "seeds", "patches", "evaluate", "runs_from"}
# Every iteration count of a recipe: what `run --budget F` scales by F (nothing else: batch, lr, data and
# augmentation stay the paper's).
SCHEDULE_KEYS = ("trainer.max_steps", "model.milestones", "trainer.val_check_interval",
                 "checkpoint.every_n_train_steps", "model.warmup_max_steps")


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

    def data_init_args(self) -> dict:
        """The settings of the run's data module: the recipe's, the run's own on top."""
        init_args = dict(self.recipe_setting("data.init_args") or {})
        init_args.update({key.removeprefix("data.init_args."): value for key, value in self.settings.items()
                          if key.startswith("data.init_args.")})
        return init_args

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


def experiment_name(path: Path, budget: Fraction) -> str:
    path = Path(path).absolute()
    name = path.stem if path.parent.name == "experiments" else f"{path.parent.name}-{path.stem}"
    try:
        return checked_name(name + budget_label(budget), "the experiment")
    except ValueError as error:
        raise ValueError(f"{path}: {error} (it is the file's folder and stem, then the budget's @1-32): rename the "
                         f"file, or give a shorter budget") from None


def read_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a mapping (an experiment file, a recipe), refused in one line otherwise."""
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


def evaluation_interval(scaled: int, steps: int, images: int, batch: int) -> int:
    """A budget run's validation interval: its scaled one, unless evaluating that often would cost more than ~10% of
    the run. One evaluation of `images` (forward only, about a third of a training image's work) costs as much as
    images / (3 x batch) iterations, so evaluations at least 3 x images / batch iterations apart cost at most 1/9
    of the training between them; then the interval is the shortest that long which divides the run into equal
    parts, so that the test curve's last point is the final weights'."""
    least = math.ceil(3 * images / batch)
    if scaled >= least:
        return scaled
    return steps // max(1, steps // least)


def scaled_schedule(config: dict, budget: Fraction) -> dict:
    """The settings that train a resolved fit config for `budget` of its schedule: each iteration count x budget
    (rounded, at least 1), the validation interval no shorter than keeps evaluation within ~10% of the run
    (evaluation_interval), the budget recorded."""
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
    if "trainer.val_check_interval" in settings:
        data = config["data"]
        images = data_module_class(data["class_path"]).validation_images(data.get("init_args") or {})
        settings["trainer.val_check_interval"] = evaluation_interval(
            settings["trainer.val_check_interval"], settings["trainer.max_steps"], images,
            dotted(data, "init_args.batch_size"))
    return {**settings, "budget": str(budget)}


def load_experiment(path: Path, seen: frozenset = frozenset(), budget: Fraction = Fraction(1),
                    only: set[str] | None = None) -> Experiment:
    """Read and expand an experiment file, at `budget` of the paper's schedule (its runs then live in
    runs/<experiment>@<budget>/, apart from the full ones); anything malformed raises ValueError naming the file
    and run. With `only`, only the runs of those names are checked against the recipe (the others are named);
    without it, a file of more than MAX_RUNS runs is refused before expanding it."""
    path = Path(path)
    spec = read_mapping(path, "an experiment file")
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
    experiment = Experiment(experiment_name(path, budget), recipe, protocols, [])
    recipe_config = read_mapping(recipe, "a recipe")
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
    check_experiment_protocols(path, experiment)

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


def check_experiment_protocols(path: Path, experiment: Experiment) -> None:
    for run in experiment.runs:
        try:
            check_protocols(data_module_class(run.setting("data.class_path")), experiment.protocols)
        except ValueError as error:
            raise ValueError(f"{path}: run {run.name}: evaluate: {error}") from None


def build_on_meta(run: Run) -> torch.nn.Module:
    """The run's net with shapes only: checks the model, counts its size (one build per distinct net)."""
    return meta_model(run.setting("model.model"), run.setting("model.shortcut"), run.setting("model.num_classes"))
