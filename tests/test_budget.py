"""`run FILE --budget F`: the paper's schedule at a fraction. Every iteration count scaled by F and nothing else,
budget runs apart from full ones, and a report that never compares a budget run with the paper."""

import json
from fractions import Fraction

import pandas as pd
import pytest

from helpers import REPO, cli_error, summary
from resnet_repro.cli import main
from resnet_repro.fit_config import flatten
from resnet_repro.train import check_config
from resnet_repro.experiments import SCHEDULE_KEYS, evaluation_interval, load_experiment
from resnet_repro.module import ResNetClassifier

TABLE6 = REPO / "experiments/cifar10/table6.yaml"


def resolved(run) -> dict:
    return check_config(run.fit_args(REPO / "runs" / run.experiment / run.name))


def lrs(config: dict) -> list[float]:
    """The lr of every iteration, as the optimiser and schedule that configure_optimizers builds set it."""
    module = ResNetClassifier(**{**config["model"], "model": "resnet20"})  # the schedule does not depend on the net
    built = module.configure_optimizers()
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    found = []
    for _ in range(config["trainer"]["max_steps"]):
        found.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return found


def test_a_budget_scales_every_iteration_count_and_nothing_else():
    full, budget = load_experiment(TABLE6), load_experiment(TABLE6, budget=Fraction(1, 32))
    assert [run.name for run in full.runs] == [run.name for run in budget.runs]
    for whole, part in zip(full.runs, budget.runs):
        whole_config, part_config = flatten(resolved(whole)), flatten(resolved(part))
        changed = {key for key in whole_config if whole_config[key] != part_config[key]}
        assert changed == {*SCHEDULE_KEYS, "run_dir", "budget"}, whole.name  # batch, lr, data, augmentation: the paper's
        assert {key: part_config[key] for key in SCHEDULE_KEYS} == {
            # evaluations of the 10k test images every 62 iterations would cost 40% of the run: 8 of them instead
            "trainer.max_steps": 2000, "model.milestones": [1000, 1500], "trainer.val_check_interval": 250,
            "checkpoint.every_n_train_steps": 62, "model.warmup_max_steps": 62}, whole.name
        assert part_config["budget"] == "1/32" and whole_config["budget"] is None


@pytest.mark.parametrize("budget", [Fraction(1, 2), Fraction(1, 4), Fraction(1, 32), Fraction(1, 128), Fraction(1, 512)])
@pytest.mark.parametrize("train_on_all", [True, False])
def test_a_budget_run_evaluates_evenly_at_most_a_tenth_of_the_time_and_at_its_end(budget, train_on_all):
    steps, batch, full_interval = round(64_000 * budget), 128, 2000
    images = 10_000 + (0 if train_on_all else 5_000)  # CIFAR-10's test set, and the validation set when held out
    interval = evaluation_interval(max(1, round(full_interval * budget)), steps, images, batch)
    evaluations = steps // interval
    # one evaluation costs as much as images / (3 batch) iterations: at most 1/9 of the training between two
    share = evaluations * images / 3 / (steps * batch + evaluations * images / 3)
    assert share <= 0.1 or evaluations == 1, (interval, share)  # one evaluation, the final one, whatever it costs
    assert interval >= round(full_interval * budget)  # never more often than the schedule scaled
    if round(full_interval * budget) >= 3 * images / batch:  # the scaled interval is cheap enough: kept
        assert interval == round(full_interval * budget)
    else:  # equal parts: the last point of the test curve is the final weights'
        assert steps % interval == 0


def test_the_scaled_schedule_is_the_full_one_compressed():
    full, budget = load_experiment(TABLE6).runs[0], load_experiment(TABLE6, budget=Fraction(1, 32)).runs[0]
    whole, part = lrs(resolved(full)), lrs(resolved(budget))
    assert len(whole) == 64_000 and len(part) == 2_000
    assert part == whole[::32]  # iteration i of the budget run has the lr of iteration 32 i of the full run
    assert sorted(set(part), reverse=True) == pytest.approx([0.1, 0.01, 0.001])


def test_budget_runs_live_apart_from_full_ones_and_their_report_never_compares_them(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = tmp_path / "runs"
    for budget in ([], ["--budget", "1/32"]):
        main(["run", str(TABLE6), "--smoke", "--only", "resnet20-s0", "--runs-root", str(root), *budget])
    full, part = root / "cifar10-table6/resnet20-s0", root / "cifar10-table6@1-32/resnet20-s0"
    assert summary(full)["budget"] is None and summary(part)["budget"] == "1/32"
    assert summary(full)["status"] == summary(part)["status"] == "finished"
    manifest = json.loads((root / "cifar10-table6@1-32/experiment.json").read_text())
    assert "resnet20-s0" in manifest["runs"] and all("/" not in run for run in manifest["runs"])  # its own folder

    out = tmp_path / "report"
    main(["report", str(root / "cifar10-table6@1-32"), "--out", str(out)])
    table = pd.read_csv(out / "table.csv")
    [row] = table[(table.net == "resnet20") & (table.metric == "top-1")].itertuples()
    assert row.budget == "1/32" and row.paper == 8.75
    assert pd.isna(row.difference)  # no difference to the paper's full-schedule number
    assert "| 1/32 " in (out / "table.md").read_text()
    assert "| 8.75 (full schedule: context, not comparable) |" in (out / "table.md").read_text()
    readme = (out / "README.md").read_text()
    assert readme.startswith(f"# Report of `{root / 'cifar10-table6@1-32'}` at 1/32 of the paper's schedule")
    assert "context only, with no difference computed" in readme


def test_runs_taken_from_another_experiment_are_taken_at_the_same_budget():
    table3 = load_experiment(REPO / "experiments/imagenet/table3.yaml", budget=Fraction(1, 8))
    assert {run.experiment for run in table3.runs} == {"imagenet-table2@1-8", "imagenet-table3@1-8"}
    assert {run.setting("trainer.max_steps") for run in table3.runs} == {75_000}


@pytest.mark.parametrize("budget", ["0", "2", "1/0", "half", "1e-99999999", "1e-5000", "1e-300", "1e-200",
                                    "1/10000000000"])
def test_a_budget_that_is_not_a_fraction_of_the_schedule_is_one_line(budget, tmp_path):
    message = cli_error("run", str(TABLE6), "--dry-run", "--budget", budget)
    assert message == (f"resnet-repro run: --budget {budget}: give the fraction of the paper's schedule to train for, "
                       f"above 0 and at most 1, e.g. 1/8 or 0.125 (no finer than 1/1000000000)")
