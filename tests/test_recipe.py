"""The paper's recipe, line by line (the paper's nets and its CIFAR-10 and ImageNet training recipes,
docs/models-and-recipe.md, and the conventions of docs/run-directory.md), each line asserted on the code path a real run takes: the nets `build_model` gives, what
`configure_optimizers` builds for each recipe as LightningCLI resolves it from experiments/*/base.yaml, what a
training batch holds and what an evaluation feeds the net. The inputs are chosen so that a wrong implementation
gives another answer: images that are not mirror-symmetric, mean images that are neither zero nor uniform, convs
whose fan-in is not their fan-out. `tests/mutate_recipe.py` plants a one-line bug in each line and checks that
the tests catch it. Already pinned elsewhere: parameter counts and option A (test_models), Caffe's SGD, ghost and
precise BN (test_fidelity), the warm-up's end at 80% training error and the logged lr (test_training), the ranks'
disjoint parts of a global batch (test_small_images, test_imagenet_data) and a run on two processes
(test_training, test_experiments)."""

import itertools
import operator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning import Callback
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torchvision.transforms.v2 import functional as TF

from helpers import REPO, train_rows, write_cifar10
from mutate_recipe import MUTANTS, problems
from resnet_repro.batchnorm import GhostBatchNorm2d
from resnet_repro.train import ConfigCheck, build_cli
from resnet_repro.data import DigitsDataModule, fashion_mnist, imagenet as imagenet_data
from resnet_repro.data.imagenet import EIGENVALUES, EIGENVECTORS, MEAN, PCALighting
from resnet_repro.experiments import load_experiment
from resnet_repro.models import build_model, get_spec, list_models
from resnet_repro.module import CaffeSGD

pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
              pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true"),
              pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")]

RECIPES = ("cifar10", "digits", "imagenet")  # experiments/<name>/base.yaml
# recipe: (lr milestones, max_steps, global batch size). ImageNet's "divided by 10 when the error plateaus" is
# fixed at Figure 4's drops (docs/deviations.md); the digits recipe is CIFAR-10's scaled to 300 iterations.
SCHEDULES = {"cifar10": ([32_000, 48_000], 64_000, 128), "digits": ([150, 225], 300, 128),
             "imagenet": ([150_000, 300_000, 450_000], 600_000, 256)}
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """recipe(name, *args): the LightningCLI of experiments/<name>/base.yaml with `args` on top, as `resnet-repro
    fit` builds it (model, data module, trainer), built once per argument list."""
    root, built = tmp_path_factory.mktemp("recipe"), {}

    def build(name: str, *args: str):
        if (name, args) not in built:
            built[name, args] = build_cli(["--config", str(REPO / f"experiments/{name}/base.yaml"), "--run_dir",
                                           str(root / f"run{len(built)}"), "--wandb", "false",
                                           "--trainer.accelerator", "cpu", *args], run=False)
        return built[name, args]
    return build


# --- Architectures: "BN right after each conv, before the ReLU; in a residual block the second BN output is added to
# the shortcut and the ReLU comes after the addition. No dropout. He (MSRA) initialisation." -------------------------

def kind(node: torch.fx.Node, modules: dict):
    if node.op == "call_module":
        return type(modules[node.target])
    if node.op == "call_function" and node.target in (operator.add, torch.add):
        return "add"
    return node.target


@pytest.mark.parametrize("name", list_models())
def test_bn_right_after_each_conv_before_the_relu_and_the_relu_after_the_addition_no_dropout(name):
    with torch.device("meta"):
        net = build_model(name)
    modules, graph = dict(net.named_modules()), torch.fx.symbolic_trace(net).graph
    kinds = {node: kind(node, modules) for node in graph.nodes}
    users = {node: [kinds[user] for user in node.users] for node in graph.nodes}
    convs = [node for node, k in kinds.items() if k is nn.Conv2d]
    assert convs and all(users[conv] == [nn.BatchNorm2d] for conv in convs)  # every conv feeds a BN, only a BN
    for node, k in kinds.items():
        if k is nn.BatchNorm2d:  # a BN feeds its ReLU, or the addition of its block
            assert users[node] in ([nn.ReLU], ["add"]), f"{name}: {node} feeds {users[node]}"
        if k is nn.ReLU:  # a ReLU follows a BN or an addition, nothing else
            assert kinds[node.args[0]] in (nn.BatchNorm2d, "add"), f"{name}: {node} after {kinds[node.args[0]]}"
        assert not (isinstance(k, type) and issubclass(k, nn.modules.dropout._DropoutNd)) and k is not F.dropout
    adds = [node for node, k in kinds.items() if k == "add"]
    blocks = sum(1 for m in net.modules() if hasattr(m, "shortcut"))
    assert len(adds) == (blocks if get_spec(name).residual else 0)
    for add in adds:  # the last BN of the branch plus the shortcut, then the ReLU
        assert kinds[add.args[0]] is nn.BatchNorm2d and users[add] == [nn.ReLU], name


def test_no_dropout_a_training_forward_pass_is_deterministic():
    net = build_model("resnet20").train()
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(net(images), net(images))


def test_global_average_pooling_feeds_the_fully_connected_layer():
    net = build_model("resnet20").eval()
    seen = {}
    net.stages.register_forward_hook(lambda _, __, out: seen.update(features=out))
    net.fc.register_forward_hook(lambda _, args, __: seen.update(fc_input=args[0]))
    net(torch.randn(2, 3, 32, 32))
    assert seen["features"].shape == (2, 64, 8, 8)
    torch.testing.assert_close(seen["fc_input"], seen["features"].mean((2, 3)))


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_he_fan_in_initialisation_and_the_fc_layer_as_documented(name):
    """He et al. 2015: zero-mean Gaussian, std sqrt(2 / fan_in); the fc layer keeps PyTorch's default, uniform in
    +-1/sqrt(fan_in) for weights and bias (docs/deviations.md); BN starts as the identity (scale 1, shift 0)."""
    torch.manual_seed(0)
    net = build_model(name)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert any(conv.in_channels * 9 != conv.out_channels * 9 for conv in convs)  # fan-in != fan-out somewhere
    normalised = []
    for conv in convs:
        w = conv.weight.detach().double()
        fan_in = w[0].numel()
        ratio = w.std().item() / (2 / fan_in) ** 0.5
        assert abs(ratio - 1) < 5 / (2 * w.numel()) ** 0.5, f"{name} {tuple(w.shape)}: std {ratio:.3f} x He's"
        normalised.append((w / (2 / fan_in) ** 0.5).flatten())
    normalised = torch.cat(normalised)
    assert abs(normalised.mean().item()) < 0.01
    assert abs((normalised ** 4).mean().item() - 3) < 0.1  # Gaussian (a uniform draw of the same std: 1.8)
    bound = 1 / net.fc.in_features ** 0.5
    for tensor in (net.fc.weight.detach(), net.fc.bias.detach()):
        assert tensor.abs().max() <= bound and tensor.abs().max() > 0.9 * bound
    assert net.fc.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))


# --- Training recipes: "SGD, momentum 0.9, weight decay 1e-4", "lr 0.1, divided by 10 at 32k and 48k iterations,
# stop at 64k iterations", "mini-batch 128 on two GPUs" (ImageNet: batch 256, up to 60e4 iterations) -----------------

@pytest.mark.parametrize("sgd_form", ["pytorch", "caffe"])
@pytest.mark.parametrize("name", RECIPES)
def test_sgd_momentum_0_9_weight_decay_1e_4_on_every_parameter_no_nesterov(recipe, name, sgd_form):
    module = recipe(name, "--model.sgd_form", sgd_form).model
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is {"pytorch": torch.optim.SGD, "caffe": CaffeSGD}[sgd_form]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == len(set(params)) and set(params) == set(module.parameters())  # BN's too (docs/deviations.md)
    for group in optimizer.param_groups:
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (LR, MOMENTUM, WEIGHT_DECAY)
        assert group["nesterov"] is False and group["dampening"] == 0
    # two steps with zero gradients: the weight decay alone, through the momentum buffer (Nesterov: 1.9x the step)
    w0 = torch.cat([p.detach().flatten() for p in params]).double()
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    w1 = torch.cat([p.detach().flatten() for p in params]).double()
    optimizer.step()
    w2 = torch.cat([p.detach().flatten() for p in params]).double()
    torch.testing.assert_close(w1, w0 - LR * WEIGHT_DECAY * w0, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(w2, w1 - LR * (MOMENTUM * WEIGHT_DECAY * w0 + WEIGHT_DECAY * w1), rtol=1e-6, atol=1e-9)


def lr_of_iteration(iteration: int, optimizer, scheduler) -> float:
    """The lr that iteration `iteration` (counted from 1) trains with: the scheduler stepped iteration - 1 times."""
    scheduler.last_epoch = iteration - 2
    scheduler.step()
    [lr] = {group["lr"] for group in optimizer.param_groups}
    return lr


@pytest.mark.parametrize("name", RECIPES)
def test_lr_0_1_divided_by_10_at_each_milestone_in_iterations_to_max_steps(recipe, name):
    milestones, max_steps, batch_size = SCHEDULES[name]
    cli = recipe(name)
    assert cli.trainer.max_steps == max_steps and cli.datamodule.batch_size == batch_size
    configured = cli.model.configure_optimizers()
    assert configured["lr_scheduler"]["interval"] == "step" and configured["lr_scheduler"].get("frequency", 1) == 1
    lr = [lr_of_iteration(i, configured["optimizer"], configured["lr_scheduler"]["scheduler"])
          for i in [1, *(m + d for m in milestones for d in (0, 1)), max_steps]]
    expected = [LR, *(LR * 0.1 ** (k + d) for k in range(len(milestones)) for d in (0, 1)), LR * 0.1 ** len(milestones)]
    assert lr == pytest.approx(expected, rel=1e-12)


def test_resnet110_warms_up_at_lr_0_01_then_follows_the_normal_schedule(recipe):
    module = recipe("cifar10", "--model.model", "resnet110").model
    assert module.warming_up and module.hparams.warmup_until_error == 0.8
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert [lr_of_iteration(i, optimizer, scheduler) for i in (1, 400)] == pytest.approx([0.01, 0.01], rel=1e-12)
    module.warmup_ended_at = 400  # what training_step sets once the training error is below 80%
    lrs = [lr_of_iteration(i, optimizer, scheduler) for i in (401, 32_000, 32_001, 48_000, 48_001, 64_000)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-12)
    assert not recipe("cifar10").model.warmup  # ResNet-20: no warm-up


@pytest.mark.parametrize("name, group_size", [("cifar10", 64), ("digits", None), ("imagenet", None)])
def test_bn_statistics_over_64_images_as_on_the_papers_two_gpus(recipe, name, group_size):
    bns = [m for m in recipe(name).model.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(getattr(bn, "group_size", None) == group_size for bn in bns)
    assert all(isinstance(bn, GhostBatchNorm2d) == (group_size is not None) for bn in bns)


def test_every_experiment_keeps_its_recipes_numbers():
    """Each run of each experiment file, resolved as `resnet-repro run` would start it."""
    for path in sorted(p for p in (REPO / "experiments").rglob("*.yaml") if p.name != "base.yaml"):
        for run in load_experiment(path).runs:
            config = build_cli(run.fit_args(Path("runs/x/y")), run=False, cli_class=ConfigCheck).config
            family = "imagenet" if get_spec(config.model.model).input_size == 224 else "cifar10"
            milestones, max_steps, batch_size = SCHEDULES[family]
            if path.name == "demo.yaml":  # the digits recipe at lr 0.02, half its schedule (docs/deviations.md)
                milestones, max_steps, lr = [75, 112], 150, 0.02
            else:
                lr = LR
            assert (config.model.lr, config.model.momentum, config.model.weight_decay, config.model.lr_decay) == \
                (lr, MOMENTUM, WEIGHT_DECAY, 0.1), f"{path.name} {run.name}"
            assert (config.model.milestones, config.trainer.max_steps, config.data.init_args.batch_size) == \
                (milestones, max_steps, batch_size), f"{path.name} {run.name}"


# --- CIFAR-10 (and Fashion-MNIST, digits, which take its pipeline): "per-pixel mean subtracted", "pad 4 pixels on
# each side, random 32x32 crop, random horizontal flip. Test: the single original 32x32 view." --------------------

@pytest.fixture(scope="module")
def small_images(recipe, tmp_path_factory):
    """small_images(name): the data module of that set as the recipe resolves it, set up for fit."""
    root = tmp_path_factory.mktemp("small")
    write_cifar10(root / "cifar")
    fashion_mnist.write_standin(root / "fashion")
    args = {"cifar10": ("cifar10", "--data.init_args.data_dir", str(root / "cifar"), "--data.init_args.download",
                        "false", "--data.init_args.val_size", "20"),
            "fashion": ("cifar10", "--data.class_path", "resnet_repro.data.FashionMNISTDataModule",
                        "--data.init_args.data_dir", str(root / "fashion"), "--data.init_args.download", "false",
                        "--data.init_args.val_size", "40"),
            "digits": ("digits",)}

    def setup(name: str):
        data = recipe(*args[name]).datamodule
        data.setup("fit")
        return data
    return setup


def windows_of(batch: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """For each image of a training batch, (row offset, column offset, mirrored) of the 32x32 window of its source
    image zero-padded by 4 pixels on each side that it is; an image that is no such window fails."""
    padded = F.pad(sources, (4, 4, 4, 4))
    found = torch.full((len(batch), 3), -1)
    for flip, dy, dx in itertools.product((0, 1), range(9), range(9)):
        window = padded[:, :, dy:dy + 32, dx:dx + 32]
        match = ((window.flip(3) if flip else window) - batch).abs().amax((1, 2, 3)) < 1e-5
        found[match & (found[:, 0] < 0)] = torch.tensor([dy, dx, flip])
    assert (found[:, 0] >= 0).all(), (f"{int((found[:, 0] < 0).sum())} of {len(batch)} training images are not a "
                                      f"32x32 window, plain or mirrored, of their mean-subtracted image padded by 4")
    return found


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("name", ["cifar10", "fashion", "digits"])
def test_per_pixel_mean_subtracted_then_4_pixel_zero_padding_random_32x32_crop_and_horizontal_flip(small_images, name):
    data = small_images(name)
    images, labels = data.splits["train"]
    mean = images.double().mean(0) / 255  # the mean image of the training images
    assert mean.min() < mean.max() - 0.05 and (mean.std((1, 2)) > 1e-3).all()  # neither zero nor uniform per channel
    data.splits["train"] = (images, torch.arange(len(images)))  # each image labelled by its index, to follow it
    try:
        batches = list(itertools.islice(iter(data.train_dataloader()), 16))  # 16 global batches of 128
    finally:
        data.splits["train"] = (images, labels)
    views = torch.cat([windows_of(batch.double(), images[ids].double() / 255 - mean) for batch, ids in batches])
    assert len(views) == 16 * 128 and all(len(ids) == 128 for _, ids in batches)
    rows, cols, flips = views.T
    # offsets 0..8 in each axis, uniform and independent (fixed seeds: chi-square bounds at p ~ 1e-6)
    assert chi_square(torch.bincount(rows, minlength=9)) < 40 and chi_square(torch.bincount(cols, minlength=9)) < 40
    assert chi_square(torch.bincount(rows * 9 + cols, minlength=81)) < 150
    assert abs(flips.float().mean().item() - 0.5) < 0.05  # half mirrored


@pytest.mark.parametrize("name", ["cifar10", "fashion", "digits"])
def test_the_test_view_is_the_single_original_image_less_the_mean(small_images, name):
    data = small_images(name)
    mean = data.splits["train"][0].double().mean(0) / 255
    loaders = [("test", data.test_dataloader()), *zip(data.val_splits, data.val_dataloader())]
    for split, loader in loaders:
        images, labels = (torch.cat(parts) for parts in zip(*loader))
        torch.testing.assert_close(images.double(), data.splits[split][0].double() / 255 - mean, rtol=0, atol=1e-6)
        assert torch.equal(labels, data.splits[split][1]), split


def test_the_digits_at_their_own_8x8_are_sklearns_grey_levels_with_a_1_pixel_padding():
    data = DigitsDataModule(image_size=8)
    data.setup("fit")
    images = torch.cat([data.splits[split][0] for split in ("train", "val", "test")])
    assert images.shape == (1797, 3, 8, 8) and data.pad == 1  # 4 pixels of 32, in proportion
    levels = torch.from_numpy(load_digits().images).float() * 255 / 16
    assert torch.equal(images[:, 0].sort(0).values, levels.round().to(torch.uint8).sort(0).values)
    batch, _ = next(iter(data.train_dataloader()))
    assert batch.shape == (128, 3, 8, 8)


def test_the_digits_grey_levels_0_to_16_upsampled_to_32x32_grey_rgb_images(small_images):
    """The digits enter the CIFAR-10 pipeline as CIFAR-10's images would: 3 x 32 x 32 bytes, their 17 grey levels
    spread over 0..255 (the upsampling keeps an image's mean grey)."""
    data = small_images("digits")
    images = torch.cat([data.splits[split][0] for split in ("train", "val", "test")])
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images.min() == 0 and images.max() == 255
    assert abs(images.double().mean().item() / 255 - load_digits().images.mean() / 16) < 0.002


# --- ImageNet: "Shorter side resized to a random size in [256, 480]; random 224x224 crop or its horizontal flip;
# per-pixel mean subtracted (here per channel, docs/deviations.md); AlexNet-style colour augmentation (PCA lighting)";
# "Test: 10-crop; fully-convolutional multi-scale {224, 256, 384, 480, 640}" --------------------------------------

HEIGHT, WIDTH = 300, 400  # landscape: the height is the shorter side


def ramp_image(height: int, width: int) -> np.ndarray:
    """Red rising as the square of x, green as the square of y, blue constant: no symmetry, and a quadratic fit of
    any crop of any resize of it gives the scale, the crop's position and whether it was mirrored."""
    x, y = np.linspace(0, 1, width) ** 2, np.linspace(0, 1, height) ** 2
    rgb = np.stack(np.broadcast_arrays(255 * x[None, :], 255 * y[:, None], np.full((1, 1), 128.0)), -1)
    return np.round(rgb).astype(np.uint8)


@pytest.fixture(scope="module")
def imagenet(recipe, tmp_path_factory):
    """The ImageNet recipe's data module on a lossless ImageFolder: a ramp, a portrait ramp and a constant colour."""
    root = tmp_path_factory.mktemp("imagenet")
    images = {"ramp": ramp_image(HEIGHT, WIDTH), "portrait": ramp_image(420, 280),
              "constant": np.full((HEIGHT, WIDTH, 3), (200, 100, 50), np.uint8)}
    for split in ("train", "val"):
        for label, (name, pixels) in enumerate(images.items()):
            (root / split / f"n{label:08d}").mkdir(parents=True)
            Image.fromarray(pixels).save(root / split / f"n{label:08d}" / f"{name}.png")
    data = recipe("imagenet", "--data.init_args.data_dir", str(root), "--data.init_args.num_workers", "0").datamodule
    data.setup("fit")
    return data, images


def quadratic_fit(profile: torch.Tensor) -> tuple[float, float]:
    """(length of the resized side, position of the profile's zero in the crop) of a crop of x^2 / (length - 1)^2."""
    j = torch.arange(len(profile), dtype=torch.float64)
    a, b, c = torch.linalg.lstsq(torch.stack([torch.ones_like(j), j, j * j], 1), profile[:, None]).solution[:, 0]
    return 1 + c.item() ** -0.5, -b.item() / (2 * c.item())


def test_imagenet_the_published_mean_and_pca_eigen_decomposition():
    assert MEAN == (0.485, 0.456, 0.406)  # RGB, on the [0, 1] scale
    assert EIGENVALUES == (0.2175, 0.0188, 0.0045)  # AlexNet's lighting, in fb.resnet.torch's values
    assert EIGENVECTORS == ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def test_imagenet_shorter_side_uniform_in_256_480_then_a_random_224_crop_or_its_horizontal_flip(imagenet):
    data, _ = imagenet
    index = data.train_set.class_to_idx["n00000000"]  # the ramp
    torch.manual_seed(0)
    sides, positions, mirrored = [], [], []
    for _ in range(150):
        image, label = data.train_set[index]
        assert image.shape == (3, 224, 224) and label == index
        width, x = quadratic_fit(image[0].double().mean(0))
        height, y = quadratic_fit(image[1].double().mean(1))
        assert y <= 1, "the image was mirrored vertically"
        assert abs(width / height - WIDTH / HEIGHT) < 0.02  # the aspect ratio kept
        flipped = x > 111.5  # the red ramp's zero lies right of the crop: the crop was mirrored
        left = x - 223 if flipped else -x  # the crop's first column in the resized image
        sides.append(height)
        positions += [left / (width - 224), -y / (height - 224)]
        mirrored.append(flipped)
    sides, positions = torch.tensor(sides), torch.tensor(positions)
    assert sides.min() > 253 and sides.max() < 483 and sides.min() < 276 and sides.max() > 460
    ks = (torch.arange(1, 151) / 150 - (sides.sort().values - 256) / 224).abs().max()
    assert ks < 0.16  # Kolmogorov-Smirnov against uniform on [256, 480] (p ~ 1e-3)
    assert positions.min() > -0.05 and positions.max() < 1.05 and positions.min() < 0.1 and positions.max() > 0.9
    assert 0.3 < np.mean(mirrored) < 0.7


def test_imagenet_per_channel_mean_and_one_pca_lighting_colour_per_image(imagenet):
    data, images = imagenet
    index = data.train_set.class_to_idx["n00000002"]  # the constant colour: geometry leaves it unchanged
    vectors, values = torch.tensor(EIGENVECTORS, dtype=torch.float64), torch.tensor(EIGENVALUES, dtype=torch.float64)
    colour = torch.tensor(images["constant"][0, 0], dtype=torch.float64) / 255
    torch.manual_seed(0)
    for _ in range(30):
        image = data.train_set[index][0].double()
        assert image.std((1, 2)).max() < 1e-6  # the same offset for every pixel: no per-pixel noise or mean
        alpha = torch.linalg.solve(vectors, image[:, 0, 0] - colour + torch.tensor(MEAN)) / values
        assert alpha.abs().max() < 0.5 and alpha.abs().min() > 0  # 5 sigma of alpha ~ N(0, 0.1^2)
    # the pipeline's own lighting: alpha ~ N(0, 0.1^2) per eigenvector, drawn once per image
    [lighting] = [t for t in data.train_set.transform.transforms if isinstance(t, PCALighting)]
    base = torch.rand(3, 2, 2)
    torch.manual_seed(1)
    shifts = torch.stack([lighting(base) - base for _ in range(4000)]).double()
    assert (shifts - shifts[:, :, :1, :1]).abs().max() < 1e-6
    alphas = torch.linalg.solve(vectors, shifts[:, :, 0, 0].T).T / values
    assert alphas.mean(0).abs().max() < 0.008
    assert ((alphas.std(0) - 0.1).abs() < 0.006).all(), alphas.std(0)
    assert (torch.corrcoef(alphas.T) - torch.eye(3)).abs().max() < 0.08


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255 - torch.tensor(MEAN)[:, None, None]


@pytest.mark.parametrize("protocol", ["center", "ten_crop", "ten_crop-whole_image", "multi_scale"])
def test_imagenet_test_views_centre_10_crop_and_multi_scale_at_their_sizes(imagenet, protocol):
    data, images = imagenet
    protocol, _, ten_crop_of = protocol.partition("-")
    data.ten_crop_of = ten_crop_of or "central_square"  # the recipe's default: AlexNet's 10-crop
    data.use_protocol(protocol)  # what `resnet-repro test --protocols` does
    data.setup("test")
    batches = list(data.test_dataloader())
    data.use_protocol("center")
    data.ten_crop_of = "central_square"
    for index, name in enumerate(images):  # the class folders' order: the loader's
        pixels = torch.from_numpy(images[name]).permute(2, 0, 1)
        resized = TF.resize(pixels, [256])  # the shorter side to 256, the aspect kept
        h, w = resized.shape[1:]
        top, left = round((h - 224) / 2), round((w - 224) / 2)
        if protocol == "center":
            expected = [normalised(resized[:, top:top + 224, left:left + 224])]
        elif protocol == "ten_crop":
            if not ten_crop_of:  # AlexNet's: the central 256 x 256 square
                resized = resized[:, round((h - 256) / 2):, round((w - 256) / 2):][:, :256, :256]
                h, w = resized.shape[1:]
                top, left = round((h - 224) / 2), round((w - 224) / 2)
            corners = [(0, 0), (0, w - 224), (h - 224, 0), (h - 224, w - 224), (top, left)]
            # the four corners and the centre, of the image (or its square) and of its mirror image
            expected = [normalised(image[:, y:y + 224, x:x + 224]) for image in (resized, resized.flip(2))
                        for y, x in corners]
        else:
            expected = [normalised(TF.resize(pixels, [scale])) for scale in (224, 256, 384, 480, 640)]
        if protocol == "multi_scale":  # one image per batch, a list of whole images at each scale
            views = [view[0] for view in batches[index][0]]
        else:
            views = list(torch.cat([batch for batch, _ in batches])[index].reshape(-1, 3, 224, 224))
        assert len(views) == len(expected), protocol
        for view in expected:  # the net's inputs are the expected views, in any order
            match = [i for i, v in enumerate(views) if v.shape == view.shape and torch.allclose(v, view, atol=1e-6)]
            assert match, f"{protocol}: {name}'s view {tuple(view.shape)} is not among the net's inputs"
            views.pop(match[0])


# --- batch sizes in configs are global; schedules are in iterations (max_steps, milestones at steps); validation and
# checkpoints every val_check_interval and every_n_train_steps iterations ---------------------------------------------

class Recorder(Callback):
    def __init__(self):
        self.batches, self.validations, self.checkpoints = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append((trainer.global_step, len(batch[1])))

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations.append(trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.checkpoints.append(trainer.global_step)


@pytest.fixture(scope="module")
def imagenet_standin(tmp_path_factory) -> tuple[str, ...]:
    """The ImageNet recipe on the stand-in of 40 training images at 32-pixel crops, 2 global batches of 16 an epoch,
    with ResNet-20 (the schedule is under test, not the net)."""
    settings = imagenet_data.write_standin(tmp_path_factory.mktemp("imagenet-standin"))
    return ("imagenet", "--model.model", "resnet20", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--trainer.precision", "32-true", *itertools.chain(*((f"--data.init_args.{k}", str(v))
                                                                 for k, v in settings.items())))


@pytest.mark.parametrize("name", ["digits", "imagenet"])
def test_one_iteration_per_global_batch_to_max_steps_validation_and_checkpoints_at_their_intervals(recipe, name,
                                                                                                    imagenet_standin):
    """ImageNet's epochs (2 iterations here) end inside the run: iterations, validations and checkpoints go on
    across them to max_steps. The small images' stream has no epochs."""
    cli = recipe(*(imagenet_standin if name == "imagenet" else [name]), "--trainer.max_steps", "6",
                 "--data.init_args.batch_size", "16", "--trainer.val_check_interval", "3",
                 "--checkpoint.every_n_train_steps", "2", "--trainer.log_every_n_steps", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
    recorder = Recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert recorder.batches == [(step, 16) for step in range(1, 7)]  # one step per batch of 16, the last at 6
    assert cli.trainer.global_step == 6
    # iterations counted from 1 in the log too: the row of iteration k holds the loss and lr that k trained with
    assert train_rows(Path(cli.trainer.default_root_dir)).index.tolist() == list(range(1, 7))
    assert recorder.validations == [3, 6] and recorder.checkpoints == [2, 4, 6]


INTERVALS = {"cifar10": (2000, 2000), "digits": (100, 100), "imagenet": (10_000, 5000)}  # (validation, checkpoint)


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_validates_and_checkpoints_at_its_intervals(recipe, name):
    trainer, (validation, checkpoint) = recipe(name).trainer, INTERVALS[name]
    assert trainer.val_check_interval == validation and trainer.check_val_every_n_epoch is None
    assert trainer.checkpoint_callback._every_n_train_steps == checkpoint  # the intervals the test above honours


def test_the_mutation_check_plants_each_bug_where_the_code_has_it():
    """tests/mutate_recipe.py: each planted bug's original text occurs once in its file, the bug changes one line of
    it, and the tests named to catch it exist, so the list cannot drift from the code."""
    assert problems(MUTANTS) == []
    assert len({(m.file, m.original, m.mutant) for m in MUTANTS}) == len(MUTANTS)
