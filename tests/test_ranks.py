"""The multi-rank path as a launcher takes it: the script `run --launcher torchrun` writes, executed for real on two
gloo ranks of this CPU, then the same script on the finished run, a refused config change and a second writer,
each ending every rank within seconds with the line the single-process path gives."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, summary, train_rows
from resnet_repro.rundir import RunLock

pytestmark = pytest.mark.slow  # each test starts two ranks (and torchrun), seconds of imports each

HANG = 180  # a rank left waiting for one that has gone would wait for the process group's timeout: 30 minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched(*command: str) -> tuple[subprocess.CompletedProcess, float]:
    """A command that starts ranks, in a session of its own (so that a hung rank is killed with it); its result
    and its seconds."""
    env = {**os.environ, "WANDB_MODE": "offline", "MASTER_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # torchrun, from this environment
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(command)} was still running after {HANG} s: a rank waits for one that has gone")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), time.monotonic() - started


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """A tiny digits run trained by the torchrun script of `run --launcher torchrun --devices 2`; its launch.sh."""
    root = tmp_path_factory.mktemp("ranks")
    (root / "exps").mkdir()
    (root / "exps" / "tiny.yaml").write_text(yaml.safe_dump({
        "recipe": "experiments/digits/base.yaml",
        "overrides": {"trainer.max_steps": 4, "data.init_args.batch_size": 16, "trainer.val_check_interval": 2,
                      "trainer.log_every_n_steps": 2, "checkpoint.every_n_train_steps": 2, "wandb": True,
                      "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
                      "model.bn_group_size": 16}}))  # more than the 8 images of each rank's share
    written, _ = launched(str(Path(sys.executable).parent / "resnet-repro"), "run", str(root / "exps" / "tiny.yaml"),
                          "--launcher", "torchrun", "--devices", "2", "--runs-root", str(root / "runs"))
    assert written.returncode == 0, written.stderr[-2000:]
    script = root / "runs" / "exps-tiny" / "resnet20-s0" / "launch.sh"
    trained, seconds = launched("bash", str(script))
    print(f"torchrun script trained the run in {seconds:.0f} s")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (script.parent / "launch.err").write_text(trained.stderr)
    return script


def test_the_torchrun_script_trains_the_run_on_two_ranks(two_rank_run):
    run = two_rank_run.parent
    assert "torchrun --nnodes 1 --nproc_per_node 2 " in two_rank_run.read_text()
    done = summary(run)
    assert done["status"] == "finished" and done["devices"] == 2 and done["steps"] == 4
    assert done["test/images"] == 300 and done["val/images"] == 200  # every image once over the two ranks
    assert train_rows(run).index.tolist() == [1, 2, 3, 4]
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
    line = f"resnet-repro fit: {two_rank_run.parent} has finished its 4 iterations: nothing to train"
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
