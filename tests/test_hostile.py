"""The third round of hostile input (issue 38), beyond the one-line refusals of test_hardening's table (and its
SIGHUP to `run`): generated scripts and printed commands executed with hostile paths, links planted in run
directories, runs stopped in their final evaluation, and concurrent writers of one file."""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import DIGITS, QUIET, REPO, as_flags, cli_error, fit, run_cli, summary, tiny_run
from resnet_repro.cli import main
from resnet_repro.files import write_json_atomically
from resnet_repro.launch.command import print_wandb_sync
from resnet_repro.report.collect import collect_runs
from resnet_repro.rundir import check_no_links

TINY = as_flags(tiny_run())
TINY_RUN = {**tiny_run(), "wandb": False, "trainer.enable_progress_bar": False}
# A folder name that runs a command wherever a shell reads it unquoted or in double quotes, with the characters that
# end a quoted word or a line: `pwned` is a stand-in on PATH that records that it ran
HOSTILE_NAME = "a b$(pwned)`pwned`\"'\nc"
WITH_TESTS = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}  # killer.py's callbacks; this code


def write_experiment(folder: Path, overrides: dict, models: tuple[str, ...] = ("resnet20",)) -> Path:
    path = folder / "exps" / "tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"recipe": str(REPO / "experiments/digits/base.yaml"), "overrides": overrides,
                                    "grid": {"model.model": list(models)}, "evaluate": ["single_view"]}))
    return path


# Each stand-in (srun, torchrun, sbatch's tasks, wandb, resnet-repro, pwned) appends its name, arguments and working
# directory to $RECORD as one JSON line; sbatch also runs each array task with bash as SLURM would.
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:], os.getcwd()]) + "\\n")
"""
SBATCH = """#!{python}
import os, re, subprocess, sys
script = open(sys.argv[-1]).read()
options = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", script, re.M))
first, last = map(int, re.match(r"(\\d+)-(\\d+)", options["array"]).groups())
for task in range(first, last + 1):
    with open(options["output"].replace("%A", "7").replace("%a", str(task)), "a") as log:
        subprocess.run(["bash", sys.argv[-1]], stdout=log, stderr=log, check=True,
                       env={{**os.environ, "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": str(task)}})
"""


def records(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_every_generated_script_and_printed_command_runs_what_it_says_under_hostile_paths(tmp_path, monkeypatch,
                                                                                           capsys):
    stand_ins, record = tmp_path / "bin", tmp_path / "record"
    stand_ins.mkdir()
    for name in ("srun", "torchrun", "wandb", "resnet-repro", "pwned", "sbatch"):
        (stand_ins / name).write_text((SBATCH if name == "sbatch" else RECORDER).format(python=sys.executable))
        (stand_ins / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}", "RECORD": str(record)}
    checkout, runs = tmp_path / f"checkout {HOSTILE_NAME}", tmp_path / f"runs {HOSTILE_NAME}"
    checkout.mkdir()
    monkeypatch.chdir(checkout)  # the scripts `cd` into the folder `run` was started in
    path = write_experiment(tmp_path, TINY_RUN, ("plain20", "resnet20"))
    experiment = runs / "exps-tiny"

    def shell(command: str) -> None:  # a printed command pasted into bash
        subprocess.run(["bash", "-c", command], env=env, cwd=checkout, check=True)

    def printed(out: str, before: str, after: str = "\n") -> str:
        return out.split(before, 1)[1].rsplit(after, 1)[0]

    main(["run", str(path), "--runs-root", str(runs), "--launcher", "slurm"])
    shell(printed(capsys.readouterr().out, "submit it with: "))  # cd <experiment folder> && sbatch job.sbatch
    main(["run", str(path), "--runs-root", str(runs), "--launcher", "torchrun"])
    for name in ("plain20-s0", "resnet20-s0"):
        subprocess.run(["bash", str(experiment / name / "launch.sh")], env=env, check=True)  # as --submit does
    (experiment / "plain20-s0" / "wandb" / "offline-run-1").mkdir(parents=True)
    print_wandb_sync([experiment / "plain20-s0"])
    shell(printed(capsys.readouterr().out, "to upload these runs: "))
    # a finished run says how to evaluate it again
    fit(*DIGITS, *TINY, "--run_dir", str(experiment / "done"))
    fit(*DIGITS, *TINY, "--run_dir", str(experiment / "done"))
    shell(printed(capsys.readouterr().out, "nothing to train (", " evaluates it again)"))

    ran = records(record)
    assert [entry[0] for entry in ran] == ["srun", "srun", "torchrun", "torchrun", "wandb", "resnet-repro"], ran
    runs_of = [entry[entry.index("--run_dir") + 1] for entry in ran[:4]]
    assert runs_of == [str(experiment / name) for name in ("plain20-s0", "resnet20-s0")] * 2
    assert all(entry[-1] == str(checkout) for entry in ran[:4])  # each script's `cd` to the checkout
    assert ran[0][1:5] == ["--kill-on-bad-exit=1", "resnet-repro", "fit", "--config"]
    assert ran[2][ran[2].index("-m"):][:3] == ["-m", "resnet_repro.cli", "fit"]
    for task, name in enumerate(("plain20-s0", "resnet20-s0")):  # each task's own log in its run, SLURM's beside the job
        assert (experiment / name / f"slurm-7_{task}.out").is_file() and (experiment / f"slurm-7_{task}.out").is_file()
    assert ran[4][1:-1] == ["sync", str(experiment / "plain20-s0/wandb/offline-run-1")]
    assert ran[5][1:-1] == ["test", "--config", str(experiment / "done/config.yaml"), "--ckpt_path",
                            str(experiment / "done/checkpoints/last.ckpt")]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny digits run that logged to W&B (offline): W&B's own links are in its wandb folder."""
    run = tmp_path_factory.mktemp("links") / "exp" / "done"
    result = run_cli("fit", *QUIET, *DIGITS, *TINY, "--run_dir", str(run), "--wandb", "true", env=WITH_TESTS)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def planted(run: Path, tmp_path: Path, link: str) -> tuple[Path, Path]:
    """A copy of `run` with `link` (a path inside it) made a symbolic link to a file (or folder) of the user's
    outside; (the copy, what the link points to)."""
    copy = tmp_path / "exp" / "copy"
    shutil.copytree(run, copy, symlinks=True)
    target = tmp_path / "mine" / Path(link).name
    target.parent.mkdir()
    if (copy / link).is_dir():
        shutil.copytree(copy / link, target)
        shutil.rmtree(copy / link)
    else:
        target.write_text("the user's own file\n")
        (copy / link).unlink(missing_ok=True)
    (copy / link).symlink_to(target)
    return copy, target


@pytest.mark.parametrize("link", [".lock", "metrics.csv", "hparams.yaml", "summary.json", "config.yaml",
                                  "wandb_run_id", "checkpoints", "checkpoints/last.ckpt", "fit.log", "wandb"])
def test_a_link_in_a_run_directory_is_refused_before_anything_is_read_or_written(finished_run, tmp_path, link):
    copy, target = planted(finished_run, tmp_path, link)
    before = {p: p.read_bytes() for p in [target, *target.rglob("*")] if p.is_file()}
    message = cli_error("fit", *DIGITS, *TINY, "--trainer.max_steps", "6", "--accept_config_change", "true",
                        "--run_dir", str(copy))
    assert message == (f"resnet-repro fit: {copy / link} is a symbolic link inside the run directory {copy}: "
                       f"resnet-repro never reads or writes a run's files through a link; remove it (or put a copy of "
                       f"what it points to in its place)")
    assert {p: p.read_bytes() for p in before} == before
    assert not list(target.parent.rglob("*.tmp"))


def test_w_and_bs_own_links_are_its_own_and_a_linked_run_or_experiment_folder_is_refused(finished_run, tmp_path,
                                                                                         capsys):
    assert any(p.is_symlink() for p in (finished_run / "wandb").iterdir())  # W&B links its logs itself
    check_no_links(finished_run)
    fit(*DIGITS, *TINY, "--run_dir", str(finished_run))  # the same command again: its links do not stop it
    assert f"{finished_run} has finished its 4 iterations: nothing to train" in capsys.readouterr().out
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "linked").symlink_to(finished_run, target_is_directory=True)
    (tmp_path / "linked-exp").symlink_to(finished_run.parent, target_is_directory=True)
    for run, what in [(tmp_path / "exp" / "linked", f"{tmp_path}/exp/linked (a run directory)"),
                      (tmp_path / "linked-exp" / "done", f"{tmp_path}/linked-exp (the experiment folder of "
                                                         f"{tmp_path}/linked-exp/done)")]:
        for command in ("fit", "test"):
            message = cli_error(command, *DIGITS, *TINY, "--run_dir", str(run), "--ckpt_path",
                                str(finished_run / "checkpoints/last.ckpt"))
            assert message == (f"resnet-repro {command}: {what} is a symbolic link: resnet-repro never reads or writes "
                               f"runs through a link; name what it points to, or put that in its place")
    assert cli_error("report", str(tmp_path / "exp"), "--out", str(tmp_path / "rep")).startswith(
        f"resnet-repro report: {tmp_path}/exp/linked (a run directory) is a symbolic link")
    assert not (tmp_path / "rep").exists()


def test_report_run_and_responses_read_nothing_through_a_link(finished_run, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("step,the user's secret\n1,x\n")
    copy, _ = planted(finished_run, tmp_path, "metrics.csv")
    (copy / "metrics.csv").unlink()
    (copy / "metrics.csv").symlink_to(secret)
    message = cli_error("report", str(copy.parent), "--out", str(tmp_path / "rep"))
    assert message.startswith(f"resnet-repro report: {copy}/metrics.csv is a symbolic link inside the run directory")
    assert "secret" not in message and not (tmp_path / "rep").exists()
    (copy / "metrics.csv").unlink()
    (copy / "config.yaml").rename(copy / "metrics.csv")  # any file: the link below is refused before anything is read
    (copy / "config.yaml").symlink_to(secret)
    assert cli_error("responses", str(copy / "checkpoints/last.ckpt"), "--out", str(tmp_path / "resp")) == (
        f"resnet-repro responses: {copy}/config.yaml (the config of the checkpoint's run) is a symbolic link: "
        f"resnet-repro never reads or writes runs through a link; name what it points to, or put that in its place")
    path = write_experiment(tmp_path, TINY_RUN)  # `run` reads summaries and writes fit.log: a link is refused first
    fit_log = tmp_path / "runs" / "exps-tiny" / "resnet20-s0" / "fit.log"
    fit_log.parent.mkdir(parents=True)
    fit_log.symlink_to(secret)
    assert cli_error("run", str(path), "--runs-root", str(tmp_path / "runs")).startswith(
        f"resnet-repro run: {fit_log} is a symbolic link inside the run directory")
    assert secret.read_text() == "step,the user's secret\n1,x\n"
    assert not (tmp_path / "runs" / "exps-tiny" / "experiment.json").exists()


def test_a_run_stopped_in_its_final_evaluation_is_not_finished_and_the_same_command_completes_it(tmp_path,
                                                                                                monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", WITH_TESTS["PYTHONPATH"])
    path = write_experiment(tmp_path, {**TINY_RUN, "trainer.callbacks": [{"class_path": "killer.KillAtTest"}]})
    root = tmp_path / "runs"
    run = root / "exps-tiny" / "resnet20-s0"
    with pytest.raises(SystemExit):  # its fit is killed in the test after training
        main(["run", str(path), "--runs-root", str(root)])
    assert (run / "killed-at-test").is_file()
    state = summary(run)
    assert state["status"] == "evaluating" and state["steps"] == 4 and "test/single_view/error" not in state
    runs, evaluated, _ = collect_runs([root / "exps-tiny"])
    assert runs.status.tolist() == ["evaluating"] and evaluated.empty  # the report does not count it finished

    capsys.readouterr()
    main(["run", str(path), "--runs-root", str(root)])  # the same command: trains nothing, evaluates
    assert "finished, skipped" not in capsys.readouterr().out
    state = summary(run)
    assert state["status"] == "finished" and state["steps"] == 4 and "test/single_view/error" in state
    log = (run / "fit.log").read_text()
    assert log.count("$ resnet-repro fit ") == 2 and "Restored all states from the checkpoint" in log
    runs, evaluated, _ = collect_runs([root / "exps-tiny"])
    assert runs.status.tolist() == ["finished"] and evaluated.protocol.tolist() == ["single_view"]
    assert evaluated.step.tolist() == [4]


def write_many(path: str, writer: int) -> None:
    for count in range(100):
        write_json_atomically(Path(path), {"writer": writer, "count": count})


def test_writers_of_one_file_never_share_a_temporary_file_and_a_link_is_replaced_not_followed(tmp_path):
    target = tmp_path / "experiment.json"
    with multiprocessing.get_context("fork").Pool(6) as pool:  # six `run`s of one experiment write its manifest
        pool.starmap(write_many, [(str(target), writer) for writer in range(6)])
    assert json.loads(target.read_text())["count"] == 99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.json"]  # no temporary file left behind
    outside = tmp_path / "mine.txt"
    outside.write_text("the user's own file\n")
    (tmp_path / "summary.json").symlink_to(outside)
    write_json_atomically(tmp_path / "summary.json", {"status": "running"})
    assert outside.read_text() == "the user's own file\n" and not (tmp_path / "summary.json").is_symlink()
