"""Layer responses (Figure 7) and the analysis notebooks."""

import json
import shutil

import nbformat
import pandas as pd
import pytest
import torch
import yaml
from nbclient import NotebookClient
from torch import nn

from helpers import DIGITS, REPO, fit
from resnet_repro.analysis.responses import (bootstrap_weights, figure7, layer_responses, per_image_moments,
                                             pooled_std, response_findings, response_layers)
from resnet_repro.cli import main
from resnet_repro.models import build_model, get_spec
from resnet_repro.models.blocks import BasicBlock



def test_responses_match_a_hand_computation():
    # one residual block on 2 channels: conv1 and conv2 copy their input (centre tap 1), the BNs (eps 1e-12, below
    # float32's resolution of 1, running mean 0, var 1) scale by 2 and 3, so bn1 = 2x and bn2 = 3 relu(2x). (torch
    # 2.11 refuses an eps of 0.)
    block = BasicBlock(2, 2, stride=1, residual=True, shortcut="A")
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
        conv.weight.data[[0, 1], [0, 1], 1, 1] = 1.0
    for bn, scale in ((block.bn1, 2.0), (block.bn2, 3.0)):
        bn.eps = 1e-12
        nn.init.constant_(bn.weight, scale)
    x = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]], [[0.0, 4.0], [-2.0, 2.0]]]])  # 1 x 2 x 2 x 2
    table = layer_responses(nn.Sequential(block), [x], pool="channel")
    assert table.name.tolist() == ["0.bn1", "0.bn2"]

    def population_std(values):
        return torch.tensor(values, dtype=torch.float64).std(unbiased=False).item()

    bn1 = (population_std([2, -2, 4, 0]) + population_std([0, 8, -4, 4])) / 2
    bn2 = (population_std([6, 0, 12, 0]) + population_std([0, 24, 0, 12])) / 2
    assert table["std"].tolist() == pytest.approx([bn1, bn2])
    pooled = layer_responses(nn.Sequential(block), [x[:, :, :1], x[:, :, 1:]], pool="all")  # split batches
    assert pooled["std"].tolist() == pytest.approx([population_std([2, -2, 4, 0, 0, 8, -4, 4]),
                                                    population_std([6, 0, 12, 0, 0, 24, 0, 12])])


@pytest.mark.parametrize("name, count", [("plain20", 19), ("resnet20", 19), ("resnet56", 55), ("plain34", 32),
                                         ("resnet50", 16)])
def test_one_response_per_3x3_layer(name, count):
    model = build_model(name)
    layers = response_layers(model)
    assert len(layers) == count
    cifar = get_spec(name).input_size == 32  # the CIFAR stem is a 3x3 conv, the first layer; ImageNet's is 7x7
    assert (layers[0] == ("stem.1", model.stem[1])) == cifar
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if blocks:  # basic blocks: exactly 2 per block, in forward order
        assert [bn for _, bn in layers[cifar:]] == [bn for b in blocks for bn in (b.bn1, b.bn2)]


def test_bootstrap_resamples_of_the_images_give_the_std_of_the_resampled_images():
    moments = per_image_moments(nn.Sequential(BasicBlock(2, 2, stride=1, residual=True, shortcut="A")),
                                [torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(0))])
    weights = bootstrap_weights(5, resamples=3)
    assert weights.sum(1).tolist() == [5, 5, 5]
    for resample in range(3):
        images = torch.repeat_interleave(torch.arange(5), weights[resample].long())  # the images drawn
        expected = pooled_std(moments["0.bn1"][images])
        assert pooled_std(moments["0.bn1"], weights=weights[resample:resample + 1]).item() == pytest.approx(expected.item())


def test_findings_say_holds_only_beyond_their_noise():
    import pandas as pd

    runs = pd.DataFrame({"label": ["plain20-s0", "resnet20-s0", "resnet56-s0", "resnet56-s1"],
                         "model": ["plain20", "resnet20", "resnet56", "resnet56"], "mean_std": [1.2, 0.9, 0.89, 0.87]})
    noise = torch.linspace(-0.05, 0.05, 100, dtype=torch.float64)  # the spread of the resamples
    replicates = {"plain20-s0": 1.2 + noise, "resnet20-s0": 0.9 + noise.flip(0), "resnet56-s0": 0.89 + noise,
                  "resnet56-s1": 0.87 + noise}
    lines = response_findings(runs, replicates)
    assert lines[0].startswith("resnet20 responds less than plain20: mean std 0.9000 vs 1.2000, difference +0.3000 [")
    assert lines[0].endswith("(1 and 1 seeds): holds.")
    assert lines[1].startswith("resnet56 responds less than resnet20: mean std 0.8800 vs 0.9000")
    assert lines[1].endswith("(2 and 1 seeds): cannot tell (within the noise).")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Three short digits runs (plain20, resnet20, resnet32) with checkpoints, made once for these tests."""
    runs = tmp_path_factory.mktemp("runs") / "tiny"
    for model in ("plain20", "resnet20", "resnet32"):
        fit(*DIGITS, "--run_dir", str(runs / f"{model}-s0"), "--model.model", model, "--trainer.max_steps", "3",
            "--data.init_args.batch_size", "16", "--trainer.val_check_interval", "3")
    return runs


def test_responses_command_writes_csv_figure_and_findings(tiny_runs, tmp_path, capsys):
    out = tmp_path / "responses"
    checkpoints = sorted(str(p) for p in tiny_runs.glob("*/checkpoints/last.ckpt"))
    main(["responses", *checkpoints, "--images", "64", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "resnet20 responds less than plain20" in printed and "resnet32 responds less than resnet20" in printed
    main(["responses", str(tiny_runs), "--models", "plain20", "resnet32", "--images", "64", "--out", str(out)])
    printed = capsys.readouterr().out  # a folder of runs, two of its nets
    assert "resnet32 responds less than" not in printed and "resnet20" not in printed
    assert set(pd.read_csv(out / "responses.csv").label) == {"plain20-s0", "resnet32-s0"}
    main(["responses", *checkpoints, "--images", "64", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [".resnet-repro-output", "README.md", "responses.csv", "responses.png"]
    table = pd.read_csv(out / "responses.csv")
    assert table.groupby("label").size().to_dict() == {"plain20-s0": 19, "resnet20-s0": 19, "resnet32-s0": 31}
    assert (table[table.label == "plain20-s0"].sort_values("sorted_rank")["std"].diff().dropna() <= 0).all()


def test_a_folder_of_runs_gives_its_finished_runs_and_names_the_others(tiny_runs, tmp_path, capsys):
    runs = tmp_path / "tiny"
    shutil.copytree(tiny_runs, runs)
    summary = runs / "resnet32-s0" / "summary.json"  # stopped halfway: its checkpoint is not the study's net
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    out = tmp_path / "responses"
    main(["responses", str(runs), "--images", "16", "--out", str(out)])
    assert "responses: left out the unfinished runs resnet32-s0 (interrupted)" in capsys.readouterr().err
    assert set(pd.read_csv(out / "responses.csv").label) == {"plain20-s0", "resnet20-s0"}
    main(["responses", str(runs / "resnet32-s0"), str(runs / "plain20-s0"), "--images", "16", "--out", str(out)])
    assert set(pd.read_csv(out / "responses.csv").label) == {"plain20-s0", "resnet32-s0"}  # named: measured


@pytest.mark.parametrize("notebook", ["layer_responses.ipynb", "degradation_curves.ipynb"])
def test_notebooks_run_on_fixture_runs_and_are_stored_without_outputs(notebook, tiny_runs, monkeypatch):
    path = REPO / "notebooks" / notebook
    stored = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in stored.cells if cell.cell_type == "code")
    assert not any("fit(" in cell.source or "Trainer(" in cell.source for cell in stored.cells)  # no training code
    monkeypatch.setenv("RESNET_REPRO_RUNS", str(tiny_runs))
    client = NotebookClient(stored, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()  # raises CellExecutionError when a cell fails
    outputs = [o for cell in stored.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_figure7_draws_one_line_per_net_a_colour_per_net_a_style_per_family_and_says_what_it_shows():
    rows = [{"label": label, "model": model, "dataset": "Fashion-MNIST", "layer": layer, "std": std + layer / 10,
             "sorted_rank": 4 - layer} for label, model, std in [("plain20-s0", "plain20", 1.0), ("plain20-s1", "plain20", 1.2),
                                                                  ("resnet20-s0", "resnet20", 0.5)]
            for layer in range(1, 4)]
    figure = figure7(pd.DataFrame(rows))
    top = figure.axes[0]
    assert [line.get_label() for line in top.lines] == ["plain20", "resnet20"]  # one line per net, not per seed
    assert [line.get_linestyle() for line in top.lines] == ["--", "-"]  # plain dashed, ResNet solid
    assert top.lines[0].get_color() != top.lines[1].get_color()
    assert top.lines[0].get_ydata().tolist() == pytest.approx([1.2, 1.3, 1.4])  # the mean of plain20's two seeds
    assert len(top.collections) == 1  # the band of plain20's seeds; resnet20 has one seed
    assert figure.get_suptitle() == "Fashion-MNIST: the mean of 1 or 2 seeds per net (band: lowest to highest)"
    assert top.get_legend()._bbox_to_anchor.bounds[0] >= top.bbox.bounds[0] + top.bbox.bounds[2] - 1  # beside the axes


@pytest.fixture(scope="module")
def fashion_study(tmp_path_factory):
    """A study on stand-in Fashion-MNIST (plain20 and resnet20, two iterations each), and a recipe saying where its
    data is, as a user passes it to `responses --data` or to the notebook."""
    from resnet_repro.data.fashion_mnist import write_standin

    root = tmp_path_factory.mktemp("fashion")
    settings = write_standin(root / "data")
    recipe = root / "data.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"class_path": "resnet_repro.data.FashionMNISTDataModule",
                                               "init_args": settings}}))
    for model in ("plain20", "resnet20"):
        fit("--config", str(REPO / "experiments/cifar10/base.yaml"), "--config", str(recipe), "--run_dir",
            str(root / "runs" / "fashion-depth" / f"{model}-s0"), "--model.model", model, "--trainer.max_steps", "2",
            "--data.init_args.batch_size", "8", "--trainer.val_check_interval", "2", "--trainer.precision", "32-true",
            "--trainer.accelerator", "cpu")
    return root / "runs" / "fashion-depth", recipe


@pytest.mark.parametrize("notebook", ["layer_responses.ipynb", "degradation_curves.ipynb"])
def test_notebooks_run_on_a_study_of_another_data_set_with_its_data_where_the_user_says(notebook, fashion_study,
                                                                                         monkeypatch):
    runs, recipe = fashion_study
    monkeypatch.setenv("RESNET_REPRO_RUNS", str(runs))
    monkeypatch.setenv("RESNET_REPRO_DATA", str(recipe))
    stored = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    # the kernel starts in notebooks/, as Jupyter starts it: the data is still found where the recipe says
    NotebookClient(stored, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    text = "".join(o.get("text", "") for cell in stored.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "responds less than plain20" in text if notebook == "layer_responses.ipynb" else "Residual learning" in text


def test_responses_are_written_beside_their_studys_report_by_default(fashion_study, tmp_path, monkeypatch):
    runs, recipe = fashion_study
    monkeypatch.chdir(tmp_path)
    main(["responses", str(runs), "--data", str(recipe), "--images", "16"])
    readme = (tmp_path / "results" / "fashion-depth-responses" / "README.md").read_text()
    assert "over the first 16 test images" in readme  # as many as were measured
    main(["responses", str(runs / "plain20-s0" / "checkpoints" / "last.ckpt"), str(runs / "resnet20-s0"), "--data",
          str(recipe), "--images", "100"])  # a checkpoint and a run directory of the same study: the same place
    readme = (tmp_path / "results" / "fashion-depth-responses" / "README.md").read_text()
    assert "over the first 60 test images" in readme  # the stand-in's test set has 60, fewer than asked for
