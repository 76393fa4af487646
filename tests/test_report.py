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
from resnet_repro.paper import paper_numbers
from resnet_repro.report.tables import error_table, findings, format_table


def make_run(root, name, model, seed, status, test_errors, train_error=0.05, dataset="CIFAR-10", steps=200,
             shortcut=None, evaluations=None, noise=0.0):
    """A run directory with known numbers: `evaluations` {protocol: error}, else single_view at the last test
    error; training error constant (plus alternating +-noise)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "status": status, "model": model, "shortcut": shortcut, "seed": seed, "dataset": dataset, "params": 269_722,
        "steps": steps, "max_steps": 200, "wall_time_s": 61.4, "devices": 1, "device": "Intel Xeon",
        "git_revision": "abc123"}))
    rows = [{"step": s, "train/error": train_error + noise * (-1) ** s, "train/loss": 0.1, "lr": 0.1}
            for s in range(1, steps + 1)]
    rows += [{"step": 100 * (i + 1), "test/error": e, "val/error": e + 0.01} for i, e in enumerate(test_errors)]
    rows.append({"step": 100, "train/error": 0.5})  # a resumed run re-logs a step: the last row counts
    for protocol, error in (evaluations or {"single_view": test_errors[-1]}).items():
        rows += [{"step": steps, f"test/{protocol}/error": 0.99, f"test/{protocol}/images": 10_000},  # older
                 {"step": steps, f"test/{protocol}/error": error, f"test/{protocol}/images": 10_000}]
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


def table_of(*folders):
    runs, evaluated, _ = collect_runs(list(folders))
    return error_table(runs, evaluated)


def test_the_table_cells(experiment):
    table = table_of(experiment).set_index("net")
    r20 = table.loc["resnet20"]
    assert (r20["runs"], r20["finished"], r20["unfinished"]) == (3, 2, "s2 failed")  # the failed run not averaged in
    assert r20["protocol"] == "single_view" and r20["metric"] == "top-1" and r20["test images"] == 10_000
    assert r20["shortcut"] == "A" and r20["budget"] == "full"
    # the latest evaluation of each run: 8 and 9
    assert (r20["n"], r20["mean"], r20["std"], r20["best"]) == (2, pytest.approx(8.5), pytest.approx(math.sqrt(0.5)), 8)
    assert r20["ours"] == pytest.approx(8.5)  # the mean, beside one run of the paper's
    assert r20["statistic"] == "one run" and r20["paper"] == 8.75 and r20["source"] == "Table 6"
    assert r20["difference"] == pytest.approx(-0.25)
    assert r20["reference"] == 8.27 and r20["reference source"] == "akamaster/pytorch_resnet_cifar10"
    assert r20["params"] == 269_722 and r20["iterations"] == 200
    # the last 5% of iterations (10 of 200) at 5%; the re-logged step 100 keeps its last value, 50%
    assert r20["train error"] == pytest.approx(5.0)
    r56 = table.loc["resnet56"]
    assert (r56["finished"], r56["unfinished"], r56["protocol"], r56["n"]) == (0, "s0 running", "not evaluated", 0)
    assert math.isnan(r56["ours"])
    p20 = table.loc["plain20"]
    assert p20["ours"] == 12 and p20["n"] == 1 and math.isnan(p20["std"]) and p20["shortcut"] == "none"
    assert math.isnan(p20["paper"]) and math.isnan(p20["difference"])


def test_the_markdown_shows_a_column_only_where_a_row_has_a_value_and_says_what_each_holds(experiment):
    legend, _, markdown = format_table(table_of(experiment)).partition("\n\n")
    header = [cell.strip() for cell in markdown.splitlines()[0].strip("|").split("|")]
    # no budget (all full schedule); the rest has a value in some row: resnet20's paper and reference numbers
    assert header == ["net", "data", "protocol", "metric", "runs", "ours", "statistic", "paper", "source", "difference",
                      "reference", "reference source", "train error", "test images", "params", "iterations"]
    assert legend.startswith("`data`: the data set trained and tested on (a copy of the paper's is named: the paper's "
                             "number then stands beside ours as context); `protocol`: the test protocol; `runs`: ")
    assert "`budget`" not in legend
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")]
            for line in markdown.splitlines()[2:]}
    assert rows["resnet20"][1] == "CIFAR-10"
    assert rows["resnet20"][4:9] == ["2/3 finished; s2 failed", f"8.50±{math.sqrt(0.5):.2f} (mean±std of 2)",
                                     "one run", "8.75", "Table 6"]
    assert rows["resnet56"][4:6] == ["0/1 finished; s0 running", ""] and rows["plain20"][5] == "12.00 (1 run)"
    fashion = table_of(experiment)
    fashion = fashion[fashion.net == "plain20"].assign(reference=float("nan"), **{"reference source": ""})
    header = format_table(fashion).split("\n\n")[1].splitlines()[0]
    assert "paper" not in header and "reference" not in header and "difference" not in header


def test_a_copy_of_cifar10_is_named_in_every_row_figure_and_readme_and_never_compared(tmp_path):
    root = tmp_path / "runs" / "cifar10-jpeg-depth"
    for name, model, error in [("plain20-s0", "plain20", 0.12), ("resnet20-s0", "resnet20", 0.09)]:
        make_run(root, name, model, 0, "finished", [error], dataset="CIFAR-10 (JPEG copy)")
    main(["report", str(root), "--out", str(tmp_path / "out")])
    table = pd.read_csv(tmp_path / "out" / "table.csv").set_index("net")
    assert (table.data == "CIFAR-10 (JPEG copy)").all()
    # the paper's and the reference's numbers stand beside ours as context: no difference
    assert (table.loc["resnet20", ["paper", "reference"]].tolist(), table.loc["resnet20", "difference"]) == (
        [8.75, 8.27], pytest.approx(float("nan"), nan_ok=True))
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| resnet20 | CIFAR-10 (JPEG copy) |" in markdown
    assert "8.75 (on CIFAR-10 itself: context, not comparable)" in markdown
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "**Trained and tested on CIFAR-10 (JPEG copy), not on the paper's own images" in readme
    runs, _, curves = collect_runs([root])
    assert training_curves(runs, curves).get_suptitle() == "CIFAR-10 (JPEG copy): 200 iterations, 1 seed per net"


def test_best_of_n_and_mean_std_are_each_compared_with_their_own_statistic(tmp_path):
    root = tmp_path / "runs" / "cifar10-table6"
    for seed, error in enumerate([0.070, 0.066, 0.068, 0.064, 0.072]):
        make_run(root, f"resnet110-s{seed}", "resnet110", seed, "finished", [error])
    rows = table_of(root)
    assert rows.statistic.tolist() == ["best of 5", "mean±std of 5"]
    assert rows.ours.tolist() == pytest.approx([6.40, 6.80])  # the best, then the mean
    assert rows.paper.tolist() == [6.43, 6.61] and rows["paper std"].tolist()[1] == 0.16
    assert "| 6.40 (best of 5) " in format_table(rows) and "| 6.80±0.32 (mean±std of 5) | mean±std of 5 | 6.61±0.16 |" \
        in format_table(rows)
    assert rows.difference.tolist() == pytest.approx([6.40 - 6.43, 6.80 - 6.61])


def test_table3_rows_are_keyed_by_shortcut_and_protocol(tmp_path):
    root = tmp_path / "runs" / "imagenet-table3"
    for name, model, shortcut in [("plain34-s0", "plain34", None), ("resnet34-A-s0", "resnet34", "A"),
                                  ("resnet34-B-s0", "resnet34", "B"), ("resnet34-C-s0", "resnet34", "C")]:
        make_run(root, name, model, 0, "finished", [0.3], dataset="ImageNet", shortcut=shortcut,
                 evaluations={"center": 0.30, "ten_crop": 0.28})
    table = table_of(root)
    ten_crop = table[table.protocol == "ten_crop"].set_index("net")
    assert ten_crop.paper.to_dict() == {"plain34": 28.54, "resnet34-A": 25.03, "resnet34-B": 24.52,
                                        "resnet34-C": 24.19}
    assert ten_crop.shortcut.to_dict() == {"plain34": "none", "resnet34-A": "A", "resnet34-B": "B", "resnet34-C": "C"}
    assert ten_crop.loc["resnet34-B", "reference"] == 24.76  # fb.resnet.torch, B shortcuts, 10-crop
    assert table[table.protocol == "center"].paper.isna().all()  # the paper has no centre-crop numbers


def test_a_resumed_runs_relogged_step_keeps_its_last_value(experiment):
    curves = collect_runs([experiment])[2]
    step100 = curves[(curves.run == "resnet20-s0") & (curves.metric == "train/error") & (curves.step == 100)]
    assert step100.value.tolist() == [50.0]  # in percent


def test_paper_numbers_by_dataset_shortcut_and_protocol():
    assert paper_numbers("ImageNet", "resnet34", "A", "ten_crop") == [  # Table 2's top-1, Table 3's top-5
        {"statistic": "one run", "top1": 25.03, "source": "Tables 2, 3"},
        {"statistic": "one run", "top5": 7.76, "source": "Table 3"}]
    assert paper_numbers("ImageNet", "plain34", None, "ten_crop")[0]["source"] == "Tables 2, 3"
    assert paper_numbers("ImageNet", "resnet50", "B", "ten_crop")[0]["top5"] == 6.71
    assert paper_numbers("ImageNet", "resnet50", "B", "multi_scale")[0]["top1"] == 20.74  # Table 4
    assert paper_numbers("ImageNet", "resnet34", "B", "center") == []
    assert paper_numbers("ImageNet", "plain18", None, "ten_crop")[0]["source"] == "Table 2"
    assert paper_numbers("ImageNet", "resnet18", "B", "ten_crop") == []
    assert paper_numbers("Fashion-MNIST", "resnet20", None, "single_view") == []


def test_the_figure_has_a_panel_per_family_with_dashed_train_and_bold_test_curves(experiment):
    runs, _, curves = collect_runs([experiment])
    figure = training_curves(runs, curves)
    plain, resnet = figure.axes
    assert plain.get_title() == "plain" and resnet.get_title() == "ResNet"
    assert [line.get_label() for line in resnet.lines] == [
        "resnet20 train", "resnet20 test", "resnet56 train", "resnet56 test"]
    assert [line.get_linestyle() for line in resnet.lines] == ["--", "-", "--", "-"]
    assert resnet.lines[1].get_linewidth() > resnet.lines[0].get_linewidth()
    # the mean of resnet20's two finished seeds (s2 failed), a marker at each of its two evaluations, and their band
    assert resnet.lines[1].get_ydata().tolist() == pytest.approx([11.0, 8.5]) and resnet.lines[1].get_marker() == "o"
    train_band, test_band = resnet.collections  # resnet20's; resnet56 has one seed
    assert test_band.get_paths()[0].vertices[:, 1].min() == pytest.approx(8.0)  # seed 1's 8% at iteration 200
    assert test_band.get_paths()[0].vertices[:, 1].max() == pytest.approx(12.0)  # seed 1's 12% at iteration 100
    assert resnet.lines[0].get_color() == resnet.lines[1].get_color() != resnet.lines[2].get_color()  # a colour per net
    assert resnet.get_xlabel() == "iterations"
    # resnet56 has one seed, still running: shown, without a band; the title says what the curves are
    assert figure.get_suptitle() == "CIFAR-10: 200 iterations, the mean of 1 or 2 seeds per net (band: lowest to highest)"
    plt.close(figure)


def test_figure6_has_the_papers_three_panels_from_two_folders(tmp_path):
    residual, plain = tmp_path / "runs" / "cifar10-table6", tmp_path / "runs" / "cifar10-fig6-plain"
    for model in ["resnet20", "resnet110", "resnet1202"]:
        make_run(residual, f"{model}-s0", model, 0, "finished", [0.1])
    make_run(plain, "plain20-s0", "plain20", 0, "finished", [0.2])
    runs, _, curves = collect_runs([residual, plain])
    figure = training_curves(runs, curves)
    assert [ax.get_title() for ax in figure.axes] == ["plain", "ResNet", "ResNet-110 vs 1202"]
    labels = [[line.get_label() for line in ax.lines if line.get_label().endswith("test")] for ax in figure.axes]
    assert labels == [["plain20 test"], ["resnet20 test", "resnet110 test"], ["resnet110 test", "resnet1202 test"]]
    plt.close(figure)


def test_imagenet_curves_are_the_validation_curves(tmp_path):
    root = tmp_path / "runs" / "imagenet-table2"
    make_run(root, "plain18-s0", "plain18", 0, "finished", [0.3], dataset="ImageNet",
             evaluations={"ten_crop": 0.28})
    runs, _, curves = collect_runs([root])
    curves = curves[curves.metric != "test/error"]  # ImageNet logs validation during training, no test set
    figure = training_curves(runs, curves)
    assert [line.get_label() for line in figure.axes[0].lines] == ["plain18 train", "plain18 val"]
    assert figure.axes[0].lines[1].get_ydata().tolist() == pytest.approx([31.0])  # not the 10-crop point
    plt.close(figure)


def test_findings_say_holds_only_beyond_their_noise(tmp_path):
    root = tmp_path / "runs" / "cifar10-mini"
    make_run(root, "plain20-s0", "plain20", 0, "finished", [0.1], train_error=0.070, noise=0.02)
    make_run(root, "plain56-s0", "plain56", 0, "finished", [0.1], train_error=0.071, noise=0.02)
    make_run(root, "resnet20-s0", "resnet20", 0, "finished", [0.1], train_error=0.030, noise=0.002)
    make_run(root, "resnet56-s0", "resnet56", 0, "running", [0.1])
    runs, _, curves = collect_runs([root])
    lines = findings(runs, curves)
    assert len(lines) == 2  # resnet56 is unfinished: not compared
    assert lines[0].startswith("Degradation: plain20 trains better than plain56: +0.10 points of training error [")
    assert lines[0].endswith("(1 and 1 seeds): cannot tell (within the noise).")  # 0.1 points in a +-2 point noise
    assert lines[1].startswith("Residual learning: resnet20 trains better than plain20: +4.00 points")
    assert lines[1].endswith(": holds.")


def test_report_command_writes_table_figure_and_readme(experiment, tmp_path, capsys):
    out = tmp_path / "results" / "mini"
    main(["report", str(experiment), "--out", str(out)])
    assert "| resnet20 " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".resnet-repro-output", "README.md", "curves.png", "table.csv", "table.md"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.imread(out / "curves.png").ndim == 3
    assert pd.read_csv(out / "table.csv").set_index("net").loc["resnet20", "difference"] == pytest.approx(-0.25)
    readme = (out / "README.md").read_text()
    assert f"resnet-repro report {experiment} --out {out}" in readme and "`resnet20-s2`: failed" in readme


def test_a_run_not_started_is_listed_as_such_and_has_no_table_row(experiment, tmp_path):
    # the experiment file's runs that have no directory yet (a sweep stopped, or --only a few of them)
    (experiment / "experiment.json").write_text(json.dumps({
        "experiment": "cifar10-mini", "file": "x.yaml", "protocols": ["single_view"], "smoke": False,
        "runs": ["resnet20-s0", "resnet20-s1", "resnet20-s2", "resnet56-s0", "plain20-s0", "plain56-s0"]}))
    out = tmp_path / "results" / "mini"
    main(["report", str(experiment), "--out", str(out)])
    table = pd.read_csv(out / "table.csv")
    assert sorted(table.net) == ["plain20", "resnet20", "resnet56"]
    readme = (out / "README.md").read_text()
    assert "- `plain56-s0`: not started\n" in readme and "nan" not in readme
    assert "- `resnet20-s0`: finished, 200 iterations in 61 s on 1 x Intel Xeon, git abc123" in readme


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
                       "dataset": "CIFAR-10",  # a flat column of the run's W&B config
                       "data": {"class_path": "resnet_repro.data.CIFAR10DataModule"}, "trainer": {"max_steps": 200}}
        self.summary = {"trainer/global_step": 200}
        self.history = [{"trainer/global_step": s, "train/error": 0.05, "lr": 0.1} for s in range(1, 201)]
        self.history += [{"trainer/global_step": 100 * (i + 1), "test/error": e, "epoch": 0} for i, e in enumerate(errors)]
        self.history.append({"trainer/global_step": 200, "test/single_view/error": errors[-1] - 0.005})

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

    runs, evaluated, curves = collect_wandb("me/resnet-repro", "cifar10-mini")
    assert asked == {"path": "me/resnet-repro", "filters": {"group": "cifar10-mini"}}
    row = error_table(runs, evaluated).iloc[0]
    assert (row["finished"], row["runs"], row["unfinished"], row["n"]) == (1, 2, "s1 failed", 1)
    assert row["ours"] == pytest.approx(8.5)
    assert row["params"] == 269_722 and row["train error"] == pytest.approx(5.0) and row["paper"] == 8.75
