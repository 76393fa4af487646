"""`resnet-repro fit` end to end: learning, the lr schedule and warm-up, exact resume, DDP, W&B, bad input."""

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import DIGITS, QUIET, REPO, cli_error, fit, run_cli, summary, train_rows, weights, write_cifar10
from resnet_repro.data import imagenet as imagenet_data

CIFAR = ["--config", str(REPO / "experiments/cifar10/base.yaml")]
IMAGENET = ["--config", str(REPO / "experiments/imagenet/base.yaml")]


def tiny_cifar(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*CIFAR, "--run_dir", str(run_dir), "--trainer.accelerator", "cpu",
            "--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "false",
            "--data.init_args.val_size", "21", "--data.init_args.batch_size", "16",
            "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "2",
            "--checkpoint.every_n_train_steps", "2", *extra]


def test_a_small_cifar_net_learns_the_digits(tmp_path):
    run = tmp_path / "digits" / "resnet20"
    fit(*DIGITS, "--run_dir", str(run), "--trainer.max_steps", "120", "--data.init_args.batch_size", "32",
        "--model.milestones", "[100]", "--trainer.val_check_interval", "120")
    rows = train_rows(run)
    assert rows.index.tolist() == list(range(1, 121))  # every iteration logged
    assert rows["train/error"].iloc[:10].mean() > 0.75  # chance is 0.9
    assert rows["train/error"].iloc[-20:].mean() < 0.3
    result = summary(run)
    assert result["status"] == "finished" and result["steps"] == 120 and result["params"] == 269_722
    assert result["test/images"] == 300 and result["test/error"] < 0.3
    # the machine beside its wall time: this CPU's model name as lscpu gives it
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    assert result["devices"] == 1 and f"Model name: {result['device']}\n" in re.sub(r"[ \t]+", " ", lscpu)
    assert (run / "config.yaml").is_file()


def test_fit_end_to_end_on_data_in_the_cifar10_format(tmp_path, cifar_dir):
    run = tmp_path / "cifar" / "resnet20"
    fit(*tiny_cifar(cifar_dir, run))
    result = summary(run)
    assert result["status"] == "finished" and result["steps"] == 4
    assert result["command"].startswith("resnet-repro fit ") and f"--run_dir {run}" in result["command"]
    assert result["data"] == "CIFAR10DataModule" and result["seed"] == 0
    # the net and the data in the words the report and W&B share
    assert {key: result[key] for key in ("dataset", "family", "depth", "shortcut")} == {
        "dataset": "CIFAR-10", "family": "residual", "depth": 20, "shortcut": "A"}
    assert result["val/images"] == 21 and result["test/images"] == 31
    assert 0 <= result["test/error"] <= 1
    assert train_rows(run).index.tolist() == [1, 2, 3, 4]


def test_lr_schedule_read_from_the_log(tmp_path):
    run = tmp_path / "d" / "schedule"
    fit(*DIGITS, "--run_dir", str(run), "--trainer.max_steps", "8", "--data.init_args.batch_size", "16",
        "--model.milestones", "[4, 6]", "--trainer.log_every_n_steps", "3", "--trainer.val_check_interval", "8")
    lr = train_rows(run)["lr"]
    assert lr.tolist() == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_warmup_switches_when_the_training_error_crosses_80_percent(tmp_path):
    run = tmp_path / "d" / "warmup"
    fit(*DIGITS, "--run_dir", str(run), "--trainer.max_steps", "30", "--data.init_args.batch_size", "32",
        "--model.warmup", "true", "--trainer.log_every_n_steps", "5", "--trainer.val_check_interval", "30")
    rows = train_rows(run)
    crossed = rows.index[rows["train/error"] < 0.8][0]
    assert 1 < crossed < 30
    assert rows.loc[:crossed, "lr"].tolist() == pytest.approx([0.01] * crossed)
    assert rows.loc[crossed + 1:, "lr"].tolist() == pytest.approx([0.1] * (30 - crossed))


def ddp(world_size: int) -> list[str]:
    """The settings of a run on `world_size` gloo ranks of this CPU (none for one process)."""
    return [] if world_size == 1 else ["--trainer.devices", str(world_size), "--trainer.strategy", "ddp"]


def fit_at(world_size: int, *args: str) -> None:
    """`fit` in this process at world size 1; else in a fresh process, whose command line Lightning starts again
    for each further rank."""
    if world_size == 1:
        return fit(*args)
    result = run_cli("fit", *QUIET, "--wandb", "false", *args, *ddp(world_size))
    assert result.returncode == 0, result.stderr[-3000:]


# 12 iterations with a checkpoint every 6. Digits: the warm-up ends inside the run (at iteration 8 on this data).
# ImageNet: the stand-in's 40 training images make epochs of 5 batches of 8, so the checkpoint of iteration 6 falls
# inside the second epoch, and two loader workers per rank draw the augmentations.
SCHEDULE = ["--trainer.max_steps", "12", "--model.milestones", "[10]", "--checkpoint.every_n_train_steps", "6",
            "--trainer.log_every_n_steps", "3", "--trainer.val_check_interval", "6"]


@pytest.fixture(scope="module")
def resume_args(tmp_path_factory) -> dict[str, list[str]]:
    standin = imagenet_data.write_standin(tmp_path_factory.mktemp("imagenet-standin"))
    return {
        "digits": [*DIGITS, *SCHEDULE, "--data.init_args.batch_size", "32", "--model.warmup", "true"],
        "imagenet": [*IMAGENET, *SCHEDULE, "--model.model", "resnet20", "--data.init_args.batch_size", "8",
                     "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                     "--trainer.precision", "32-true", "--trainer.benchmark", "false",
                     *(arg for key, value in {**standin, "num_workers": 2}.items()
                       for arg in (f"--data.init_args.{key}", str(value)))],
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, resume_args):
    """The run of resume_args[data] trained without a stop, once per data and world size for the module."""
    runs = {}

    def at(data: str, world_size: int) -> Path:
        if (data, world_size) not in runs:
            runs[data, world_size] = tmp_path_factory.mktemp(f"straight-{data}-{world_size}") / "e" / "straight"
            fit_at(world_size, *resume_args[data], "--run_dir", str(runs[data, world_size]))
        return runs[data, world_size]
    return at


# At world size 2 every rank is killed on the ImageNet path (its loader workers, its sampler across epochs) and rank 1
# alone on the digits path, with the warm-up on.
@pytest.mark.parametrize("data, world_size, killed_rank", [
    ("digits", 1, None), pytest.param("digits", 2, 1, marks=pytest.mark.slow),
    ("imagenet", 1, None), pytest.param("imagenet", 2, None, marks=pytest.mark.slow)])
def test_resume_after_a_sigkill_ends_with_the_same_weights(tmp_path, resume_args, uninterrupted, data, world_size,
                                                           killed_rank):
    interrupted, args = tmp_path / "e" / "interrupted", resume_args[data]
    # every rank (or rank 1 alone) kills itself at the start of iteration 10, after the checkpoint of iteration 6
    kill = ["--trainer.callbacks+=killer.KillAtStep", "--trainer.callbacks.init_args.step", "9",
            *([] if killed_rank is None else ["--trainer.callbacks.init_args.rank", str(killed_rank)])]
    killed = run_cli("fit", *args, *ddp(world_size), "--run_dir", str(interrupted), "--wandb", "false", *kill,
                     env={"PYTHONPATH": str(REPO / "tests")})
    ended = time.time()
    if killed_rank is None:
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert summary(interrupted)["status"] == "running"
    else:  # rank 0, Lightning's launcher, finds rank 1 gone at its next collective and ends the run as failed
        outlived = ended - float((interrupted / "killed").read_text())
        print(f"rank 0 outlived the killed rank 1 by {outlived:.1f} s")
        assert outlived < 30 and killed.returncode == 1, killed.stderr[-2000:]
        # gloo says "Connection reset by peer" or "Connection closed by peer", as the dead rank's socket ended
        assert summary(interrupted)["status"] == "failed"
        assert re.search(r"Connection (reset|closed) by peer", summary(interrupted)["error"]), summary(interrupted)["error"]
    assert torch.load(interrupted / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 6

    fit_at(world_size, *args, "--run_dir", str(interrupted))  # the same command, without the kill
    straight = uninterrupted(data, world_size)
    assert summary(interrupted)["status"] == "finished" and summary(interrupted)["devices"] == world_size
    a, b = weights(straight), weights(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = train_rows(straight), train_rows(interrupted)
    assert rows_a.index.tolist() == rows_b.index.tolist() == list(range(1, 13))
    assert rows_a["lr"].tolist() == rows_b["lr"].tolist()
    assert rows_a["train/loss"].tolist() == rows_b["train/loss"].tolist()
    assert rows_a["train/error"].tolist() == rows_b["train/error"].tolist()


def test_offline_wandb_run_holds_name_group_config_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "digits-demo" / "resnet20-s0"
    fit(*DIGITS, "--run_dir", str(run), "--wandb", "true", "--trainer.max_steps", "6",
        "--data.init_args.batch_size", "16", "--trainer.log_every_n_steps", "3", "--trainer.val_check_interval", "6")
    [record] = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    data = record.read_bytes()  # protobuf records: the strings are stored as they are
    assert b"resnet20-s0" in data and b"digits-demo" in data  # run name, group
    assert b'"milestones":[150,225]' in data.replace(b" ", b"")  # config
    assert data.count(b"train/loss") >= 6 and b"test/error" in data
    assert (run / "wandb_run_id").read_text().strip() in record.name


def test_training_goes_on_with_one_warning_when_wandb_is_unusable(tmp_path):
    broken = tmp_path / "broken"
    (broken / "wandb").mkdir(parents=True)
    (broken / "wandb" / "__init__.py").write_text("raise ImportError('wandb is broken on purpose')\n")
    run = tmp_path / "d" / "no-wandb"
    result = run_cli("fit", *DIGITS, "--run_dir", str(run), "--trainer.max_steps", "3", "--data.init_args.batch_size",
                     "16", "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
                     env={"PYTHONPATH": str(broken)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("W&B is unusable") == 1
    assert summary(run)["status"] == "finished" and len(train_rows(run)) == 3


def test_unknown_model(tmp_path):
    assert "unknown model 'resnet21': valid models are" in cli_error(
        "fit", *DIGITS, "--run_dir", str(tmp_path / "r"), "--model.model", "resnet21")


def test_unknown_config_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learning_rate: 0.1\n")
    assert "does not accept option 'model.learning_rate'" in cli_error("fit", *DIGITS, "--config", str(bad))


def test_missing_and_corrupt_dataset(tmp_path):
    empty = tmp_path / "empty"
    message = cli_error("fit", *tiny_cifar(empty, tmp_path / "r" / "a"))
    assert f"CIFAR-10 is not in {empty}/cifar-10-batches-py: download" in message
    folder = write_cifar10(tmp_path / "data")
    (folder / "test_batch").write_bytes(b"not a pickle")
    assert "test_batch is corrupt" in cli_error("fit", *tiny_cifar(tmp_path / "data", tmp_path / "r" / "b"))


def test_truncated_checkpoint_stops_before_touching_the_run(tmp_path, cifar_dir):
    run = tmp_path / "cifar" / "r"
    fit(*tiny_cifar(cifar_dir, run))
    checkpoint = run / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:20_000])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    message = cli_error("fit", *tiny_cifar(cifar_dir, run, "--trainer.max_steps", "8"))
    assert f"checkpoint {checkpoint} is unreadable" in message and "delete it to start the run over" in message
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "d" / "diverge"
    message = cli_error("fit", *DIGITS, "--run_dir", str(run), "--wandb", "false", "--trainer.max_steps", "40",
                        "--model.lr", "1e6", "--model.milestones", "[]", "--data.init_args.batch_size", "16",
                        "--checkpoint.every_n_train_steps", "1", "--trainer.log_every_n_steps", "1",
                        "--trainer.val_check_interval", "40", *["--trainer.enable_progress_bar", "false"])
    assert "the training loss became" in message or "no longer finite" in message
    assert summary(run)["status"] == "failed"
    kept = weights(run)
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())


@pytest.mark.parametrize("recipe", sorted((REPO / "experiments").glob("*/base.yaml")), ids=lambda p: p.parent.name)
def test_every_recipe_builds_through_lightning_cli(recipe, tmp_path):
    """What the recipe file says is what LightningCLI builds: its net (as the registry builds it), its data
    module, its batch, schedule and optimiser settings."""
    import yaml

    from resnet_repro.models import build_model, get_spec
    from resnet_repro.models.size import count_params
    from resnet_repro.train import build_cli

    written = yaml.safe_load(recipe.read_text())
    cli = build_cli(["--config", str(recipe), "--run_dir", str(tmp_path / "r"), "--wandb", "false",
                     "--trainer.accelerator", "cpu"], run=False)
    name = written["model"]["model"]
    assert cli.model.hparams.model == name and cli.model.net.num_layers == get_spec(name).depth
    assert count_params(cli.model.net) == count_params(build_model(name, num_classes=cli.model.hparams.num_classes))
    assert f"{type(cli.datamodule).__module__.rsplit('.', 1)[0]}.{type(cli.datamodule).__name__}" == \
        written["data"]["class_path"]
    assert cli.datamodule.batch_size == written["data"]["init_args"]["batch_size"]
    assert cli.trainer.max_steps == written["trainer"]["max_steps"]
    assert cli.model.hparams.milestones == written["model"]["milestones"]


def test_fit_prints_the_nets_exact_counts_and_not_lightnings_zero_flops(tmp_path, capsys):
    """Lightning's model summary said "Total FLOPs: 0" for every net; fit prints the project's counts instead
    (ResNet-56: the paper's 0.85M parameters, Table 6)."""
    from resnet_repro.cli import main

    main(["fit", "--config", str(REPO / "experiments/digits/base.yaml"), "--run_dir", str(tmp_path / "run"),
          "--model.model", "resnet56", "--trainer.max_steps", "1", "--protocols", "[]", "--wandb", "false",
          "--trainer.enable_progress_bar", "false"])  # the recipe's summary setting, as a user's fit has it
    out = capsys.readouterr().out
    assert "resnet56: 56 layers, 853,018 parameters, 125.49M multiply-adds per 32x32 image (forward)" in out
    assert "FLOPs" not in out


def test_fit_help_documents_every_net_shortcut_option_and_data_module():
    from resnet_repro.models import list_models

    help_text = run_cli("fit", "--help").stdout
    options = {}  # option -> its help text, on one line
    for block in re.split(r"\n  (?=--)", help_text):
        option, _, text = block.partition(" ")
        options[option] = " ".join(text.split())
    assert set(options["--model.model"].split("(type")[0].replace(";", " ").split()) >= set(list_models())
    assert "A (zero-padding identity), B (projections where the shape changes), C (all projections)" in options[
        "--model.shortcut"]
    for option in ("--model.sgd_form", "--model.warmup", "--model.bn_group_size", "--model.milestones"):
        assert not options[option].split(maxsplit=1)[1].startswith("(type"), (option, options[option])
    for module in ("CIFAR10DataModule", "DigitsDataModule", "FashionMNISTDataModule", "ImageNetDataModule"):
        assert f"resnet_repro.data.{module}" in options["--data"]
    # the project's options first: its own, the net's, the data's, then Lightning's Trainer
    order = [help_text.index(f"\n  {option} ") for option in ("--run_dir", "--model.model", "--data", "--trainer.accelerator")]
    assert order == sorted(order)
