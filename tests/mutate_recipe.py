"""The mutation check of the paper's recipe: plants each realistic one-line bug below in turn, runs only the tests
that cover that line of the recipe, and restores the file. A mutant the tests fail on is caught; one they pass is
a line of the recipe that no test pins.

    python tests/mutate_recipe.py          every mutant, one pytest run each (about 37 minutes on 2 cores)
    python tests/mutate_recipe.py 3 17     mutants 3 and 17 only
    python tests/mutate_recipe.py --list   the mutants, without running anything

It works on the tree it lives in and leaves every file as it found it (content and modification time), also when
stopped by Ctrl-C. Each mutant's original text must occur exactly once in its file, or the script refuses to start
(tests/test_recipe.py checks that too, so the list cannot drift from the code). Not a test module: pytest collects
test_*.py only.
"""

import argparse
import ast
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    file: str  # relative to the repository
    original: str  # text that occurs exactly once in the file (it may take in a neighbouring line to be unique)
    mutant: str  # the same text with one line changed
    breaks: str  # the line of the recipe it breaks
    tests: tuple[str, ...]  # pytest node ids that cover that line


def recipe_tests(name: str, *params: str) -> tuple[str, ...]:
    """Node ids of tests/test_recipe.py::name, one per parameter (none: the unparametrised test)."""
    return tuple(f"tests/test_recipe.py::{name}" + (f"[{p}]" if p else "") for p in params or [""])


NET_ORDER = "test_bn_right_after_each_conv_before_the_relu_and_the_relu_after_the_addition_no_dropout"
NETS = recipe_tests(NET_ORDER, "resnet20", "plain20", "resnet18", "resnet50")
HE_INIT = recipe_tests("test_he_fan_in_initialisation_and_the_fc_layer_as_documented", "resnet20", "resnet18")
SGD_TEST = "test_sgd_momentum_0_9_weight_decay_1e_4_on_every_parameter_no_nesterov"
SGD = recipe_tests(SGD_TEST, "cifar10-pytorch", "cifar10-caffe")
LR_TEST = "test_lr_0_1_divided_by_10_at_each_milestone_in_iterations_to_max_steps"
LR = recipe_tests(LR_TEST, "cifar10", "digits", "imagenet")
WARMUP = recipe_tests("test_resnet110_warms_up_at_lr_0_01_then_follows_the_normal_schedule")
CAFFE = ("tests/test_fidelity.py::test_caffe_sgd_equals_pytorch_sgd_at_a_constant_lr_and_carries_the_old_lr_after_a_drop",)
AUGMENT_TEST = "test_per_pixel_mean_subtracted_then_4_pixel_zero_padding_random_32x32_crop_and_horizontal_flip"
AUGMENT = recipe_tests(AUGMENT_TEST, "digits")
TEST_VIEW = recipe_tests("test_the_test_view_is_the_single_original_image_less_the_mean", "digits")
RANKS = ("tests/test_small_images.py::test_ranks_get_disjoint_parts_of_every_global_batch_and_batches_depend_only_on_the_step",)
FASHION = ("tests/test_small_images.py::test_fashion_mnist_reads_gzipped_idx_files_and_pads_to_32x32",)
DIGITS = recipe_tests("test_the_digits_grey_levels_0_to_16_upsampled_to_32x32_grey_rgb_images")
IMAGENET_CONSTANTS = recipe_tests("test_imagenet_the_published_mean_and_pca_eigen_decomposition")
IMAGENET_GEOMETRY = recipe_tests(
    "test_imagenet_shorter_side_uniform_in_256_480_then_a_random_224_crop_or_its_horizontal_flip")
IMAGENET_COLOUR = recipe_tests("test_imagenet_per_channel_mean_and_one_pca_lighting_colour_per_image")
VIEWS_TEST = "test_imagenet_test_views_centre_10_crop_and_multi_scale_at_their_sizes"
IMAGENET_RANKS = ("tests/test_imagenet_data.py::test_training_ranks_take_disjoint_halves_of_each_global_batch",)
SCHEDULE_TEST = "test_one_iteration_per_global_batch_to_max_steps_validation_and_checkpoints_at_their_intervals"
INTERVALS_TEST = "test_each_recipe_validates_and_checkpoints_at_its_intervals"

MODULE, SMALL, IMAGENET = "resnet_repro/module.py", "resnet_repro/data/small_images.py", "resnet_repro/data/imagenet.py"
BLOCKS = "resnet_repro/models/blocks.py"

MUTANTS = [
    # --- the nets -----------------------------------------------------------------------------------------------
    Mutant(BLOCKS, "        out = self.bn2(self.conv2(out))\n", "        out = self.relu(self.bn2(self.conv2(out)))\n",
           "ReLU after the addition (basic block: a ReLU before it)", NETS),
    Mutant(BLOCKS, "            out = out + self.shortcut(x)\n        return self.relu(out)\n\n\nclass Bottleneck",
           "            out = self.relu(out) + self.shortcut(x)\n        return self.relu(out)\n\n\nclass Bottleneck",
           "ReLU after the addition (basic block: the branch's ReLU before the addition)", NETS),
    Mutant(BLOCKS, "            out = out + self.shortcut(x)\n        return self.relu(out)\n\n\nclass ResNet",
           "            out = out + self.shortcut(x)\n        return out\n\n\nclass ResNet",
           "ReLU after the addition (bottleneck: none)", NETS),
    Mutant(BLOCKS, "        out = self.relu(self.bn1(self.conv1(x)))\n        out = self.relu(self.bn2",
           "        out = self.bn1(self.relu(self.conv1(x)))\n        out = self.relu(self.bn2",
           "BN after the conv, before the ReLU (bottleneck's first conv: ReLU, then BN)", NETS),
    Mutant("resnet_repro/models/imagenet.py", "        nn.BatchNorm2d(64),\n", "        nn.Identity(),\n",
           "BN after every conv (ImageNet stem: no BN)", NETS),
    Mutant(BLOCKS, "return self.fc(x.mean(dim=(2, 3)))",
           "return self.fc(F.dropout(x.mean(dim=(2, 3)), 0.5, self.training))", "no dropout (before the fc layer)",
           NETS + recipe_tests("test_no_dropout_a_training_forward_pass_is_deterministic")),
    Mutant(BLOCKS, 'mode="fan_in", nonlinearity="relu"', 'mode="fan_out", nonlinearity="relu"',
           "He initialisation, fan-in (fan-out)", HE_INIT),
    Mutant(BLOCKS, 'mode="fan_in", nonlinearity="relu"', 'mode="fan_in", nonlinearity="linear"',
           "He initialisation, std sqrt(2 / fan-in) (sqrt(1 / fan-in))", HE_INIT),
    Mutant(BLOCKS, "if isinstance(m, nn.Conv2d):", "if isinstance(m, (nn.Conv2d, nn.Linear)):",
           "the fc layer keeps PyTorch's default initialisation (He's)", HE_INIT),
    Mutant(BLOCKS, "F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))",
           "F.pad(x, (0, 0, 0, 0, self.extra_channels // 2, self.extra_channels - self.extra_channels // 2))",
           "option A: zero channels appended after the input's (on both sides)",
           ("tests/test_models.py::test_option_a_shortcut_subsamples_and_zero_pads",)),
    # --- the optimiser ------------------------------------------------------------------------------------------
    Mutant(MODULE, "lr=self.hparams.lr, momentum=self.hparams.momentum,",
           "lr=self.hparams.lr, momentum=self.hparams.lr,", "momentum 0.9 (the lr's value)", SGD),
    Mutant(MODULE, "weight_decay=self.hparams.weight_decay, foreach=True)", "weight_decay=5e-4, foreach=True)",
           "weight decay 1e-4 (5e-4, other recipes' value)", SGD),
    Mutant(MODULE, "weight_decay=self.hparams.weight_decay, foreach=True)",
           "weight_decay=self.hparams.weight_decay, foreach=True, nesterov=True)", "momentum SGD, not Nesterov's",
           SGD),
    Mutant(MODULE, "SGD_FORMS[self.hparams.sgd_form](self.parameters(), ",
           'SGD_FORMS[self.hparams.sgd_form]([{"params": [p for p in self.parameters() if p.ndim > 1]}, {"params": '
           '[p for p in self.parameters() if p.ndim == 1], "weight_decay": 0.0}], ',
           "weight decay on every parameter (not on BN's and biases)", SGD),
    Mutant(MODULE, 'SGD_FORMS = {"pytorch": torch.optim.SGD, "caffe": CaffeSGD}',
           'SGD_FORMS = {"pytorch": torch.optim.SGD, "caffe": torch.optim.SGD}', "sgd_form caffe is Caffe's SGD",
           recipe_tests(SGD_TEST, "cifar10-caffe")),
    Mutant(MODULE, 'torch._foreach_mul_(buffers, buffer_lr / group["lr"])',
           'torch._foreach_mul_(buffers, group["lr"] / buffer_lr)',
           "Caffe's SGD: the buffers carry the old lr after a drop (rescaled the wrong way)", CAFFE),
    # --- the lr schedule ----------------------------------------------------------------------------------------
    Mutant(MODULE, "bisect_right(self.hparams.milestones, step)", "bisect_right(self.hparams.milestones, step + 1)",
           "lr divided by 10 after the milestone iteration (one iteration early)", LR),
    Mutant(MODULE, '"interval": "step"}', '"interval": "epoch"}', "milestones in iterations (in epochs)", LR),
    Mutant(MODULE, "return self.hparams.warmup_lr / self.hparams.lr", "return self.hparams.warmup_lr",
           "warm-up at lr 0.01 (0.001)", WARMUP),
    Mutant(MODULE, "spec.residual and spec.depth >= 110)", "spec.residual and spec.depth > 110)",
           "ResNet-110 warms up", WARMUP),
    Mutant(MODULE, "bisect_right(self.hparams.milestones, step)",
           "bisect_right(self.hparams.milestones, step - (self.warmup_ended_at or 0))",
           "after the warm-up, the milestones of the normal schedule (shifted by the warm-up)", WARMUP),
    Mutant("experiments/cifar10/base.yaml", "milestones: [32000, 48000]", "milestones: [32000, 46000]",
           "CIFAR-10: lr / 10 at 32k and 48k iterations (46k)", recipe_tests(LR_TEST, "cifar10")),
    Mutant("experiments/imagenet/base.yaml", "batch_size: 256", "batch_size: 128",
           "ImageNet: mini-batch 256", recipe_tests(LR_TEST, "imagenet")),
    # --- CIFAR-10's training batches (Fashion-MNIST and the digits take the same pipeline) ----------------------
    Mutant(SMALL, "sum(0, dtype=torch.float64) / (255 * len(train))).float()",
           "sum(0, dtype=torch.float64) / (255 * len(train))).mean((1, 2), keepdim=True).float()",
           "the per-pixel mean image (a per-channel mean)", AUGMENT + TEST_VIEW),
    Mutant(SMALL, "self.mean = (pool_images[train].sum(0", "self.mean = (pool_images.sum(0",
           "the mean of the training images (of training and validation images)", AUGMENT + TEST_VIEW),
    Mutant(SMALL, "return pad_crop_flip(images, generator_for(self.seed, 1, step, self.rank), self.pad), self.labels[index]",
           "return pad_crop_flip(images + self.mean, generator_for(self.seed, 1, step, self.rank), self.pad) - self.mean, "
           "self.labels[index]", "the mean subtracted before the padding (after the crop)", AUGMENT),
    Mutant(SMALL, "return images.float().div_(255).sub_(mean)", "return images.float().div_(255).sub_(mean).div_(0.25)",
           "the mean subtracted, nothing divided (by a standard deviation)", AUGMENT + TEST_VIEW),
    Mutant(SMALL, "padded = F.pad(images, (pad, pad, pad, pad))",
           'padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")', "zero padding (reflection)", AUGMENT),
    Mutant(SMALL, "pad = 4  # the paper's padding", "pad = 2  # the paper's padding",
           "4 pixels of padding on each side (2)", recipe_tests(AUGMENT_TEST, "cifar10")),
    Mutant("resnet_repro/data/digits.py", "self.pad = image_size // 8", "self.pad = image_size // 16",
           "the digits' padding: 4 pixels of 32, as CIFAR-10's (2)", AUGMENT),
    Mutant(SMALL, "torch.randint(0, 2 * pad + 1, (2, n)", "torch.randint(0, 2 * pad, (2, n)",
           "crop offsets 0..8 (0..7)", AUGMENT),
    Mutant(SMALL, "cols = offsets[1, :, None] + torch.arange(w", "cols = offsets[0, :, None] + torch.arange(w",
           "crop offsets independent in the two axes (the same)", AUGMENT),
    Mutant(SMALL, "torch.randint(0, 2 * pad + 1, (2, n)", "torch.randint(0, 2 * pad + 1, (2, 1)",
           "a crop offset per image (per batch)", AUGMENT),
    Mutant(SMALL, "torch.rand(n, generator=generator) < 0.5", "torch.rand(n, generator=generator) < 0.3",
           "half the images mirrored (30%)", AUGMENT),
    Mutant(SMALL, "torch.rand(n, generator=generator) < 0.5", "torch.rand(1, generator=generator) < 0.5",
           "a flip per image (per batch)", AUGMENT),
    Mutant(SMALL, "cols = torch.where(flips[:, None], cols.flip(1), cols)",
           "rows = torch.where(flips[:, None], rows.flip(1), rows)", "the horizontal flip (a vertical one)", AUGMENT),
    Mutant(SMALL, "self.pad), self.labels[index]", "self.pad), self.labels[start:start + per_rank]",
           "labels kept with their images", AUGMENT),
    Mutant(SMALL, "per_rank = self.batch_size // self.world_size", "per_rank = self.batch_size",
           "the batch size is global, one iteration per global batch at any world size", RANKS),
    Mutant(SMALL, "yield normalize(self.images[index], self.mean), self.labels[index]",
           "yield pad_crop_flip(normalize(self.images[index], self.mean), generator_for(0)), self.labels[index]",
           "test: the single original view (augmented)", TEST_VIEW),
    Mutant(SMALL, "yield normalize(self.images[index], self.mean), self.labels[index]",
           "yield self.images[index].float().div_(255), self.labels[index]",
           "test: the training set's mean subtracted (none)", TEST_VIEW),
    Mutant("resnet_repro/data/fashion_mnist.py", "F.pad(images, (2, 2, 2, 2))", "F.pad(images, (0, 4, 0, 4))",
           "Fashion-MNIST: 28x28 centred in 32x32 by zero padding (at a corner)", FASHION),
    Mutant("resnet_repro/data/digits.py", "* (255 / 16)  # pixel values are 0..16", "* 255  # pixel values are 0..16",
           "digits: grey levels 0..16 scaled to 0..255 (taken for 0..1)", DIGITS),
    # --- ImageNet's training batches ----------------------------------------------------------------------------
    Mutant(IMAGENET, "v2.RandomResize(scaled(256, crop_size), scaled(480, crop_size) + 1)",
           "v2.RandomResize(scaled(256, crop_size), scaled(400, crop_size) + 1)", "shorter side in [256, 480] (400)",
           IMAGENET_GEOMETRY),
    Mutant(IMAGENET, "v2.RandomResize(scaled(256, crop_size), scaled(480, crop_size) + 1)",
           "v2.RandomResizedCrop(scaled(256, crop_size))",
           "shorter side resized, the aspect kept (Inception's random-sized crop)", IMAGENET_GEOMETRY),
    Mutant(IMAGENET, "        v2.RandomCrop(crop_size),", "        v2.CenterCrop(crop_size),",
           "a random 224 crop (the centre one)", IMAGENET_GEOMETRY),
    Mutant(IMAGENET, "v2.RandomHorizontalFlip(),", "v2.RandomVerticalFlip(),", "the horizontal flip (a vertical one)",
           IMAGENET_GEOMETRY),
    Mutant(IMAGENET, "        v2.Normalize(MEAN, std=(1.0, 1.0, 1.0)),\n",
           "        v2.Normalize(MEAN, std=(0.229, 0.224, 0.225)),\n",
           "the per-channel mean subtracted, nothing divided (by the usual standard deviations)", IMAGENET_COLOUR),
    Mutant(IMAGENET, "EIGENVALUES = (0.2175, 0.0188, 0.0045)", "EIGENVALUES = (0.2175, 0.0188, 0.0450)",
           "PCA lighting: the published eigenvalues", IMAGENET_CONSTANTS + IMAGENET_COLOUR),
    Mutant(IMAGENET, 'rgb = self.eigenvectors @ (params["alpha"] * self.eigenvalues)',
           'rgb = self.eigenvectors.T @ (params["alpha"] * self.eigenvalues)',
           "PCA lighting: the eigenvectors are the columns (the rows)", IMAGENET_COLOUR),
    Mutant(IMAGENET, 'rgb = self.eigenvectors @ (params["alpha"] * self.eigenvalues)',
           'rgb = self.eigenvectors @ (params["alpha"] * self.eigenvalues.sqrt())',
           "PCA lighting: alpha times the eigenvalues (their square roots)", IMAGENET_COLOUR),
    Mutant(IMAGENET, "PCALighting(alpha_std=0.1)", "PCALighting(alpha_std=0.2)", "PCA lighting: alpha ~ N(0, 0.1^2)",
           IMAGENET_COLOUR),
    Mutant(IMAGENET, 'return {"alpha": torch.randn(3) * self.alpha_std}', 'return {"alpha": torch.rand(3) * self.alpha_std}',
           "PCA lighting: alpha Gaussian, zero mean (uniform in [0, 0.1])", IMAGENET_COLOUR),
    Mutant(IMAGENET, "return inpt + rgb[:, None, None].to(inpt.dtype)",
           "return inpt + (rgb[:, None, None] * torch.randn(inpt.shape[1:])).to(inpt.dtype)",
           "PCA lighting: one colour per image (noise per pixel)", IMAGENET_COLOUR),
    Mutant(IMAGENET, "self.batch_size // self.world_size, stream)",
           "self.batch_size, stream)",
           "the batch size is global, one iteration per global batch at any world size", IMAGENET_RANKS),
    # --- ImageNet's test views ----------------------------------------------------------------------------------
    Mutant(IMAGENET, "resize = v2.Resize(side)", "resize = v2.Resize([side, side])",
           "test views from the shorter side resized to 256, the aspect kept (squashed to 256x256)",
           recipe_tests(VIEWS_TEST, "center")),
    Mutant(IMAGENET, "resize, v2.CenterCrop(crop_size), *to_normalized_float()",
           "resize, v2.RandomCrop(crop_size), *to_normalized_float()", "the centre 224 crop (a random one)",
           recipe_tests(VIEWS_TEST, "center")),
    Mutant(IMAGENET, "v2.TenCrop(crop_size)", "v2.TenCrop(crop_size, vertical_flip=True)",
           "10-crop: corners and centre, and their horizontal flips (vertical ones)", recipe_tests(VIEWS_TEST, "ten_crop")),
    Mutant(IMAGENET, 'square = [v2.CenterCrop(side)] if ten_crop_of == "central_square" else []', "square = []",
           "10-crop: from the central 256x256 square, AlexNet's (the whole image)", recipe_tests(VIEWS_TEST, "ten_crop")),
    Mutant(IMAGENET, "scales: tuple[int, ...] = (224, 256, 384, 480, 640)",
           "scales: tuple[int, ...] = (224, 256, 384, 480, 600)", "multi-scale: shorter sides 224, 256, 384, 480, 640",
           recipe_tests(VIEWS_TEST, "multi_scale")),
    Mutant(IMAGENET, "return [F.resize(image, [scale]) for scale in self.scales]",
           "return [F.resize(image, [scale, scale]) for scale in self.scales]",
           "multi-scale: the whole image, the aspect kept (squashed)", recipe_tests(VIEWS_TEST, "multi_scale")),
    Mutant(IMAGENET, "v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, std=(1.0, 1.0, 1.0))]",
           "v2.ToDtype(torch.float32, scale=True)]", "test views: the mean subtracted (not)",
           recipe_tests(VIEWS_TEST, "center")),
    # --- the schedule -------------------------------------------------------------------------------------------
    Mutant("resnet_repro/fit_config.py", '"num_sanity_val_steps": 0,', '"num_sanity_val_steps": 0, "accumulate_grad_batches": 2,',
           "one iteration per global batch (per two: gradient accumulation)", recipe_tests(SCHEDULE_TEST, "digits")),
    Mutant("resnet_repro/fit_config.py", '"max_epochs": -1,', '"max_epochs": 1,',
           "the last iteration at max_steps (at the end of the first epoch)", recipe_tests(SCHEDULE_TEST, "imagenet")),
    Mutant("resnet_repro/fit_config.py", '"check_val_every_n_epoch": None,', '"check_val_every_n_epoch": 1,',
           "validation every val_check_interval iterations, across epochs", recipe_tests(SCHEDULE_TEST, "imagenet")),
    Mutant(MODULE, "iteration = self.global_step + 1", "iteration = self.global_step",
           "iterations counted from 1: the lr logged at iteration k is the lr it trained with",
           recipe_tests(SCHEDULE_TEST, "digits")),
    Mutant("experiments/cifar10/base.yaml", "val_check_interval: 2000", "val_check_interval: 20000",
           "CIFAR-10: validation every 2000 iterations", recipe_tests(INTERVALS_TEST, "cifar10")),
    Mutant("experiments/imagenet/base.yaml", "every_n_train_steps: 5000", "every_n_train_steps: 50000",
           "ImageNet: a checkpoint every 5000 iterations", recipe_tests(INTERVALS_TEST, "imagenet")),
]


def changed_line(mutant: Mutant) -> tuple[str, str]:
    """(original line, mutated line): the one line the mutant changes."""
    [pair] = [(a, b) for a, b in zip(mutant.original.splitlines(), mutant.mutant.splitlines()) if a != b]
    return pair[0].strip(), pair[1].strip()


@cache
def test_names(path: Path) -> set[str]:
    return {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}


def problems(mutants: list[Mutant]) -> list[str]:
    """What keeps the mutants from being planted as listed: an original text that is not in its file exactly once, a
    mutant that does not change exactly one line, a covering test that does not exist."""
    found = []
    for number, mutant in enumerate(mutants, 1):
        path = REPO / mutant.file
        count = path.read_text().count(mutant.original) if path.is_file() else 0
        if count != 1:
            found.append(f"mutant {number} ({mutant.breaks}): its original text occurs {count} times in {mutant.file}, "
                         f"not once: bring it in step with the code")
        original, mutated = mutant.original.splitlines(), mutant.mutant.splitlines()
        if len(original) != len(mutated) or sum(a != b for a, b in zip(original, mutated)) != 1:
            found.append(f"mutant {number} ({mutant.breaks}): changes {sum(a != b for a, b in zip(original, mutated))} "
                         f"lines of {len(original)} -> {len(mutated)}, not exactly one")
        for node in mutant.tests:
            file, _, name = node.partition("::")
            if not (REPO / file).is_file() or name.split("[")[0] not in test_names(REPO / file):
                found.append(f"mutant {number} ({mutant.breaks}): its covering test {node} does not exist")
    return found


def planted(mutant: Mutant):
    """Writes the mutant into its file; returns a function that puts the file back as it was, bytes and times."""
    path = REPO / mutant.file
    original, stat = path.read_bytes(), path.stat()
    path.write_text(original.decode().replace(mutant.original, mutant.mutant))
    # a modification time of its own, so that no cached bytecode of the original stands in for the mutant
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    def restore() -> None:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return restore


def pytest_exit_code(tests: tuple[str, ...]) -> int:
    """0: the tests pass; 1: some failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONDONTWRITEBYTECODE": "1"}  # a mutant's bytecode never reaches __pycache__
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", type=int, help="run only these mutants (1-based, as --list numbers them)")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    args = parser.parse_args()
    found = problems(MUTANTS)
    if found:
        sys.exit("\n".join(found))
    unknown = [n for n in args.numbers if not 1 <= n <= len(MUTANTS)]
    if unknown:
        sys.exit(f"no mutant {', '.join(map(str, unknown))}: they are numbered 1 to {len(MUTANTS)} (--list)")
    selected = [(n, MUTANTS[n - 1]) for n in args.numbers or range(1, len(MUTANTS) + 1)]
    if args.list:
        for number, mutant in selected:
            before, after = changed_line(mutant)
            print(f"{number:3d}  {mutant.file}: {mutant.breaks}\n       - {before}\n       + {after}\n"
                  f"       tests: {' '.join(t.replace('tests/', '', 1) for t in mutant.tests)}")
        print(f"{len(selected)} mutants")
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("stopped by SIGTERM; every file restored"))
    start = time.monotonic()
    baseline = tuple(dict.fromkeys(test for _, mutant in selected for test in mutant.tests))
    code = pytest_exit_code(baseline)
    if code != 0:
        sys.exit(f"the covering tests fail on the unmutated tree (pytest exit {code}): a mutation check needs them "
                 f"passing; run python -m pytest {' '.join(baseline)} to see why")
    print(f"the {len(baseline)} covering tests pass on the unmutated tree ({time.monotonic() - start:.0f} s)", flush=True)
    outcomes = {}
    for number, mutant in selected:
        began = time.monotonic()
        restore = planted(mutant)
        try:
            code = pytest_exit_code(mutant.tests)
        finally:
            restore()
        outcomes[number] = {0: "SURVIVED", 1: "caught"}.get(code, f"ERROR (pytest exit {code})")
        print(f"{number:3d}  {outcomes[number]:<8}  {time.monotonic() - began:5.1f} s  {mutant.file}: {mutant.breaks}",
              flush=True)
    caught = sum(outcome == "caught" for outcome in outcomes.values())
    print(f"caught {caught} of {len(outcomes)} mutants in {time.monotonic() - start:.0f} s")
    missed = [str(n) for n, outcome in outcomes.items() if outcome != "caught"]
    if missed:
        sys.exit(f"not caught: {' '.join(missed)} (rerun them with python tests/mutate_recipe.py {' '.join(missed)})")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("stopped by Ctrl-C; every file restored")
