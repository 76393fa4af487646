"""Every experiment file end to end in miniature (`resnet-repro run FILE --smoke`): every run trained for a few
iterations on stand-in data in its dataset's real format, evaluated under the experiment's test protocols, and
turned into the report, whose rows, protocols and paper numbers are checked here."""

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml

from helpers import REPO
from resnet_repro.cli import main
from resnet_repro.experiments import load_experiment
from resnet_repro.report.collect import collect_runs
from resnet_repro.report.figures import training_curves

# In the order they are run: Table 3 takes two of Table 2's runs, Table 4 evaluates Table 3's.
FILES = ["imagenet/table2.yaml", "imagenet/table3.yaml", "imagenet/table4.yaml", "cifar10/table6.yaml",
         "cifar10/fig6-plain.yaml", "cifar10/jpeg-depth.yaml", "fashion/depth.yaml", "demo.yaml"]
PAPER = {  # (net, protocol, statistic) -> the paper's top-1 number the report must show beside ours
    "imagenet/table2.yaml": {("plain18", "ten_crop", "one run"): "27.94", ("plain34", "ten_crop", "one run"): "28.54",
                             ("resnet18-A", "ten_crop", "one run"): "27.88",
                             ("resnet34-A", "ten_crop", "one run"): "25.03"},
    "imagenet/table3.yaml": {("plain34", "ten_crop", "one run"): "28.54", ("resnet34-A", "ten_crop", "one run"): "25.03",
                             ("resnet34-B", "ten_crop", "one run"): "24.52", ("resnet34-C", "ten_crop", "one run"): "24.19",
                             ("resnet50-B", "ten_crop", "one run"): "22.85", ("resnet101-B", "ten_crop", "one run"): "21.75",
                             ("resnet152-B", "ten_crop", "one run"): "21.43"},
    "imagenet/table4.yaml": {("resnet34-B", "multi_scale", "one run"): "21.84",
                             ("resnet34-C", "multi_scale", "one run"): "21.53",
                             ("resnet50-B", "multi_scale", "one run"): "20.74",
                             ("resnet101-B", "multi_scale", "one run"): "19.87",
                             ("resnet152-B", "multi_scale", "one run"): "19.38"},
    "cifar10/table6.yaml": {("resnet20", "single_view", "one run"): "8.75", ("resnet1202", "single_view", "one run"): "7.93",
                            ("resnet110", "single_view", "best of 5"): "6.43",
                            ("resnet110", "single_view", "mean±std of 5"): "6.61±0.16"},
    # a copy of CIFAR-10: the paper's numbers as context, with no difference (test_report)
    "cifar10/jpeg-depth.yaml": {("resnet20", "single_view", "one run"): "8.75", ("resnet56", "single_view", "one run"): "6.97"},
}
DATASETS = {"cifar10/table6.yaml": "CIFAR-10", "cifar10/jpeg-depth.yaml": "CIFAR-10 (JPEG copy)",
            "fashion/depth.yaml": "Fashion-MNIST", "imagenet/table2.yaml": "ImageNet", "demo.yaml": "digits"}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict:
    """Runs every experiment file in miniature once; {file: (runs root, exit status)}."""
    root = tmp_path_factory.mktemp("smoke")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B logging has its own tests; here it would only cost time
    status = {}
    for name in FILES:
        try:
            main(["run", str(REPO / "experiments" / name), "--smoke", "--runs-root", str(root)])
            status[name] = 0
        except SystemExit as stop:
            status[name] = stop.code
    monkeypatch.undo()
    return {"root": root, "status": status}


def test_every_experiment_file_is_run_in_miniature():
    on_disk = sorted(str(p.relative_to(REPO / "experiments")) for p in (REPO / "experiments").rglob("*.yaml")
                     if p.name != "base.yaml")
    assert sorted(FILES) == on_disk


@pytest.mark.parametrize("name", FILES)
def test_a_miniature_goes_end_to_end_into_its_report(name, smoke_runs, tmp_path):
    assert smoke_runs["status"][name] in (0, None), smoke_runs["status"][name]
    experiment = load_experiment(REPO / "experiments" / name)
    folder = smoke_runs["root"] / experiment.name
    manifest = json.loads((folder / "experiment.json").read_text())
    assert manifest["smoke"] and manifest["protocols"] == experiment.protocols and experiment.protocols
    out = tmp_path / "report"
    main(["report", str(folder), "--out", str(out)])
    table = pd.read_csv(out / "table.csv")
    nets = {run.name.rsplit("-s", 1)[0] for run in experiment.runs}
    assert set(table.net) == nets  # every run, including those taken from another experiment
    for net, rows in table.groupby("net"):
        seeds = sum(run.name.rsplit("-s", 1)[0] == net for run in experiment.runs)
        assert (rows.runs == seeds).all() and (rows.finished == seeds).all(), rows.runs
        for protocol in experiment.protocols:  # evaluated under each protocol of the experiment, with a number
            evaluated = rows[(rows.protocol == protocol) & (rows.metric == "top-1")]
            assert len(evaluated) and evaluated.ours.notna().all(), (net, protocol)
    shown = {(r.net, r.protocol, r.statistic): f"{r.paper:.2f}" + (f"±{r['paper std']:.2f}" if r["paper std"] > 0 else "")
             for _, r in table.iterrows() if r.metric == "top-1" and pd.notna(r.paper)}
    for key, number in PAPER.get(name, {}).items():
        assert shown[key] == number, key
    if name not in PAPER:  # plain nets and other datasets: no paper number to compare with
        assert table.paper.isna().all()
    if name in DATASETS:  # every row names the data set the runs recorded
        assert (table.data == DATASETS[name]).all()
    if name == "cifar10/jpeg-depth.yaml":
        assert table.difference.isna().all()
    assert "A miniature (`run --smoke`)" in (out / "README.md").read_text()


def test_figure6_from_the_two_cifar_folders(smoke_runs, tmp_path):
    root = smoke_runs["root"]
    out = tmp_path / "fig6"
    folders = [root / "cifar10-table6", root / "cifar10-fig6-plain"]
    main(["report", *map(str, folders), "--out", str(out)])
    assert plt.imread(out / "curves.png").shape[1] > 3 * 400  # the figure written: three panels side by side
    runs, _, curves = collect_runs(folders)
    figure = training_curves(runs, curves)  # the same figure, drawn again to read its panels
    lines = {ax.get_title(): {line.get_label().split()[0] for line in ax.get_lines()} for ax in figure.axes}
    assert lines == {"plain": {"plain20", "plain32", "plain44", "plain56", "plain110"},
                     "ResNet": {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"},
                     "ResNet-110 vs 1202": {"resnet110", "resnet1202"}}  # Figure 6: left, middle, right
    table = pd.read_csv(out / "table.csv")
    assert {"plain20", "plain110", "resnet20", "resnet1202"} <= set(table.net)


def test_figure7_from_the_two_cifar_folders(smoke_runs, tmp_path, capsys):
    root, out = smoke_runs["root"], tmp_path / "fig7"
    # the images: the user's --data (a run's own data_dir is never followed), here the miniature's stand-in
    recipe = tmp_path / "data.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"class_path": "resnet_repro.data.CIFAR10DataModule", "init_args": {
        "data_dir": str(root / ".standin-data" / "cifar10-table6" / "CIFAR10DataModule"), "download": False, "val_size": 20}}}))
    main(["responses", str(root / "cifar10-fig6-plain"), str(root / "cifar10-table6"), "--models", "plain20",
          "plain56", "resnet20", "resnet56", "resnet110", "--images", "16", "--data", str(recipe), "--out", str(out)])
    responses = pd.read_csv(out / "responses.csv")
    assert responses.groupby("model").label.nunique().to_dict() == {
        "plain20": 1, "plain56": 1, "resnet20": 1, "resnet56": 1, "resnet110": 5}  # ResNet-110's five seeds
    assert responses.groupby("label").size()["resnet20-s0"] == 19  # the stem's 3x3 conv and 18 in the blocks
    findings = capsys.readouterr().out
    assert "resnet110 responds less than resnet56" in findings and "(5 and 1 seeds)" in findings
