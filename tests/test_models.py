import math

import pytest
import torch
from torch import nn

from resnet_repro.models import build_model, cifar_net, get_spec, imagenet_net, list_models
from resnet_repro.models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shortcut_params(model: nn.Module) -> int:
    return sum(params(m.shortcut) for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck)) and m.shortcut)


@pytest.mark.parametrize("depth, expected", [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018),
                                             (110, 1_727_962), (1202, 19_421_274)])
def test_cifar_parameter_counts_match_table6_and_plain_twins(depth, expected):
    assert params(build_model(f"resnet{depth}")) == expected
    assert params(build_model(f"plain{depth}")) == expected


IMAGENET_B = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize("depth", IMAGENET_B)
def test_imagenet_parameter_counts_by_shortcut_option(depth):
    with torch.device("meta"):
        a, b, c = (build_model(f"resnet{depth}", shortcut=option) for option in "ABC")
    assert params(b) == IMAGENET_B[depth]
    assert shortcut_params(a) == 0
    # A drops exactly B's projections; C adds projections on every block and nothing else.
    assert params(a) == params(b) - shortcut_params(b)
    assert params(c) - shortcut_params(c) == params(b) - shortcut_params(b)
    assert shortcut_params(c) > shortcut_params(b)
    if depth in (18, 34):
        with torch.device("meta"):
            assert params(a) == params(build_model(f"plain{depth}"))


def test_resnet34_option_c_projection_count():
    # C: a 1x1 conv + BN on each of the 16 blocks. Widths 64 (3 blocks), 128 (4), 256 (6), 512 (3); the first
    # block of each stage projects from the previous width.
    def projection(c_in, c_out):
        return c_in * c_out + 2 * c_out

    expected = (3 * projection(64, 64) + projection(64, 128) + 3 * projection(128, 128) + projection(128, 256)
                + 5 * projection(256, 256) + projection(256, 512) + 2 * projection(512, 512))
    with torch.device("meta"):
        assert shortcut_params(build_model("resnet34", shortcut="C")) == expected


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_classifies(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(name, num_classes=7)
        out = model(torch.zeros(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, 7)
    assert model.num_layers == spec.depth
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is None for conv in convs)
    assert len(convs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if not spec.residual:
        assert all(m.shortcut is None for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck)))
        assert not any(isinstance(m, (ZeroPadShortcut, nn.Identity)) for m in model.modules())


@pytest.mark.parametrize("name, shortcut", [("resnet20", "A"), ("resnet20", "B"), ("resnet20", "C"), ("plain20", None)])
def test_cifar_forward_on_real_32x32_images(name, shortcut):
    torch.manual_seed(0)
    model = build_model(name, **({"shortcut": shortcut} if shortcut else {})).eval()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "plain18", "resnet50"])
def test_imagenet_forward_on_real_224x224_images(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_bottleneck_downsamples_in_its_first_1x1_conv():
    block = build_model("resnet50").stages[1][0]
    assert block.conv1.stride == (2, 2) and block.conv1.kernel_size == (1, 1)
    assert block.conv2.stride == (1, 1)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = ZeroPadShortcut(2, 5, stride=2)(x)
    expected = torch.zeros(1, 5, 2, 2)
    expected[0, 0] = torch.tensor([[0.0, 2.0], [8.0, 10.0]])
    expected[0, 1] = torch.tensor([[16.0, 18.0], [24.0, 26.0]])
    assert torch.equal(out, expected)


def test_residual_block_adds_the_shortcut_before_its_last_relu():
    # With the second BN's scale at zero the residual branch outputs its BN shift, so the block computes
    # relu(shift + zero-padded subsampled input) exactly.
    block = BasicBlock(2, 4, stride=2, residual=True, shortcut="A").eval()
    nn.init.zeros_(block.bn2.weight)
    block.bn2.bias.data = torch.tensor([-1.0, 0.5, 0.0, 2.0])
    x = torch.tensor([[[[1.0, -3.0], [5.0, 7.0]], [[-2.0, 4.0], [6.0, 8.0]]]])  # 1 x 2 x 2 x 2
    out = block(x)
    assert out.shape == (1, 4, 1, 1)
    assert out.flatten().tolist() == [0.0, 0.0, 0.0, 2.0]  # relu(1 - 1), relu(-2 + 0.5), relu(0), relu(2)


def test_he_initialisation():
    torch.manual_seed(0)
    conv = build_model("resnet56").stages[2][1].conv1  # 64 x 64 x 3 x 3
    assert conv.weight.mean().abs() < 0.005
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)


@pytest.mark.parametrize("call, message", [
    (lambda: build_model("resnet21"), "unknown model 'resnet21': valid models are plain20, resnet20,"),
    (lambda: cifar_net(21), "6n+2 layers for n >= 1 (8, 14, 20, 26, 32, ...), not 21"),
    (lambda: imagenet_net(19), "18, 34, 50, 101, 152 layers, not 19"),
    (lambda: build_model("resnet20", shortcut="D"), "unknown shortcut option 'D': valid options are A, B, C"),
    (lambda: build_model("plain20", shortcut="A"), "plain20 takes no shortcut: valid overrides are num_classes"),
])
def test_impossible_configurations_say_what_is_valid(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)
