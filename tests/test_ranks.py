"""The multi-rank path as a launcher takes it: the script `run --launcher torchrun` writes, executed for real on two
gloo ranks of this CPU, then the same script on the finished run, a refused config change and a second writer,
each ending every rank within seconds with the line the single-process path gives."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers import QUIET_SETTINGS, REPO, summary, tiny_run, train_rows, weights
from resnet_repro.rundir import RunLock

pytestmark = pytest.mark.slow  # each test starts two ranks (and torchrun), seconds of imports each

HANG = 180  # a rank left waiting for one that has gone would wait for the process group's timeout: 30 minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*command: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """A command that starts ranks, in a session of its own (so that a hung rank is killed with it)."""
    env = {**os.environ, "WANDB_MODE": "offline", "MASTER_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}  # torchrun, from here
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def ended(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(process.args)} was still running after {HANG} s: a rank waits for one that has gone")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def launched(*command: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """A command that starts ranks, run to its end; its result and its seconds."""
    started = time.monotonic()
    result = ended(start(*command, env=env))
    return result, time.monotonic() - started


TINY = {**tiny_run(steps=6), "wandb": True, **QUIET_SETTINGS,
        "model.bn_group_size": 16,  # more than the 8 images of each rank's share
        "data.init_args.val_size": 201}  # odd: the ranks' shares differ by one image, and none is repeated


WITH_KILLER = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}  # callbacks of tests/killer.py


def write_launch(root: Path, launcher: str, overrides: dict) -> Path:
    """`run --launcher LAUNCHER --devices 2` on a tiny digits experiment in root/exps; its folder in root/runs."""
    (root / "exps").mkdir()
    (root / "exps" / "tiny.yaml").write_text(yaml.safe_dump({"recipe": "experiments/digits/base.yaml",
                                                             "overrides": overrides}))
    written, _ = launched(str(Path(sys.executable).parent / "resnet-repro"), "run", str(root / "exps" / "tiny.yaml"),
                          "--launcher", launcher, "--devices", "2", "--runs-root", str(root / "runs"), env=WITH_KILLER)
    assert written.returncode == 0, written.stderr[-2000:]
    return root / "runs" / "exps-tiny"


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """A tiny digits run trained by the torchrun script of `run --launcher torchrun --devices 2`, uninterrupted; its
    launch.sh."""
    root = tmp_path_factory.mktemp("ranks")
    script = write_launch(root, "torchrun", TINY) / "resnet20-s0" / "launch.sh"
    trained, seconds = launched("bash", str(script))
    print(f"torchrun script trained the run in {seconds:.0f} s")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (script.parent / "launch.err").write_text(trained.stderr)
    return script


def test_the_torchrun_script_trains_the_run_on_two_ranks(two_rank_run):
    run = two_rank_run.parent
    assert "torchrun --nnodes 1 --nproc_per_node 2 " in two_rank_run.read_text()
    done = summary(run)
    assert done["status"] == "finished" and done["devices"] == 2 and done["steps"] == 6
    assert done["test/images"] == 300 and done["val/images"] == 201  # every image once over the two ranks
    assert train_rows(run).index.tolist() == [1, 2, 3, 4, 5, 6]
    [record] = (run / "wandb").glob("offline-run-*/run-*.wandb")  # one W&B run, rank 0's, whose id resumes it
    assert (run / "wandb_run_id").read_text().strip() in record.name
    warnings = [line for line in (run / "launch.err").read_text().splitlines() if "BN over" in line]
    assert warnings == ["warning: BN over 8 images, not the 16 of model.bn_group_size: a batch of 16 on 2 ranks leaves "
                        "8 per rank (use at most 1 rank, or a smaller model.bn_group_size)"]  # once, from rank 0


def test_a_finished_run_ends_every_rank_with_its_line_and_exit_0(two_rank_run):
    before = summary(two_rank_run.parent)
    again, seconds = launched("bash", str(two_rank_run))
    print(f"finished run: {seconds:.0f} s")
    assert again.returncode == 0, again.stderr[-3000:]
    line = f"resnet-repro fit: {two_rank_run.parent} has finished its 6 iterations: nothing to train"
    assert again.stdout.count(line) == 2, again.stdout  # once per rank, each deciding for itself
    assert summary(two_rank_run.parent) == before


def test_a_refused_config_change_ends_every_rank_with_its_line(two_rank_run):
    command = two_rank_run.read_text().splitlines()[-1]  # the torchrun line of fit
    refused, seconds = launched("bash", "-c", f"{command} --model.lr 0.5")
    print(f"refused config change: {seconds:.0f} s")
    assert refused.returncode != 0
    line = f"resnet-repro fit: {two_rank_run.parent} holds a run with other settings (model.lr 0.1 -> 0.5)"
    assert refused.stderr.count(line) == 2, refused.stderr[-3000:]


def test_a_second_writer_is_refused_and_the_launcher_ends_the_other_rank(two_rank_run):
    holder = RunLock(two_rank_run.parent)  # this process writes the run directory
    try:
        refused, seconds = launched("bash", str(two_rank_run))
    finally:
        holder.release()
    print(f"second writer: {seconds:.0f} s")
    assert refused.returncode != 0
    # the lock is rank 0's: rank 0 is refused, and torchrun stops rank 1 as soon as rank 0 has left
    line = f"resnet-repro fit: {two_rank_run.parent} is in use by process {os.getpid()} on {socket.gethostname()}"
    assert refused.stderr.count(line) == 1, refused.stderr[-3000:]


# Stand-ins for SLURM on one node, each what its namesake does for an array job: `sbatch` runs each task of the
# array here with the variables SLURM gives a batch script, ends a task whose requeue was asked (SIGTERM to all
# its processes, SIGKILL after SLURM's KillWait of 30 s) and runs it again; `srun` starts the step's tasks (the
# ranks) with the variables srun sets; `scontrol requeue ID` asks for the requeue. $SLURM_STANDIN is their folder.
SBATCH = '''#!{python}
import ctypes, os, re, signal, subprocess, sys, time
from pathlib import Path

script = Path(sys.argv[-1])
options = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", script.read_text(), re.M))
first, last = map(int, re.match(r"(\\d+)-(\\d+)", options["array"]).groups())
requests = Path(os.environ["SLURM_STANDIN"]) / "requeue-requests"
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: every process of a task is this one's to wait for
job = 4000 + os.getpid() % 1000
for task in range(first, last + 1):
    for restart in range(3):
        env = {{**os.environ, "SLURM_ARRAY_JOB_ID": str(job), "SLURM_ARRAY_TASK_ID": str(task),
               "SLURM_JOB_ID": str(job + 1 + task), "SLURM_JOB_NAME": options["job-name"],
               "SLURM_NNODES": options["nodes"], "SLURM_NTASKS_PER_NODE": options["ntasks-per-node"],
               "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost", "SLURM_RESTART_COUNT": str(restart)}}
        output = options["output"].replace("%A", str(job)).replace("%a", str(task))
        with open(output, "a") as log:
            shell = subprocess.Popen(["bash", str(script)], env=env, stdout=log, stderr=log, start_new_session=True)
        print(f"task {{task}}: started", flush=True)
        asked = None
        while shell.poll() is None:
            if asked is None and requests.is_file() and f"{{job}}_{{task}}" in requests.read_text().split():
                asked = time.monotonic()
                print(f"task {{task}}: requeue asked", flush=True)
                os.killpg(shell.pid, signal.SIGTERM)
            time.sleep(0.1)
        while True:  # the task's other processes: srun and its ranks, now this one's children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    if asked is not None and time.monotonic() - asked > 30:
                        print(f"task {{task}}: SIGKILL after KillWait", flush=True)
                        os.killpg(shell.pid, signal.SIGKILL)
                    time.sleep(0.1)
            except ChildProcessError:
                break
        ended = f" {{time.monotonic() - asked:.1f}} s after the requeue" if asked is not None else ""
        print(f"task {{task}}: ended, exit {{shell.returncode}}{{ended}}", flush=True)
        if asked is None:
            break
        requests.unlink()
'''
SRUN = '''#!{python}
import os, signal, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
kill_on_bad_exit = False
while args[0].startswith("-"):
    kill_on_bad_exit |= args.pop(0) == "--kill-on-bad-exit=1"
tasks = int(os.environ["SLURM_NTASKS_PER_NODE"]) * int(os.environ["SLURM_NNODES"])
ranks = [subprocess.Popen(args, env={{**os.environ, "SLURM_NTASKS": str(tasks), "SLURM_PROCID": str(rank),
                                     "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_STEP_ID": "0"}})
         for rank in range(tasks)]
signal.signal(signal.SIGTERM, lambda *_: None)  # the ranks have it too, from sbatch: wait for them to end
(Path(os.environ["SLURM_STANDIN"]) / "ranks").write_text(" ".join(str(rank.pid) for rank in ranks))
while any(rank.poll() is None for rank in ranks):
    if kill_on_bad_exit and any(rank.returncode not in (None, 0) for rank in ranks):
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
    time.sleep(0.1)
sys.exit(max(code if code >= 0 else 128 - code for code in (rank.returncode for rank in ranks)))
'''
SCONTROL = '''#!/bin/bash
[ "$1" = requeue ] || {{ echo "scontrol stand-in: requeue ID only" >&2; exit 1; }}
echo "$2" >>"$SLURM_STANDIN/requeue-requests"
'''


@pytest.fixture
def slurm(tmp_path) -> Path:
    """The SLURM stand-ins in a folder of their own; the folder."""
    folder = tmp_path / "slurm"
    folder.mkdir()
    for name, text in [("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)]:
        (folder / name).write_text(text.format(python=sys.executable))
        (folder / name).chmod(0o755)
    return folder


def test_a_slurm_array_task_signalled_and_requeued_resumes_exactly(two_rank_run, slurm, tmp_path):
    # held at the start of iteration 5, after the checkpoint of iteration 4, on the first attempt only
    pause = [{"class_path": "killer.PauseAtStep", "init_args": {"step": 4, "once": True}}]
    job = write_launch(tmp_path, "slurm", {**TINY, "trainer.callbacks": pause}) / "job.sbatch"
    run = job.parent / "resnet20-s0"
    sbatch = start("sbatch", str(job), env={"PATH": f"{slurm}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                                            "SLURM_STANDIN": str(slurm), **WITH_KILLER},
                   cwd=job.parent)  # as `run --submit` starts it: SLURM's own output beside the job
    for _ in range(HANG * 10):
        if (run / "paused").is_file() or sbatch.poll() is not None:
            break
        time.sleep(0.1)
    assert (run / "paused").is_file(), ended(sbatch).stdout
    ranks = [int(pid) for pid in (slurm / "ranks").read_text().split()]
    for rank in ranks:  # what --signal=SIGUSR1@90 does 90 s before the time limit: to every task of the step
        os.kill(rank, signal.SIGUSR1)
    done = ended(sbatch)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    events = done.stdout.splitlines()
    assert events[:3] == ["task 0: started", "task 0: requeue asked", events[2]]
    stopped = re.fullmatch(r"task 0: ended, exit (-?\d+) (\S+) s after the requeue", events[2])
    assert stopped and stopped[1] != "0" and float(stopped[2]) < 30, events  # ended by the SIGTERM, not SIGKILL
    assert events[3:] == ["task 0: started", "task 0: ended, exit 0"]
    [log] = run.glob("slurm-*_0.out")
    assert log.read_text().count("resnet-repro fit: stopped by SIGTERM") == 2  # every rank of the first attempt

    assert summary(run)["status"] == "finished" and summary(run)["steps"] == 6
    straight = two_rank_run.parent
    a, b = weights(straight), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(train_rows(run), train_rows(straight), check_exact=True)
