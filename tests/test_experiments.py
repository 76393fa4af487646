"""`resnet-repro run`: experiment files expand into named runs, launch, resume after a kill, or become scripts."""

import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import QUIET_SETTINGS, REPO, cli_error, run_cli, summary, tiny_run
from resnet_repro.cli import main
from resnet_repro.data import cifar10
from resnet_repro.experiments import load_experiment
from resnet_repro.launch import command as launch_command

EXPERIMENT_FILES = sorted(path for path in (REPO / "experiments").rglob("*.yaml") if path.name != "base.yaml")
TINY = {**tiny_run(), "wandb": False, **QUIET_SETTINGS}


def write_experiment(folder: Path, name: str = "tiny", **spec) -> Path:
    path = folder / "exps" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"recipe": str(REPO / "experiments/digits/base.yaml"), "overrides": TINY, **spec}))
    return path


def test_the_paper_experiments_are_all_there():
    names = {str(path.relative_to(REPO / "experiments")) for path in EXPERIMENT_FILES}
    assert {"cifar10/table6.yaml", "cifar10/fig6-plain.yaml", "imagenet/table2.yaml", "imagenet/table3.yaml",
            "imagenet/table4.yaml", "fashion/depth.yaml", "demo.yaml"} <= names
    for path in EXPERIMENT_FILES:  # the header says how to run it, on what, and what to expect
        header = path.read_text().split("\nrecipe:")[0]
        assert f"resnet-repro run {path.relative_to(REPO)}" in header and "Hardware:" in header, path


def test_table6_expands_into_named_runs():
    experiment = load_experiment(REPO / "experiments/cifar10/table6.yaml")
    assert experiment.name == "cifar10-table6"
    assert [run.name for run in experiment.runs] == [
        "resnet20-s0", "resnet32-s0", "resnet44-s0", "resnet56-s0",
        *(f"resnet110-s{seed}" for seed in range(5)), "resnet1202-s0"]
    table3 = load_experiment(REPO / "experiments/imagenet/table3.yaml")
    assert [run.name for run in table3.runs] == ["resnet34-B-s0", "resnet34-C-s0", "resnet50-B-s0", "resnet101-B-s0",
                                                 "resnet152-B-s0", "plain34-s0", "resnet34-A-s0"]
    assert {run.experiment for run in table3.runs[-2:]} == {"imagenet-table2"}  # Table 2's runs, not trained twice


def test_dry_run_prints_each_run_with_its_cost_and_command(capsys, monkeypatch):
    monkeypatch.setattr(launch_command, "training_rate", lambda device: 1e9)  # 1 G multiply-adds/s
    main(["run", str(REPO / "experiments/demo.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert "3 x forward" in out and "(1 G multiply-adds/s x its devices)" in out
    assert "ResNet-20 on 32x32 images measured now in 3 steps of 128 after a warm-up on " in out
    assert "data:" not in out  # embedded
    # 1.46e11 multiply-adds of training at 1e9 a second; evaluation: 3 validations (every 50 of 150 iterations) of
    # the 200 validation and 300 test digits, and the final test of the 300: 1,800 images x 2,535,040 = 4.56e9
    assert "plain20-s0: plain20, 150 iterations of 128, 269,722 params, 1.46e+11 training FLOPs, about 2.5 min on " \
           "1 device(s) here (training 2.4 min, evaluation 5 s)" in out
    training = sum(float(flops) for flops in re.findall(r"params, (\S+) training FLOPs", out)) / 1e9
    total = re.fullmatch(r"total: about ([\d.]+) min of training and evaluation, one run after another on this "
                         r"machine", out.splitlines()[-1])
    assert training / 60 < float(total[1]) < 1.1 * training / 60  # the digits' evaluations: a few percent
    assert ("  recipe settings that move its number: trainer.precision 32-true; data.init_args.train_on_all false; "
            "model.bn_group_size null; model.warmup null; model.sgd_form \"pytorch\"; precise_bn_batches 0; "
            "trainer.deterministic false") in out
    for name, model, seed in [("plain20-s0", "plain20", 0), ("plain56-s2", "plain56", 2), ("resnet56-s1", "resnet56", 1)]:
        assert f"{name}: {model}, 150 iterations of 128" in out
        assert f"--run_dir runs/demo/{name} --seed_everything {seed}" in out
    # plain-20 on the 8x8 digits: 2,535,040 multiply-adds per image (16x fewer than at 32x32), x 3 x 128 x 150
    assert "plain20-s0: plain20, 150 iterations of 128, 269,722 params, 1.46e+11 training FLOPs" in out


def test_a_run_that_would_mostly_evaluate_says_so_in_its_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(launch_command, "training_rate", lambda device: 1e9)
    # 2 iterations of 16 digits, validated after each over the 200 validation and 300 test digits
    path = write_experiment(tmp_path, overrides={**TINY, "trainer.max_steps": 2, "trainer.val_check_interval": 1,
                                                 "data.init_args.batch_size": 16}, evaluate=["single_view"])
    main(["run", str(path), "--dry-run", "--runs-root", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    # training 3 x 16 x 2 = 96 forward passes, evaluation 2 x 500 + 300 = 1,300: 93%
    assert "  warning: it would spend 93% of its time evaluating: a longer trainer.val_check_interval (or a larger " \
           "--budget) makes it mostly train" in out


def test_the_rate_of_the_wall_time_estimate_is_measured_on_this_machine():
    rate = launch_command.training_rate(torch.device("cpu"))
    assert 1e8 < rate < 1e13  # multiply-adds per second of a 2-core CPU, give or take a few orders


def test_missing_data_is_one_line_before_any_work(tmp_path, capsys):
    # Table 6 on a folder without CIFAR-10: the dry run says it will be downloaded; without download a run refuses
    for download, expected in [(True, "downloaded from https://"), (False, "download https://")]:
        path = write_experiment(tmp_path, recipe="experiments/cifar10/base.yaml", runs=[{"model.model": "resnet20"}],
                                overrides={"data.init_args.data_dir": str(tmp_path / "nothing"),
                                           "data.init_args.download": download})
        main(["run", str(path), "--dry-run", "--runs-root", str(tmp_path / "runs")])
        [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
        assert line.startswith(f"data: CIFAR-10 is not in {tmp_path / 'nothing' / 'cifar-10-batches-py'}: {expected}")
    message = cli_error("run", str(path), "--runs-root", str(tmp_path / "runs"))
    assert message == (f"resnet-repro run: CIFAR-10 is not in {tmp_path / 'nothing' / 'cifar-10-batches-py'}: download "
                       f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into "
                       f"{tmp_path / 'nothing'}, or set data.download true")
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    # the same with the data in place (a stand-in in the real format): no data line
    settings = cifar10.write_standin(tmp_path / "cifar")
    path = write_experiment(tmp_path, recipe="experiments/cifar10/base.yaml", runs=[{"model.model": "resnet20"}],
                            overrides={f"data.init_args.{key}": value for key, value in settings.items()})
    main(["run", str(path), "--dry-run", "--runs-root", str(tmp_path / "runs")])
    assert "data:" not in capsys.readouterr().out


def test_dry_run_names_the_bn_groups_at_each_world_size(tmp_path, capsys):
    cifar10 = tmp_path / "cifar10.yaml"  # the CIFAR-10 recipe: batches of 128, BN over groups of 64 (Table 6)
    cifar10.write_text(yaml.safe_dump({"recipe": "experiments/cifar10/base.yaml"}))
    lines = {}
    for devices in (1, 2, 4):
        main(["run", str(cifar10), "--dry-run", "--devices", str(devices)])
        [lines[devices]] = [line for line in capsys.readouterr().out.splitlines() if "BN over" in line]
    assert lines == {
        1: "  BN over 64 images: a batch of 128 on 1 rank, 128 per rank in groups of 64",
        2: "  BN over 64 images: a batch of 128 on 2 ranks, 64 per rank",
        4: "  warning: BN over 32 images, not the 64 of model.bn_group_size: a batch of 128 on 4 ranks leaves 32 per "
           "rank (use at most 2 ranks, or a smaller model.bn_group_size)"}
    main(["run", str(write_experiment(tmp_path)), "--dry-run", "--devices", "2"])  # digits: no ghost BN
    assert "\n  BN over 8 images: a batch of 16 on 2 ranks, 8 per rank\n" in capsys.readouterr().out


def test_a_killed_experiment_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    runs_root = tmp_path / "runs"
    kill = {"when": {"model.model": "resnet20"},
            "set": {"trainer.callbacks": [{"class_path": "killer.KillAtStep", "init_args": {"step": 3}}]}}
    path = write_experiment(tmp_path, grid={"model.model": ["plain20", "resnet20"]}, patches=[kill])
    command = ["run", str(path), "--runs-root", str(runs_root)]
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # for the fit children: the callbacks of killer.py

    with pytest.raises(SystemExit) as first:  # `run` itself here; each fit is its own child process
        main(command)
    assert "1 of 2 runs failed: resnet20-s0" in str(first.value.code), first.value.code
    done, killed = runs_root / "exps-tiny" / "plain20-s0", runs_root / "exps-tiny" / "resnet20-s0"
    assert summary(done)["status"] == "finished" and summary(killed)["status"] == "running"
    assert torch.load(killed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    finished_at = (done / "summary.json").stat().st_mtime_ns
    # the failed run's last log line (a fit's one-line error; here, the last output before its SIGKILL)
    last = [line for line in (killed / "fit.log").read_text().splitlines() if line.strip()][-1]
    assert f"resnet20-s0: {last}\n" in capsys.readouterr().err

    write_experiment(tmp_path, grid={"model.model": ["plain20", "resnet20"]})  # the same runs, without the kill
    main(command)
    second = capsys.readouterr()
    assert "plain20-s0: finished, skipped" in second.out
    assert (done / "summary.json").stat().st_mtime_ns == finished_at
    assert "Restored all states from the checkpoint" in (killed / "fit.log").read_text()
    # one after another, the terminal shows the live view's lines, not the fits' own output
    assert re.search(r"^resnet20-s0: device CPU, iteration 4/4, .*status finished$", second.out, re.M), second.out
    assert "Restored all states" not in second.out + second.err and "Epoch" not in second.out
    assert summary(killed)["status"] == "finished" and summary(killed)["steps"] == 4


def test_slurm_writes_one_array_job_and_torchrun_a_script_per_run(tmp_path):
    path = write_experiment(tmp_path, grid={"model.model": ["plain20", "resnet20"]})
    main(["run", str(path), "--runs-root", str(tmp_path / "runs"), "--launcher", "slurm", "--nodes", "2",
          "--devices", "4"])
    job = (tmp_path / "runs/exps-tiny/job.sbatch").read_text()
    for line in ["#SBATCH --job-name=exps-tiny", "#SBATCH --array=0-1%2", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --signal=SIGUSR1@90",
                 "#SBATCH --requeue", 'case "$SLURM_ARRAY_TASK_ID" in']:
        assert line in job.splitlines()
    srun = [line.strip() for line in job.splitlines() if line.strip().startswith("srun ")]
    assert [("--model.model plain20" in line, "--model.model resnet20" in line) for line in srun] == [(True, False),
                                                                                                       (False, True)]
    for name, line in zip(["plain20-s0", "resnet20-s0"], srun):  # each task's command and output in its run
        assert line.startswith("srun --kill-on-bad-exit=1 resnet-repro fit --config ")
        assert line.endswith("--trainer.num_nodes 2 --trainer.devices 4 --trainer.strategy ddp")
        assert f'exec >>{tmp_path}/runs/exps-tiny/{name}/"slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out" 2>&1' in job

    main(["run", str(path), "--runs-root", str(tmp_path / "runs"), "--launcher", "torchrun", "--nodes", "3",
          "--devices", "2", "--only", "plain20-s0"])
    launch = (tmp_path / "runs/exps-tiny/plain20-s0/launch.sh").read_text()
    assert "torchrun --nnodes 3 --nproc_per_node 2 " in launch and " -m resnet_repro.cli fit --config " in launch
    assert launch.rstrip().endswith("--trainer.num_nodes 3 --trainer.devices 2 --trainer.strategy ddp")
    assert not (tmp_path / "runs/exps-tiny/resnet20-s0/launch.sh").exists()  # --only


def test_submit_hands_the_array_job_to_sbatch(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/submitted\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    path = write_experiment(tmp_path, grid={"model.model": ["plain20", "resnet20"]})
    main(["run", str(path), "--runs-root", str(tmp_path / "runs"), "--launcher", "slurm", "--submit"])
    assert (tmp_path / "submitted").read_text().split() == [str(tmp_path / "runs/exps-tiny/job.sbatch")]


def test_dry_run_prints_the_launchers_command(tmp_path, capsys):
    path = write_experiment(tmp_path, grid={"model.model": ["resnet20"]})
    main(["run", str(path), "--dry-run", "--launcher", "slurm", "--nodes", "2", "--devices", "4"])
    assert "\n  srun --kill-on-bad-exit=1 resnet-repro fit --config " in capsys.readouterr().out
    main(["run", str(path), "--dry-run", "--launcher", "torchrun", "--devices", "2"])
    assert "\n  torchrun --nnodes 1 --nproc_per_node 2 " in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() and not Path("runs/exps-tiny").exists()


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"model.model": ["resnet20"]}, "sedes": [1]}, "tiny.yaml: unknown key sedes"),
    ({"runs": [{"model.model": "resnet20"}, {"model.model": "resnet21"}]}, "tiny.yaml: run resnet21-s0: unknown model 'resnet21'"),
    ({"runs": [{"model.model": "plain20", "model.shortcut": "B"}]}, "tiny.yaml: run plain20-B-s0: plain20 takes no shortcut"),
    ({"runs": [{"model.model": "resnet20"}, {"model.model": "resnet32", "model.learning_rate": 0.1}]},
     "tiny.yaml: run resnet32-learning_rate0.1-s0: unrecognized arguments: --model.learning_rate 0.1"),
    ({"runs": [{"model.model": "resnet20"}, {"model.model": "resnet20", "seeds": [0, 1]}]},
     "tiny.yaml: more than one run is named resnet20-s0"),
    ({"grid": {"model.model": ["resnet20"]}, "evaluate": ["ten_crop"]},
     "tiny.yaml: run resnet20-s0: --protocols: ten_crop is not a test protocol of DigitsDataModule, whose protocols are single_view"),
    ({"runs_from": [{"experiment": "experiments/demo.yaml", "runs": ["resnet21-s0"]}]},
     "tiny.yaml: experiments/demo.yaml has no run resnet21-s0: its runs are plain56-s0, plain56-s1"),
    ({"runs_from": [{"experiment": "experiments/demo.yaml", "runs": ["resnet20-s0"]}], "evaluate": ["ten_crop"]},
     "tiny.yaml: run resnet20-s0: evaluate: ten_crop is not a test protocol of DigitsDataModule, whose protocols are single_view"),
])
def test_a_malformed_experiment_is_rejected_in_one_line_before_anything_starts(tmp_path, spec, message):
    path = write_experiment(tmp_path, **spec)
    error = cli_error("run", str(path), "--runs-root", str(tmp_path / "runs"))
    assert error.startswith("resnet-repro run: ") and message in error and str(path) in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_local_run_on_two_cpu_processes(tmp_path):
    path = write_experiment(tmp_path, grid={"model.model": ["resnet20"]})
    result = run_cli("run", str(path), "--runs-root", str(tmp_path / "runs"), "--devices", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    done = summary(tmp_path / "runs/exps-tiny/resnet20-s0")
    assert done["status"] == "finished" and done["devices"] == 2 and done["steps"] == 4
