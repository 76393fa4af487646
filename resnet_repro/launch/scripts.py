"""What `run --launcher torchrun|slurm` writes: a torchrun launch script per run, one SLURM array job per
experiment; and the command line that trains or evaluates a run under each launcher."""

import argparse
import shlex
import subprocess
from pathlib import Path

from ..experiments import Experiment, Run, shown
from ..files import write_text_atomically

LAUNCHERS = ("local", "torchrun", "slurm")


def device_args(launcher: str, devices: int, nodes: int, asked: bool) -> list[str]:
    if launcher == "local" and not asked:
        return []  # the recipe's devices
    # under torchrun and SLURM, Lightning checks these against the processes the launcher started
    args = ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(devices)]
    return args + ["--trainer.strategy", "ddp" if devices * nodes > 1 else "auto"]


def launch_command(launcher: str, subcommand: str, args: list[str], nodes: int, devices: int) -> str:
    """The command line that trains (fit) or evaluates (test) a run: here, under torchrun (on each node), or as
    SLURM's job step."""
    line = f"{subcommand} {shlex.join(args)}"
    if launcher == "torchrun":
        return (f"torchrun --nnodes {nodes} --nproc_per_node {devices} --node_rank ${{NODE_RANK:-0}} "
                f"--master_addr ${{MASTER_ADDR:-127.0.0.1}} --master_port ${{MASTER_PORT:-29500}} "
                f"-m resnet_repro.cli {line}")
    return f"srun --kill-on-bad-exit=1 resnet-repro {line}" if launcher == "slurm" else f"resnet-repro {line}"


def slurm_array_script(experiment: Experiment, tasks: list[tuple[Run, Path, list[str]]], nodes: int, devices: int,
                       at_once: int) -> str:
    """One SLURM array job for the experiment: task i runs the i-th run's commands, at most `at_once` tasks at a
    time, each task's output in its run directory. Every path is quoted for bash, and no #SBATCH line holds one:
    sbatch parses those lines itself, and for bash they are comments that a newline in a path would end. SLURM's own
    output goes to slurm-%A_%a.out in the folder sbatch is started in (`run --submit`: runs/<experiment>/)."""
    cases = []
    for index, (run, run_dir, commands) in enumerate(tasks):
        folder = shlex.quote(str(run_dir.absolute()))
        # the run directory's first file may be this log: a new run's directory is made here, not by `run`
        cases += [f"  {index})  # {run.name}", f"    mkdir -p {folder}",
                  f'    exec >>{folder}/"slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out" 2>&1',
                  *(f"    {command}" for command in commands),
                  "    ;;"]
    # Lightning's SLURM plugin catches SIGUSR1 (sent 90 s before the time limit), saves and requeues the task;
    # the requeued task's `fit` resumes from last.ckpt in the run directory.
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={experiment.name}",  # a safe folder name (experiments.SAFE_NAME)
        f"#SBATCH --array=0-{len(tasks) - 1}%{at_once}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={devices}",
        f"#SBATCH --gpus-per-node={devices}",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "#SBATCH --output=slurm-%A_%a.out",  # until the task's own log opens
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


def write_scripts(args: argparse.Namespace, experiment: Experiment, runs_root: Path,
                  tasks: list[tuple[Run, Path, int, list[str]]]) -> list[str]:
    """torchrun: launch.sh in each run directory; slurm: one array job, runs/<experiment>/job.sbatch. With
    --submit they are started (bash / sbatch); the names of the runs whose start failed."""
    if args.launcher == "torchrun":
        failed = []
        for run, run_dir, _, commands in tasks:
            run_dir.mkdir(parents=True, exist_ok=True)
            script = run_dir / "launch.sh"
            write_text_atomically(script, torchrun_script(run, commands, args.nodes))
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
    write_text_atomically(script, slurm_array_script(experiment, [(run, run_dir, commands) for run, run_dir, _, commands
                                                                  in tasks], args.nodes, devices[0],
                                                     args.parallel or len(tasks)))
    print(f"{experiment.name}: wrote {shown(script)}, an array job of {len(tasks)} tasks ("
          + ", ".join(f"{index}: {run.name}" for index, (run, *_) in enumerate(tasks)) + ")"
          + ("" if args.submit else f"; submit it with: cd {shlex.quote(shown(folder))} && sbatch job.sbatch"))
    if args.submit and subprocess.run(["sbatch", str(script.absolute())], cwd=folder).returncode != 0:
        return [run.name for run, *_ in tasks]
    return []
