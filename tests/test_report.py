"""The report: tables and figures from fixture run directories with known numbers."""

import json
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from resnet_repro.cli import main
from resnet_repro.report import write as report_write
from resnet_repro.report.collect import collect_runs
from resnet_repro.report.figures import training_curves
from resnet_repro.report.paper import paper_error
from resnet_repro.report.tables import error_table


def make_run(root, name, model, seed, status, test_errors, train_error=0.05, data="CIFAR10DataModule", steps=200):
    run = root / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "status": status, "model": model, "shortcut": None, "seed": seed, "data": data, "params": 269_722,
        "steps": steps, "max_steps": 200, "git_revision": "abc123"}))
    rows = [{"step": s, "train/error": train_error, "train/loss": 0.1, "lr": 0.1} for s in range(1, steps + 1)]
    rows += [{"step": 100 * (i + 1), "test/error": e, "val/error": e + 0.01} for i, e in enumerate(test_errors)]
    rows.append({"step": 100, "train/error": 0.5})  # a resumed run re-logs a step: the last row counts
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)


@pytest.fixture
def experiment(tmp_path):
    root = tmp_path / "runs" / "cifar10-mini"
    make_run(root, "resnet20-s0", "resnet20", 0, "finished", [0.10, 0.09])
    make_run(root, "resnet20-s1", "resnet20", 1, "finished", [0.12, 0.08])
    make_run(root, "resnet20-s2", "resnet20", 2, "failed", [0.50], steps=120)
    make_run(root, "resnet56-s0", "resnet56", 0, "running", [0.30], steps=150)
    make_run(root, "plain20-s0", "plain20", 0, "finished", [0.20, 0.12], train_error=0.07)
    return root


def test_the_table_cells(experiment):
    table = error_table(collect_runs(experiment)[0]).set_index("model")
    r20 = table.loc["resnet20"]
    assert r20["runs"] == "2/3 finished; s2 failed" and r20["seeds"] == 2  # the failed run is not averaged in
    assert r20["error mean"] == pytest.approx(8.5) and r20["error best"] == pytest.approx(8.0)
    assert r20["error std"] == pytest.approx(math.sqrt(0.5))
    assert r20["paper"] == 8.75 and r20["difference"] == pytest.approx(-0.25)
    assert r20["params"] == 269_722 and r20["iterations"] == 200
    # the last 5% of iterations (10 of 200) at 5%; the re-logged step 100 keeps its last value, 50%
    assert r20["train error"] == pytest.approx(5.0)
    r56 = table.loc["resnet56"]
    assert r56["runs"] == "0/1 finished; s0 running" and r56["seeds"] == 0
    assert math.isnan(r56["error mean"]) and r56["paper"] == 6.97  # unfinished: shown, no error
    p20 = table.loc["plain20"]
    assert p20["error mean"] == pytest.approx(12.0) and pd.isna(p20["paper"]) and math.isnan(p20["difference"])
    assert math.isnan(p20["error std"])  # one seed


def test_a_resumed_runs_relogged_step_keeps_its_last_value(experiment):
    curves = collect_runs(experiment)[1]
    step100 = curves[(curves.run == "resnet20-s0") & (curves.metric == "train/error") & (curves.step == 100)]
    assert step100.value.tolist() == [0.5]


def test_paper_numbers_by_dataset_and_shortcut():
    assert paper_error("ImageNetDataModule", "resnet34", "A") == (25.03, 7.76)
    assert paper_error("ImageNetDataModule", "resnet50", None) == (22.85, 6.71)  # default B
    assert paper_error("ImageNetDataModule", "plain18", None) == (27.94, None)  # Table 2 only
    assert paper_error("ImageNetDataModule", "resnet18", "B") == (None, None)
    assert paper_error("CIFAR10DataModule", "resnet110", None) == (6.43, None)
    assert paper_error("FashionMNISTDataModule", "resnet20", None) == (None, None)  # no paper numbers there


def test_the_figure_has_a_panel_per_family_with_dashed_train_and_bold_test_curves(experiment):
    runs, curves = collect_runs(experiment)
    figure = training_curves(runs, curves)
    plain, resnet = figure.axes
    assert plain.get_title() == "plain" and resnet.get_title() == "ResNet"
    assert [line.get_label() for line in resnet.lines] == [
        "resnet20 train", "resnet20 test", "resnet56 train", "resnet56 test"]  # the lowest seed of each net
    assert [line.get_linestyle() for line in resnet.lines] == ["--", "-", "--", "-"]
    assert resnet.lines[1].get_linewidth() > resnet.lines[0].get_linewidth()
    assert resnet.lines[1].get_ydata().tolist() == pytest.approx([10.0, 9.0])
    assert resnet.get_xlabel() == "iterations"
    plt.close(figure)


def test_report_command_writes_table_figure_and_readme(experiment, tmp_path, capsys):
    out = tmp_path / "results" / "mini"
    main(["report", str(experiment), "--out", str(out)])
    assert "| resnet20 " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".resnet-repro-output", "README.md", "curves.png", "table.csv", "table.md"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.imread(out / "curves.png").ndim == 3
    assert pd.read_csv(out / "table.csv").set_index("model").loc["resnet20", "error mean"] == pytest.approx(8.5)
    readme = (out / "README.md").read_text()
    assert f"resnet-repro report {experiment} --out {out}" in readme and "`resnet20-s2`: failed" in readme


def test_a_crash_mid_report_leaves_the_previous_report_intact(experiment, tmp_path, monkeypatch):
    out = tmp_path / "results" / "mini"
    main(["report", str(experiment), "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_write, "training_curves", crash)
    with pytest.raises(RuntimeError):
        main(["report", str(experiment), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["mini"]  # no half-written staging folder left


def test_an_empty_experiment_directory_says_so(tmp_path):
    (tmp_path / "runs" / "nothing").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "runs" / "nothing")])
    assert "no run directories in" in str(exit_.value.code)


class FakeWandbRun:
    def __init__(self, name, seed, state, errors):
        self.name, self.state = name, state
        self.config = {"model": {"model": "resnet20", "shortcut": None, "num_classes": 10}, "seed_everything": seed,
                       "data": {"class_path": "resnet_repro.data.CIFAR10DataModule"}, "trainer": {"max_steps": 200}}
        self.summary = {"trainer/global_step": 200}
        self.history = [{"trainer/global_step": s, "train/error": 0.05, "lr": 0.1} for s in range(1, 201)]
        self.history += [{"trainer/global_step": 100 * (i + 1), "test/error": e, "epoch": 0} for i, e in enumerate(errors)]

    def scan_history(self):
        return iter(self.history)


def test_the_same_table_from_wandb_runs(monkeypatch):
    import wandb

    asked = {}

    class FakeApi:
        def runs(self, path, filters):
            asked.update(path=path, filters=filters)
            return [FakeWandbRun("resnet20-s0", 0, "finished", [0.10, 0.09]),
                    FakeWandbRun("resnet20-s1", 1, "crashed", [0.30])]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    from resnet_repro.report.collect import collect_wandb

    runs, curves = collect_wandb("me/resnet-repro", "cifar10-mini")
    assert asked == {"path": "me/resnet-repro", "filters": {"group": "cifar10-mini"}}
    row = error_table(runs).iloc[0]
    assert row["runs"] == "1/2 finished; s1 failed" and row["error mean"] == pytest.approx(9.0)
    assert row["params"] == 269_722 and row["train error"] == pytest.approx(5.0) and row["paper"] == 8.75


def test_findings_are_checked_on_the_training_error(experiment):
    make_run(experiment, "plain56-s0", "plain56", 0, "finished", [0.4], train_error=0.45)
    from resnet_repro.report.tables import findings

    lines = findings(error_table(collect_runs(experiment)[0]))
    assert lines == [
        "Degradation: plain56 trains worse than plain20: 45.00% vs 7.00% training error: holds.",
        "Residual learning: resnet20 trains better than plain20: 5.00% vs 7.00% training error: holds.",
    ]  # resnet56 is unfinished: not compared
