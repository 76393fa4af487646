"""The third round of hostile input (issue 38), beyond the one-line refusals of test_hardening's table: generated
scripts and printed commands executed with hostile paths, and concurrent writers of one file."""

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import QUIET, REPO, cli_error, fit, run_cli, summary
from resnet_repro.cli import main
from resnet_repro.files import write_json_atomically
from resnet_repro.launch.command import print_wandb_sync

DIGITS = ["--config", str(REPO / "experiments/digits/base.yaml")]
TINY = ["--trainer.max_steps", "4", "--data.init_args.batch_size", "16", "--trainer.val_check_interval", "2",
        "--trainer.log_every_n_steps", "2", "--checkpoint.every_n_train_steps", "2"]
TINY_RUN = {"trainer.max_steps": 4, "data.init_args.batch_size": 16, "trainer.val_check_interval": 2,
            "checkpoint.every_n_train_steps": 2, "wandb": False, "trainer.enable_progress_bar": False}
# A folder name that runs a command wherever a shell reads it unquoted or in double quotes, with the characters that
# end a quoted word or a line: `pwned` is a stand-in on PATH that records that it ran
HOSTILE_NAME = "a b$(pwned)`pwned`\"'\nc"


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
    print_wandb_sync([experiment])
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
