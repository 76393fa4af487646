import pytest
import torch
import torchvision

from resnet_repro.analysis.complexity import complexity_table
from resnet_repro.models.size import count_macs, count_params
from resnet_repro.cli import main
from resnet_repro.models import build_model
from resnet_repro.paper import TABLE1_MACS


@pytest.mark.parametrize("n", [3, 5, 7, 9, 18, 200])
def test_cifar_macs(n):
    with torch.device("meta"):
        model = build_model(f"resnet{6 * n + 2}")
    assert count_macs(model, 32) == 442_368 + (6 * n - 1) * 2_359_296 + 640


IMAGENET_MACS = {18: 1_814_073_344, 34: 3_663_761_408, 50: 3_857_973_248, 101: 7_570_194_432, 152: 11_282_415_616}


@pytest.mark.parametrize("depth", IMAGENET_MACS)
def test_imagenet_macs_exact_and_within_2_percent_of_table1(depth):
    with torch.device("meta"):
        model = build_model(f"resnet{depth}")
    macs = count_macs(model, 224)
    assert macs == IMAGENET_MACS[depth]
    assert abs(macs / TABLE1_MACS[depth] - 1) < 0.02


def test_torchvision_v1_5_resnet50_is_not_the_papers_network():
    with torch.device("meta"):
        v1_5 = torchvision.models.resnet50()
    assert count_params(v1_5) == 25_557_032  # same parameters as v1 ...
    macs = count_macs(v1_5, 224)
    assert macs == 4_089_184_256  # ... but the stride moved into the 3x3 conv
    assert abs(macs / TABLE1_MACS[50] - 1) > 0.02


def test_counting_leaves_the_model_untouched():
    model = build_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model.train(), 32)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_complexity_table_covers_the_registry_with_paper_values():
    table = complexity_table().set_index("model")
    assert table.loc["resnet1202", "params"] == 19_421_274
    assert table.loc["plain56", "paper params"] == 0.85e6
    assert table.loc["resnet152", "MACs"] == 11_282_415_616
    assert table.loc["resnet152", "paper MACs"] == 11.3e9
    assert table.loc["resnet110", "layers"] == 110


def test_models_command_prints_the_table(capsys):
    main(["models"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "| resnet1202 " in line)
    assert "19,421,274" in row and "19.40M" in row and "2.83G" in row
