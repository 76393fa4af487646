"""`resnet-repro run FILE`: an experiment file's runs, trained here one after another or up to N at once with
`--parallel N` (each a child process, its output in its run's fit.log, one line per run in a live view here:
local.py), or written as a torchrun script into each run's directory or one SLURM array job for the experiment
(runs/<experiment>/job.sbatch: scripts.py); `--dry-run` prints the runs with their size and cost; `--smoke` runs
the whole file in miniature (miniature.py). Finished runs are skipped (and evaluated under any protocol they
lack) and interrupted ones resume, so rerunning the same command completes an experiment.
"""

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..batchnorm import bn_groups
from ..data import data_module_class, image_side
from ..experiments import SCHEDULE_KEYS, Run, build_on_meta, load_experiment, shown
from ..fit_config import FIDELITY_SWITCHES, budget_fraction
from ..hardware import device_name
from ..models import get_spec
from ..models.size import count_macs, count_params
from ..options import OptionParser, count
from ..rundir import check_no_links, check_not_a_link, last_checkpoint, metric_key, read_summary, write_manifest
from ..timing import training_rate
from ..tracking import newest_offline_records
from .local import DevicePool, Job, cpu_threads, last_line, run_miniature, run_side_by_side, visible_gpus
from .miniature import smoke_args
from .scripts import LAUNCHERS, device_args, launch_command, write_scripts


def raise_sigterm(signum, frame) -> None:
    raise SIGTERMException()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = OptionParser(prog="resnet-repro run", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiment file, e.g. experiments/cifar10/table6.yaml")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these runs (names as --dry-run prints them)")
    parser.add_argument("--devices", type=count, help="devices per node for each run (default: the recipe's)")
    parser.add_argument("--nodes", type=count, default=1, help="nodes per run (torchrun and slurm)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: train here; torchrun: write a launch script per run; slurm: write one array job")
    parser.add_argument("--parallel", type=count, metavar="N",
                        help="local: up to N runs at once, each on its own devices (its GPUs, or cores / N CPU "
                             "threads); slurm: at most N array tasks at once")
    parser.add_argument("--gpus", metavar="I,J,...", help="with --parallel: the GPUs to share out (default: all visible)")
    parser.add_argument("--runs-per-gpu", type=count, metavar="K",
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


def device_pool(args: argparse.Namespace) -> DevicePool:
    """The GPUs that --parallel's runs share (none on a CPU-only machine; none without --parallel here: a run
    alone sees every GPU); bad combinations of --parallel, --gpus and --runs-per-gpu refused."""
    sharing = [flag for flag, value in (("--gpus", args.gpus), ("--runs-per-gpu", args.runs_per_gpu)) if value]
    if args.parallel is None or args.launcher != "local":
        if sharing:
            raise ValueError(f"{' and '.join(sharing)} share GPUs out between runs side by side here: they go with "
                             f"--parallel N and the local launcher")
        if args.parallel is not None and args.launcher == "torchrun":
            raise ValueError("--parallel is for the local launcher (runs side by side here) and slurm (array tasks "
                             "at once); a torchrun script runs one run")
        return DevicePool([], 1)
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
    return DevicePool(gpus, args.runs_per_gpu or 1)


def run_experiment(argv: list[str]) -> None:
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
    # run folders may come from elsewhere: none is read or written through a link (its fit would refuse it too)
    check_not_a_link(runs_root / experiment.name, "the experiment folder")
    for run in experiment.runs:
        check_no_links(runs_root / run.experiment / run.name)
    # the data, before any work: a miniature writes its own stand-in data
    absent = {} if args.smoke else missing_data([run for run in runs if read_summary(
        runs_root / run.experiment / run.name).get("status") != "finished"])
    if args.dry_run:
        print(f"{experiment.name}: {len(runs)} runs on {shown(experiment.recipe)}; training FLOPs are counted as the "
              f"paper counts FLOPs, in multiply-adds: forward + backward ~ 3 x forward, x batch x iterations")
        for line in absent:
            print(f"data: {line}")
        device = torch.device("cuda" if torch.cuda.is_available() and any(
            run.setting("trainer.accelerator") != "cpu" for run in runs) else "cpu")
        rate = training_rate(device)
        print(f"wall time: each run's training and evaluation FLOPs (forward only: 1 x forward x images) / ({rate / 1e9:.3g}"
              f" G multiply-adds/s x its devices), the training rate of ResNet-20 on 32x32 images measured now in 3 "
              f"steps of 128 after a warm-up on {device_name(device)}; data loading and other nets' efficiency are "
              f"not counted (expect 2x either way)")
    else:
        # refused here; a script for torchrun or SLURM may be written where the cluster's data is not
        fatal = [line for line, downloaded in absent.items() if not downloaded and args.launcher == "local"]
        if fatal:
            raise ValueError(fatal[0])
        for line in absent:
            print(f"data: {line}")
        write_manifest(runs_root / experiment.name, experiment.name, shown(args.experiment), experiment.protocols,
                       [runs_root / run.experiment / run.name for run in experiment.runs], args.smoke)
    jobs, tasks, total = [], [], 0.0  # what is left to do: as Jobs (local), as script lines (torchrun, slurm)
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
        missing = [p for p in experiment.protocols if metric_key("test", protocol=p) not in summary and p not in run.protocols]
        evaluate_args = [*run.fit_args(run_dir, missing), *extra, "--ckpt_path", shown(last_checkpoint(run_dir))]
        commands = [launch_command(args.launcher, "fit", run_args, args.nodes, devices)]
        if missing:  # protocols of this experiment that the run's own experiment does not evaluate
            commands.append(launch_command(args.launcher, "test", evaluate_args, args.nodes, devices))
        if args.dry_run:
            text, seconds = describe(run, "\n  ".join(commands), devices * args.nodes, rate)
            print(text)
            total += seconds
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
        print(f"total: about {duration(total)} of training and evaluation, one run after another on this machine")
        return
    if args.launcher == "local" and args.smoke:
        failed = [job.name for job in jobs if not run_miniature(job)]
    elif args.launcher == "local":
        too_large = [f"{job.name} ({job.devices})" for job in jobs if pool.places and job.devices > len(pool.places)]
        if too_large:
            raise ValueError(f"{', '.join(too_large)} need more GPUs than the {len(pool.places)} shared out here: "
                             f"pass --gpus with more, or --devices")
        # one after another (no --parallel): every device and thread for each run, as a run alone would have
        parallel, threads = (args.parallel, cpu_threads(args.parallel)) if args.parallel else (1, None)
        failed_jobs = run_side_by_side(jobs, parallel, pool, threads)
        for job in failed_jobs:
            print(f"{job.name}: {last_line(job.log)}", file=sys.stderr)
        failed = [f"{job.name} (log: {shown(job.log)})" for job in failed_jobs]
    else:
        failed = write_scripts(args, experiment, runs_root, tasks)
    if args.launcher == "local":
        print_wandb_sync([runs_root / run.experiment / run.name for run in runs])
    if failed:
        sys.exit(f"resnet-repro run: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)} "
                 f"(rerun the same command to resume them)")


def print_wandb_sync(run_dirs: list[Path]) -> None:
    """The one `wandb sync` command that uploads the runs' offline W&B records, when there are any: each run's
    newest, which holds its whole history however often it was resumed (each fit's own hint is in its log)."""
    records = newest_offline_records(run_dirs)
    if records:
        print(f"W&B ran offline; to upload these runs: wandb sync {shlex.join(map(shown, records))}")


def missing_data(runs: list[Run]) -> dict[str, bool]:
    """One line per data set the runs need that is not on this machine, with whether it comes by itself (a
    download when the first run starts); the data modules are built from the runs' settings, nothing is read."""
    absent = {}
    for run in runs:
        data = data_module_class(run.setting("data.class_path"))(**run.data_init_args())
        line = data.missing_data()
        if line:
            absent[line] = bool(getattr(data, "download", False))
    return absent


def evaluation_flops(run: Run, macs_per_image: int) -> float:
    """The multiply-adds of a run's evaluations (forward only): at every validation during fit, each
    trainer.val_check_interval iterations, and under each test protocol of its experiment at the end."""
    data = data_module_class(run.setting("data.class_path"))
    interval = run.setting("trainer.val_check_interval")
    validations = run.setting("trainer.max_steps") // interval if isinstance(interval, int) else 0
    images = validations * data.validation_images(run.data_init_args())
    images += sum(data.test_size * data.protocol_views[protocol] for protocol in run.protocols)
    return macs_per_image * images


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def describe(run: Run, command: str, world_size: int, rate: float) -> tuple[str, float]:
    net = build_on_meta(run)
    model = run.setting("model.model")
    steps, batch = run.setting("trainer.max_steps"), run.setting("data.init_args.batch_size")
    side = image_side(lambda name: run.setting(f"data.init_args.{name}"), get_spec(model).input_size)
    macs = count_macs(net, side)
    flops = 3 * macs * batch * steps
    switches = [f"{key} {json.dumps(run.settings[key])} (recipe: {json.dumps(run.recipe_setting(key))})"
                for key in FIDELITY_SWITCHES if key in run.settings and run.settings[key] != run.recipe_setting(key)]
    bn, shrunk = bn_groups(run.setting("model.bn_group_size"), batch, world_size)
    budget = run.settings.get("budget")
    schedule = (f"  budget {budget} of the paper's schedule: " + ", ".join(
        f"{key} {json.dumps(run.settings[key])}" for key in SCHEDULE_KEYS if key in run.settings) + "\n") if budget else ""
    evaluation = evaluation_flops(run, macs)
    seconds = (flops + evaluation) / (rate * world_size)
    share = evaluation / (flops + evaluation)
    costs = f"training {duration(flops / (rate * world_size))}, evaluation {duration(evaluation / (rate * world_size))}"
    mostly = (f"  warning: it would spend {share:.0%} of its time evaluating: a longer trainer.val_check_interval "
              f"(or a larger --budget) makes it mostly train\n" if share > 0.5 else "")
    precision = run.setting("trainer.precision") or "32-true"  # Lightning's default
    settings = "; ".join([f"trainer.precision {precision}",
                          *(f"{key} {json.dumps(run.setting(key))}" for key in FIDELITY_SWITCHES)])
    return (f"{run.name}: {model}, {steps:,} iterations of {batch}, {count_params(net):,} params, "
            f"{flops:.3g} training FLOPs, about {duration(seconds)} on {world_size} device(s) here ({costs})\n"
            + mostly + f"  recipe settings that move its number: {settings}\n" + schedule
            + (f"  switches: {'; '.join(switches)}\n" if switches else "")
            + f"  {'warning: ' if shrunk else ''}{bn}\n  {command}"), seconds
