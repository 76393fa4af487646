"""The local launcher: the child processes that train an experiment's runs here, one after another or, with
`run --parallel N`, several side by side; a miniature's runs, one after another in this process.

Each run is a `resnet-repro fit` child (then a `test` child per missing evaluation), started by `start_child`
and stopped by `stop_children`, up to N at once (`run_side_by_side`; one at a time without --parallel). Side by
side, each run has devices of its own: with GPUs it sees only its GPUs through CUDA_VISIBLE_DEVICES
(`--runs-per-gpu K` runs share one; a run of d > 1 devices takes d whole GPUs), and on any machine each of the N
runs gets cores / N CPU threads (OMP_NUM_THREADS), so that on a CPU-only machine the cores are split between the
runs; one at a time, a run sees every device and thread. A run's output goes to `<run_dir>/fit.log`; the terminal
shows one line per run, refreshed in place (plain lines when stdout is not a terminal), read from each run's
metrics.csv.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import run_as_command
from ..rundir import read_summary, run_progress
from ..train import lightning_command

POLL_S = 1.0  # how often the children are checked and the view redrawn
PLAIN_EVERY_S = 30.0  # without a terminal: every run's line this often, and a line whenever a run's status changes


def end_with_parent() -> None:
    """In a child, before it starts: have the kernel send it SIGTERM when its parent dies, even by kill -9, so
    that no `fit` outlives the `run` that started it and races a rerun (Linux; elsewhere a no-op)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def start_child(args: list[str], env: dict | None = None, output=None) -> subprocess.Popen:
    """`resnet-repro ARGS` (fit or test) in a child process that ends when this one does; its output to `output`
    (an open file) or to this process's terminal."""
    return subprocess.Popen([sys.executable, "-m", "resnet_repro.cli", *args], preexec_fn=end_with_parent, env=env,
                            stdout=output, stderr=None if output is None else subprocess.STDOUT)


def stop_children(children: list[subprocess.Popen]) -> None:
    """SIGTERM to each child, then wait for all: a `fit` ends between two iterations, its last checkpoint intact."""
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait()


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as its children's CUDA_VISIBLE_DEVICES names them: index i here is the i-th
    entry of our own CUDA_VISIBLE_DEVICES when that is set."""
    count = torch.cuda.device_count()
    ours = os.environ.get("CUDA_VISIBLE_DEVICES")
    return ours.split(",")[:count] if ours else [str(index) for index in range(count)]


def cpu_threads(parallel: int) -> int:
    """The CPU threads of each of `parallel` runs: this process's cores shared out."""
    return max(1, len(os.sched_getaffinity(0)) // parallel)


class DevicePool:
    """GPU indices (as --gpus gives them), each shared by up to `runs_per_gpu` runs. A one-device run takes a
    place on the least shared GPU; a run of d > 1 devices takes d GPUs that nothing else uses. With no GPUs
    every run gets an empty set of GPUs (it runs on its CPU threads)."""

    def __init__(self, gpus: list[int], runs_per_gpu: int):
        self.places = {gpu: runs_per_gpu for gpu in gpus}  # free places on each GPU
        self.runs_per_gpu = runs_per_gpu

    def take(self, devices: int) -> dict[int, int] | None:
        """{GPU: places taken} for a run of `devices` devices, or None when they are not free now."""
        if not self.places:
            return {}
        if devices == 1:
            gpu = max(self.places, key=self.places.get)
            taken = {gpu: 1} if self.places[gpu] > 0 else None
        else:
            unused = [gpu for gpu, free in self.places.items() if free == self.runs_per_gpu][:devices]
            taken = {gpu: self.runs_per_gpu for gpu in unused} if len(unused) == devices else None
        for gpu, places in (taken or {}).items():
            self.places[gpu] -= places
        return taken

    def give_back(self, taken: dict[int, int]) -> None:
        for gpu, places in taken.items():
            self.places[gpu] += places


@dataclass
class Job:
    """A run's commands still to do (`fit` unless it has finished, then `test` for each missing evaluation),
    done one after another on the same devices; and what the view shows of it."""
    name: str
    run_dir: Path
    devices: int
    max_steps: int
    batch_size: int
    commands: list[list[str]]  # resnet-repro arguments: ["fit", ...], ["test", ...]
    on_gpu: bool = True  # False for a CPU recipe (trainer.accelerator cpu): it takes no place on a GPU
    status: str = "waiting"
    device: str = ""
    gpus: dict[int, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    progress: tuple[int, float | None] | None = None  # (iteration, training error) as the run reports it (run_progress)
    first_move: tuple[float, int] | None = None  # (time, iteration) when this command's first new row was seen
    last_move: tuple[float, int] | None = None  # (time, iteration) when its latest new row was seen
    images_per_s: float | None = None  # once its fit has ended: the run's own figure, from summary.json

    @property
    def log(self) -> Path:
        return self.run_dir / "fit.log"


COLUMNS = ("run", "device", "iteration", "train error", "images/s", "ETA", "status")


def hours_minutes_seconds(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def cells(job: Job) -> dict[str, str]:
    """What the view shows of a run: name, device, iteration / max, training error, images/s, ETA, status."""
    step, error = job.progress or (None, None)
    rate = job.images_per_s  # once ended, the run's own figure; while training, between the first and latest row seen
    if not rate and job.first_move and job.last_move[1] > job.first_move[1]:
        rate = job.batch_size * (job.last_move[1] - job.first_move[1]) / (job.last_move[0] - job.first_move[0])
    return dict(zip(COLUMNS, [
        job.name,
        job.device,
        f"{step if step is not None else '-'}/{job.max_steps}",
        f"{100 * error:.1f}%" if error is not None else "-",
        f"{rate:.0f}" if rate else "-",
        hours_minutes_seconds((job.max_steps - step) * job.batch_size / rate) if rate and job.status == "training"
        else "-",
        job.status,
    ]))


class LiveView:
    """One line per run, redrawn in place with rich on a terminal; otherwise plain lines: each run's line when its
    status changes and every PLAIN_EVERY_S. At the end, every run's final line."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.live = None
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self.table(), auto_refresh=False)
        self.shown_status = {job.name: job.status for job in jobs}
        self.shown_at = time.monotonic()

    def table(self):
        from rich.table import Table

        table = Table(*COLUMNS)
        for job in self.jobs:
            table.add_row(*cells(job).values())
        return table

    def __enter__(self) -> "LiveView":
        if self.live:
            self.live.start()
        return self

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.table(), refresh=True)
            return
        now = time.monotonic()
        every = now - self.shown_at >= PLAIN_EVERY_S
        for job in self.jobs:
            if job.status != self.shown_status[job.name] or (every and job.process is not None):
                self.print_line(job)
        if every:
            self.shown_at = now

    def print_line(self, job: Job) -> None:
        row = cells(job)
        print(f"{row.pop('run')}: " + ", ".join(f"{key} {value}" for key, value in row.items()), flush=True)
        self.shown_status[job.name] = job.status

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.update(self.table(), refresh=True)
            self.live.stop()
        else:
            print("summary:")
            for job in self.jobs:
                self.print_line(job)


def run_side_by_side(jobs: list[Job], parallel: int, pool: DevicePool, threads: int | None) -> list[Job]:
    """Each job's commands in child processes, up to `parallel` jobs at once, in order where devices allow, each on
    `threads` CPU threads (None: as many as it would take alone); the jobs that failed. A failing job does not stop
    the others. When this process is stopped (Ctrl-C, SIGTERM) every child is stopped with SIGTERM and waited for,
    and the exception goes on."""
    waiting, running = list(jobs), []
    with LiveView(jobs) as view:
        try:
            while waiting or running:
                for job in list(waiting):
                    if len(running) == parallel:
                        break
                    job.gpus = pool.take(job.devices) if job.on_gpu else {}
                    if job.gpus is not None:
                        waiting.remove(job)
                        running.append(job)
                        start_next(job, threads)
                for job in list(running):
                    exit_code = job.process.poll()
                    if exit_code == 0 and job.commands:
                        start_next(job, threads)
                    elif exit_code is not None:
                        settle(job)
                        job.status = "finished" if exit_code == 0 else f"failed (exit {exit_code}), see {job.log}"
                        job.process = None
                        running.remove(job)
                        pool.give_back(job.gpus)
                    else:
                        observe(job)
                view.refresh()
                time.sleep(POLL_S if running else 0)
        except BaseException:
            stop_children([job.process for job in running if job.process is not None])
            for job in running:
                settle(job)
                job.status = "stopped"
            raise
        finally:
            view.refresh()
    return [job for job in jobs if job.status.startswith("failed")]


def start_next(job: Job, threads: int | None) -> None:
    """The job's next command, on the job's devices, its output appended to the run's fit.log."""
    args = job.commands.pop(0)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    if job.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_gpus()[gpu] for gpu in job.gpus)
    if job.gpus:
        job.device = f"GPU {','.join(map(str, job.gpus))}"
    else:  # one run at a time on a GPU machine: it sees every GPU
        job.device = "GPU" if job.on_gpu and torch.cuda.is_available() else "CPU"
    if threads:
        job.device += f", {threads} thread(s)"
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a") as log:
        log.write(f"$ resnet-repro {shlex.join(args)}\n")
        log.flush()
        job.process = start_child(args, env, log)
    job.status = "starting" if args[0] == "fit" else "testing"
    job.progress, job.first_move, job.last_move = run_progress(job.run_dir), None, None


def settle(job: Job) -> None:
    """A job whose last command has ended, or was stopped: its final row, and its training rate as the run measured it itself (a
    short fit may end between two looks of the view, before it had two rows to time)."""
    job.progress = run_progress(job.run_dir) or job.progress
    job.images_per_s = read_summary(job.run_dir).get("train_images_per_s")


def observe(job: Job) -> None:
    """Read the run's progress; a fit whose iteration has moved since it started is training."""
    progress = run_progress(job.run_dir)
    if job.status == "testing" or progress is None:
        return
    if progress[0] != (job.progress or (None,))[0]:
        job.last_move = (time.monotonic(), progress[0])
        job.first_move = job.first_move or job.last_move
        job.status = "training"
    job.progress = progress


def run_miniature(job: Job) -> bool:
    """A miniature's commands in this process, in order, through the same entry point a child runs; whether all
    succeeded. Its runs take seconds, and a fresh process would spend more than that importing torch."""
    for command in job.commands:
        if command[0] == "fit":
            print(f"{job.name}: resnet-repro {shlex.join(command)}", flush=True)
        try:
            run_as_command(command[0], lightning_command, command)
        except SystemExit as stop:
            if stop.code not in (0, None):
                print(stop.code, file=sys.stderr)
                return False
    return True


def last_line(path: Path) -> str:
    """The last non-empty line of a log (a failed fit's: its one-line error), or ''."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    return lines[-1] if lines else ""
