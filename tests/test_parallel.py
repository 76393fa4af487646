"""`resnet-repro run --parallel N`: runs side by side train as they do one after another, a failing run leaves the
others alone, a stopped sweep stops every run and resumes, the live view's plain lines; the SLURM array job; the
W&B columns and summary."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers import QUIET_SETTINGS, REPO, cli_error, summary, tiny_run
from resnet_repro.cli import main
from resnet_repro.experiments import load_experiment
from resnet_repro.report.collect import read_metrics
from resnet_repro.launch.local import cpu_threads

TINY = {**tiny_run(steps=6, batch=8, every=3), "trainer.log_every_n_steps": 1, "checkpoint.every_n_train_steps": 2,
        "wandb": False, **QUIET_SETTINGS}
RUNS = ["plain20-s0", "resnet20-s0", "resnet20-B-s0"]
WANDB = {"when": {"model.model": "plain20"}, "set": {"wandb": True}}  # one run logs to W&B (offline)
KILL = {"when": {"model.model": "resnet20", "model.shortcut": None},  # a fit that fails: killed at iteration 3
        "set": {"trainer.callbacks": [{"class_path": "killer.KillAtStep", "init_args": {"step": 3}}]}}
PAUSE = {"when": {"model.shortcut": "B"},  # a fit that waits at iteration 3 until it is stopped; with W&B (offline)
         "set": {"trainer.callbacks": [{"class_path": "killer.PauseAtStep", "init_args": {"step": 3}}], "wandb": True}}


def write_experiment(folder: Path, patches: list[dict]) -> Path:
    path = folder / "exps" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "recipe": str(REPO / "experiments/digits/base.yaml"), "overrides": TINY, "evaluate": ["single_view"],
        "grid": {"model.model": ["plain20", "resnet20"]}, "runs": [{"model.model": "resnet20", "model.shortcut": "B"}],
        "patches": patches}))
    return path


def wandb_records(record: Path) -> tuple[dict, dict, list[dict]]:
    """(config, summary, history rows) of an offline W&B record, read back by W&B's own reader of its .wandb file
    (`wandb leet inspect --json`: one JSON object per record)."""
    printed = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(record)],
                             capture_output=True, text=True, check=True).stdout
    config, summary_, history = {}, {}, []
    for record in map(json.loads, printed.splitlines()):
        kind = record["type"]
        if kind in ("run", "config"):
            config.update((record["run"] if kind == "run" else record)["config"]["update"])
        elif kind == "summary":
            summary_.update(record["summary"]["update"])
        elif kind == "history":
            history.append(record["history"]["item"])
    return config, summary_, history


def wait_for(condition, what: str, seconds: float = 600) -> None:
    """Until `condition()`; `seconds` only guards against a hang, far beyond what a busy machine takes."""
    for _ in range(int(seconds / 0.2)):
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"waited {seconds} s for {what}")


@pytest.mark.slow
def test_runs_side_by_side_fail_alone_stop_together_resume_and_match_one_after_another(tmp_path, monkeypatch, capsys):
    path = write_experiment(tmp_path / "sweep", [WANDB, KILL, PAUSE])
    root = tmp_path / "runs"
    folder = root / "exps-tiny"
    command = ["run", str(path), "--runs-root", str(root), "--parallel", "2"]
    output = tmp_path / "run.out"
    with open(output, "w") as out:  # stdout is a file: the live view prints plain lines
        parent = subprocess.Popen([str(Path(sys.executable).parent / "resnet-repro"), *command], cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT,
                                  env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "tests")})
    try:
        # plain20 and resnet20 start; resnet20 dies at iteration 3, and resnet20-B takes its place and waits there
        wait_for(lambda: parent.poll() is not None or ((folder / "resnet20-B-s0/paused").is_file() and all(
                     status in output.read_text() for status in ["status finished", "status failed"])),
                 "plain20-s0 to finish, resnet20-s0 to fail and resnet20-B-s0 to wait at iteration 3")
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=600)  # a guard against a hang
    finally:
        parent.kill()
    text = output.read_text()
    assert parent.returncode != 0 and text.splitlines()[-1] == ("resnet-repro run: stopped by SIGTERM; a run keeps its "
                                                                "last checkpoint, and the same command resumes it"), text
    threads = cpu_threads(2)
    device = f"device CPU, {threads} thread\\(s\\)"
    summary_lines = text.split("\nsummary:\n")[1].splitlines()
    rate = summary(folder / "plain20-s0")["train_images_per_s"]  # the run's own figure, however fast the machine
    assert re.fullmatch(rf"plain20-s0: {device}, iteration 6/6, train error \d+\.\d%, images/s {rate:.0f}, ETA -, "
                        rf"status finished", summary_lines[0]), summary_lines
    assert summary_lines[1].endswith(f"status failed (exit -9), see {folder}/resnet20-s0/fit.log"), summary_lines
    # stopped while it waited at iteration 3, it ends iteration 4 with its checkpoint: its line says so
    assert summary_lines[2].startswith(f"resnet20-B-s0: device CPU, {threads} thread(s), iteration 4/6") \
        and summary_lines[2].endswith("status stopped"), summary_lines
    assert re.search(rf"^resnet20-B-s0: {device}, iteration -/6, .*status starting$", text, re.M)  # before its rows
    assert (folder / "resnet20-s0/fit.log").read_text().startswith("$ resnet-repro fit --config ")
    stopped = folder / "resnet20-B-s0"
    assert summary(stopped)["status"] == "interrupted"  # stopped by SIGTERM after iteration 4, checkpointed
    assert torch.load(stopped / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4

    # the SLURM array job: one task per run left to do (plain20-s0 has finished)
    main(["run", str(path), "--runs-root", str(root), "--launcher", "slurm", "--parallel", "2"])
    job = (folder / "job.sbatch").read_text().splitlines()
    assert "#SBATCH --array=0-1%2" in job and "#SBATCH --requeue" in job and "#SBATCH --signal=SIGUSR1@90" in job
    task = job[job.index("  0)  # resnet20-s0"):job.index("  1)  # resnet20-B-s0")]
    assert [line for line in task if line.startswith("    srun ")][0].startswith("    srun --kill-on-bad-exit=1 resnet-repro fit ")
    assert "  1)  # resnet20-B-s0" in job and "plain20-s0" not in "\n".join(job)

    write_experiment(tmp_path / "sweep", [WANDB, {**PAUSE, "set": {"wandb": True}}])  # no kill, no pause
    main(command)  # here: this process has imported everything already (its children are fresh processes)
    out = capsys.readouterr().out
    assert "plain20-s0: finished, skipped" in out
    # W&B's offline hint once, for the whole experiment (each fit's own is in its fit.log): each run's newest record
    [first, resumed] = sorted((folder / "resnet20-B-s0").glob("wandb/offline-run-*"))  # stopped, then resumed
    [plain] = (folder / "plain20-s0").glob("wandb/offline-run-*")
    assert out.count("wandb sync") == 1 and f"wandb sync {plain} {resumed}\n" in out
    # the resumed run's newest record holds its one history, each iteration once, keyed by the iteration
    history = [row for row in wandb_records(resumed)[2] if "train/error" in row]
    expected = read_metrics(folder / "resnet20-B-s0")
    expected = expected[expected.metric == "train/error"]
    assert [row["trainer/global_step"] for row in history] == [1, 2, 3, 4, 5, 6] == expected.step.tolist()
    assert [100 * row["train/error"] for row in history] == pytest.approx(expected.value.tolist())  # W&B: fractions
    assert all(summary(folder / name)["status"] == "finished" for name in RUNS)

    # the same runs trained by `fit` one after another in this process, on the CPU threads a run side by side had:
    # the arithmetic is then the same
    reference = load_experiment(write_experiment(tmp_path / "reference", [WANDB]))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for run in reference.runs:
            main(["fit", *run.fit_args(tmp_path / "reference-runs/exps-tiny" / run.name)])
    finally:
        torch.set_num_threads(threads_before)
    for name in RUNS:
        expected = read_metrics(tmp_path / "reference-runs/exps-tiny" / name)
        assert set(expected.metric) >= {"train/loss", "val/error", "test/single_view/error"}
        pd.testing.assert_frame_equal(read_metrics(folder / name), expected, check_exact=True, obj=name)

    config, wandb_summary, _ = wandb_records(plain)
    assert {key: config[key] for key in ["dataset", "family", "depth", "shortcut", "seed", "experiment"]} == {
        "dataset": "digits", "family": "plain", "depth": 20, "shortcut": "none", "seed": 0, "experiment": "exps-tiny"}
    saved = yaml.safe_load((folder / "plain20-s0" / "config.yaml").read_text())
    for section in ["model", "data", "trainer"]:  # the same values and types as config.yaml (no "128" strings)
        assert config[section] == saved[section], section
    assert type(config["data"]["init_args"]["batch_size"]) is int and config["model"]["shortcut"] is None
    final = summary(folder / "plain20-s0")
    for key in ["val/error", "test/error", "test/single_view/error"]:
        assert wandb_summary[key] == pytest.approx(final[key]), key


@pytest.mark.parametrize("flags, message", [
    (["--parallel", "0"], "argument --parallel: '0' is not a whole number, 1 or more"),
    (["--gpus", "0"], "--gpus share GPUs out between runs side by side here: they go with --parallel N"),
    (["--parallel", "2", "--gpus", "99"], "--gpus 99: GPU 99 is not visible here"),
    (["--parallel", "2", "--gpus", "0,x"], "--gpus 0,x: give GPU indices separated by commas"),
    (["--parallel", "2", "--smoke"], "--smoke runs its miniatures one after another in this process"),
    (["--parallel", "2", "--launcher", "torchrun"], "--parallel is for the local launcher"),
    pytest.param(["--parallel", "2", "--runs-per-gpu", "2"], "--runs-per-gpu shares GPUs, and this machine has none",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with GPUs accepts it")),
])
def test_bad_parallel_flags_are_refused_in_one_line_before_anything_is_written(tmp_path, flags, message):
    path = write_experiment(tmp_path, [])
    error = cli_error("run", str(path), "--runs-root", str(tmp_path / "runs"), "--only", "plain20-s0", *flags)
    assert error.startswith("resnet-repro run: ") and message in error, error
    assert not (tmp_path / "runs").exists()


def test_the_live_view_on_a_terminal_is_a_table_of_every_run(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from resnet_repro.launch.local import Job, LiveView, observe

    run_dir = tmp_path / "resnet20-s0"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("lr,step,train/error,train/loss\n0.1,1,0.9,2.3\n0.1,2,0.75,2.1\n")
    jobs = [Job("resnet20-s0", run_dir, 1, 6, 8, [], status="starting", device="GPU 0, 8 thread(s)"),
            Job("plain20-s0", tmp_path / "plain20-s0", 1, 6, 8, [])]
    observe(jobs[0])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    view = LiveView(jobs)
    assert view.live is not None  # on a terminal: rich, redrawn in place
    console = Console(file=io.StringIO(), width=200)
    console.print(view.table())
    lines = console.file.getvalue().splitlines()
    assert any(all(word in line for word in ["run", "device", "iteration", "train error", "images/s", "ETA", "status"])
               for line in lines)
    assert any(all(cell in line for cell in ["resnet20-s0", "GPU 0, 8 thread(s)", "2/6", "75.0%", "training"])
               for line in lines), lines
    assert any(all(cell in line for cell in ["plain20-s0", "-/6", "waiting"]) for line in lines), lines


def test_a_fit_that_ends_between_two_looks_of_the_view_shows_its_last_row_and_its_own_rate(tmp_path):
    from resnet_repro.launch.local import Job, cells, settle

    run_dir = tmp_path / "resnet20-s0"
    run_dir.mkdir()
    job = Job("resnet20-s0", run_dir, 1, 6, 8, [], status="starting")
    assert cells(job)["images/s"] == "-" and cells(job)["iteration"] == "-/6"  # no row, no rate: stated, not guessed
    # the whole fit happened before the view looked once: six rows, and the rate the run measured itself
    (run_dir / "metrics.csv").write_text("lr,step,train/error,train/loss\n" + "".join(
        f"0.1,{step},0.{9 - step},2.{9 - step}\n" for step in range(1, 7)))
    (run_dir / "summary.json").write_text('{"status": "finished", "train_images_per_s": 123.4}')
    settle(job)
    job.status = "finished"
    assert {key: cells(job)[key] for key in ["iteration", "train error", "images/s", "ETA"]} == {
        "iteration": "6/6", "train error": "30.0%", "images/s": "123", "ETA": "-"}


def test_a_runs_summary_gives_its_training_rate_from_its_own_iterations(tmp_path):
    from helpers import fit

    run = tmp_path / "exp" / "r"
    fit("--config", str(REPO / "experiments/digits/base.yaml"), "--run_dir", str(run), "--trainer.max_steps", "4",
        "--data.init_args.batch_size", "8", "--trainer.limit_val_batches", "0",
        "--trainer.callbacks+=killer.SleepAfterStep", "--trainer.callbacks.init_args.seconds", "0.25")
    state = summary(run)
    # 4 iterations of 8 images, each at least 0.25 s: at most 32 images/s, and more than 32 over the whole fit's time
    assert 32 / state["wall_time_s"] < state["train_images_per_s"] <= 32


def test_the_training_rate_leaves_out_the_iterations_of_validations_and_checkpoints(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from resnet_repro import run_summary

    summary_ = run_summary.RunSummary(tmp_path, "resnet-repro fit")
    clock = iter([0.0, 1.0, 2.0, 12.0, 13.0, 33.0, 34.0])  # the first iteration's start, then each one's end
    monkeypatch.setattr(run_summary.time, "monotonic", lambda: next(clock))
    trainer = SimpleNamespace(world_size=2, is_global_zero=False)
    batch = (None, torch.zeros(8))  # each rank's 8 of 16 images
    summary_.on_train_batch_start(trainer, None, batch, 0)
    for step in range(1, 7):
        if step > 1:
            summary_.on_train_batch_start(trainer, None, batch, step)
        summary_.on_train_batch_end(trainer, None, None, batch, step)
        if step == 2:
            summary_.on_validation_start(trainer, None)  # iteration 3 (10 s) is left out
        if step == 4:
            summary_.on_save_checkpoint(trainer, None, {})  # iteration 5 (20 s) too
    assert summary_.throughput() == {"train_images_per_s": 16.0}  # 4 iterations of 16 images in 4 s


def test_the_live_view_sees_a_fits_iteration_long_before_its_first_rows_reach_metrics_csv(tmp_path, monkeypatch):
    from helpers import fit
    from resnet_repro import run_summary

    monkeypatch.setattr(run_summary, "PROGRESS_EVERY_S", 0)  # summary.json renewed after every iteration (10 s in a real run)
    run = tmp_path / "exp" / "r"
    fit("--config", str(REPO / "experiments/digits/base.yaml"), "--run_dir", str(run), "--trainer.max_steps", "5",
        "--data.init_args.batch_size", "8", "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "100",
        "--trainer.callbacks+=killer.RecordProgress")
    seen = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    # at the start of iteration k + 1 the view reads iteration k, with no training error yet (no row is flushed
    # before iteration 100 or the end)
    assert seen == [[0, [0, None]], [1, [1, None]], [2, [2, None]], [3, [3, None]], [4, [4, None]]]


def test_a_resumed_run_online_sends_w_and_b_only_the_rows_its_server_lacks(tmp_path):
    from resnet_repro.tracking import RunWandbLogger, take_up_history

    run = tmp_path / "r"
    run.mkdir()  # cut at iteration 3, which the run resumes from
    (run / "metrics.csv").write_text("lr,step,train/error\n0.1,1,0.9\n0.1,2,0.8\n0.1,3,0.7\n")
    sent = []

    class ServerRun:  # W&B's run, resumed online: its server holds iterations up to 2 ... or up to 5
        summary = {"trainer/global_step": 2}

        def log(self, row):
            sent.append(row)

    logger = RunWandbLogger(offline=True)
    logger._experiment = ServerRun()
    take_up_history(logger, run)
    assert sent == [{"lr": 0.1, "train/error": 0.7, "trainer/global_step": 3}]
    ServerRun.summary = {"trainer/global_step": 5}  # the session before died after logging iteration 5
    sent.clear()
    take_up_history(logger, run)
    for step in (4, 5, 6):  # the resumed run repeats iterations 4 and 5: W&B has them
        logger.log_metrics({"train/error": 0.5}, step=step)
    assert sent == [{"train/error": 0.5, "trainer/global_step": 6}]


def test_the_gpu_pool_shares_gpus_by_runs_per_gpu_and_gives_multi_gpu_runs_whole_gpus():
    from resnet_repro.launch.local import DevicePool

    pool = DevicePool([0, 1], runs_per_gpu=2)
    first, second = pool.take(1), pool.take(1)
    assert (first, second) == ({0: 1}, {1: 1})  # the least shared GPU first
    assert pool.take(2) is None  # a two-GPU run needs two GPUs that nothing else uses
    third, fourth = pool.take(1), pool.take(1)
    assert (third, fourth) == ({0: 1}, {1: 1}) and pool.take(1) is None  # 2 runs per GPU, no more
    for taken in (first, second, third, fourth):
        pool.give_back(taken)
    assert pool.take(2) == {0: 2, 1: 2} and pool.take(1) is None
    assert DevicePool([], runs_per_gpu=1).take(4) == {}  # no GPUs: every run on its CPU threads
