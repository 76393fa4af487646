"""Layer responses (Figure 7) and the analysis notebooks."""

import os
import shutil

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from torch import nn

from conftest import REPO, fit
from resnet_repro.analysis.responses import layer_responses, response_findings, response_layers
from resnet_repro.cli import main
from resnet_repro.models import build_model
from resnet_repro.models.blocks import BasicBlock

DIGITS = ["--config", str(REPO / "experiments/digits/base.yaml")]


def test_responses_match_a_hand_computation():
    # one residual block on 2 channels: conv1 and conv2 copy their input (centre tap 1), the BNs (eps 0,
    # running mean 0, var 1) scale by 2 and 3, so bn1 = 2x and bn2 = 3 relu(2x).
    block = BasicBlock(2, 2, stride=1, residual=True, shortcut="A")
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
        conv.weight.data[[0, 1], [0, 1], 1, 1] = 1.0
    for bn, scale in ((block.bn1, 2.0), (block.bn2, 3.0)):
        bn.eps = 0.0
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


@pytest.mark.parametrize("name, count", [("plain20", 18), ("resnet20", 18), ("resnet56", 54), ("plain34", 32),
                                         ("resnet50", 16)])
def test_one_response_per_3x3_layer(name, count):
    model = build_model(name)
    layers = response_layers(model)
    assert len(layers) == count
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if blocks:  # basic blocks: exactly 2 per block, in forward order
        assert [bn for _, bn in layers] == [bn for b in blocks for bn in (b.bn1, b.bn2)]


def test_findings_compare_twins_and_depths():
    import pandas as pd

    responses = pd.DataFrame({"model": ["plain20", "resnet20", "resnet56"], "std": [1.2, 0.9, 0.7]})
    assert response_findings(responses) == [
        "resnet20 responds less than plain20: mean std 0.9000 vs 1.2000: holds.",
        "resnet56 responds less than resnet20: mean std 0.7000 vs 0.9000: holds.",
    ]


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
    assert sorted(p.name for p in out.iterdir()) == [".resnet-repro-output", "README.md", "responses.csv", "responses.png"]
    import pandas as pd

    table = pd.read_csv(out / "responses.csv")
    assert table.groupby("label").size().to_dict() == {"plain20-s0": 18, "resnet20-s0": 18, "resnet32-s0": 30}
    assert (table[table.label == "plain20-s0"].sort_values("sorted_rank")["std"].diff().dropna() <= 0).all()


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
