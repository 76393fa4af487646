"""Layer responses (the paper's Figure 7): the standard deviation of each 3x3 layer's output after its BN and
before the ReLU or the addition, over a set of images.

The paper does not say which images or how the std is pooled. Here: the evaluation images of the run's own
test set (the first `num_images`), with the network in eval mode (BN uses its running statistics), and
`pool="channel"` (default) takes the std of each channel over images and positions, then the mean over the
channels (the typical response of one filter); `pool="all"` takes one std over every value of the layer.
"""

import argparse
import shlex
from pathlib import Path
from typing import Iterable, Literal

import matplotlib.pyplot as plt
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..models import BasicBlock, Bottleneck
from ..report.write import staged
from ..rundir import read_checkpoint


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after every 3x3 conv of the blocks, in forward order: two per basic block, one per bottleneck."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            layers += [(f"{name}.bn1", module.bn1), (f"{name}.bn2", module.bn2)]
        elif isinstance(module, Bottleneck):
            layers.append((f"{name}.bn2", module.bn2))
    return layers


@torch.no_grad()
def layer_responses(model: nn.Module, batches: Iterable[Tensor], num_images: int | None = None,
                    pool: Literal["channel", "all"] = "channel") -> pd.DataFrame:
    """One row per 3x3 layer in forward order: layer (1-based), name, std; statistics are accumulated in
    float64 over all the images, so the result does not depend on the batch size."""
    layers = response_layers(model)
    sums = {name: None for name, _ in layers}  # per channel: count, sum, sum of squares

    def record(name):
        def hook(module, inputs, output: Tensor) -> None:
            values = output.detach().double().transpose(0, 1).flatten(1)  # channels x (images * positions)
            stats = torch.stack([torch.full_like(values[:, 0], values.shape[1]), values.sum(1), values.square().sum(1)])
            sums[name] = stats if sums[name] is None else sums[name] + stats
        return hook

    hooks = [bn.register_forward_hook(record(name)) for name, bn in layers]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for images in batches:
            if num_images is not None and seen >= num_images:
                break
            images = images if num_images is None else images[: num_images - seen]
            model(images)
            seen += len(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    rows = []
    for index, (name, _) in enumerate(layers, start=1):
        count, total, squares = sums[name]
        if pool == "all":
            count, total, squares = count.sum(), total.sum(), squares.sum()
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        rows.append({"layer": index, "name": name, "std": std.mean().item()})
    return pd.DataFrame(rows)


def figure7(responses: pd.DataFrame) -> Figure:
    """Top: std per layer in the original order; bottom: sorted by magnitude, largest first; a line per net."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6))
    for label, group in responses.groupby("label", sort=False):
        top.plot(group.layer, group["std"], marker=".", label=label)
        bottom.plot(range(1, len(group) + 1), group["std"].sort_values(ascending=False), marker=".", label=label)
    top.set(xlabel="layer index (original)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def response_findings(responses: pd.DataFrame) -> list[str]:
    """The paper's finding on mean responses: a ResNet responds less than its plain twin, and a deeper ResNet
    less than a shallower one. `responses` holds `label` and `model` columns."""
    mean = responses.groupby("model", sort=False)["std"].mean()
    lines = []
    for model in mean.index:
        twin = model.replace("resnet", "plain")
        if model.startswith("resnet") and twin in mean.index:
            holds = "holds" if mean[model] < mean[twin] else "does not hold"
            lines.append(f"{model} responds less than {twin}: mean std {mean[model]:.4f} vs {mean[twin]:.4f}: {holds}.")
    resnets = sorted((m for m in mean.index if m.startswith("resnet")), key=lambda m: int(m[len("resnet"):]))
    for shallow, deep in zip(resnets, resnets[1:]):
        holds = "holds" if mean[deep] < mean[shallow] else "does not hold"
        lines.append(f"{deep} responds less than {shallow}: mean std {mean[deep]:.4f} vs {mean[shallow]:.4f}: {holds}.")
    return lines


def data_module_from(config_path: Path):
    """The data module named in a config's data section. Only this package's data modules are built: a run
    directory from elsewhere is data, and its config must not name code to run."""
    from .. import data as data_modules

    try:
        data = yaml.safe_load(config_path.read_text())["data"]
        class_path, init_args = data["class_path"], dict(data.get("init_args") or {})
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{config_path} has no data section with a class_path ({type(error).__name__}); pass "
                         f"--data with a recipe such as experiments/cifar10/base.yaml") from error
    module_name, _, class_name = class_path.rpartition(".")
    if module_name.split(".")[0] != "resnet_repro" or class_name not in data_modules.__all__:
        raise ValueError(f"{config_path} names the data module {class_path!r}, which is not one of resnet-repro's "
                         f"({', '.join(data_modules.__all__)}); only those are built from a run's config")
    return getattr(data_modules, class_name)(**init_args)


def load_run(checkpoint: Path, data_config: Path | None = None):
    """(label, the trained LightningModule, its test images) of a checkpoint in a run directory; the images
    come from the run's own config.yaml, or from the data section of `data_config`."""
    from ..module import ResNetClassifier  # Lightning: imported only where a checkpoint is loaded

    checkpoint = Path(checkpoint)
    read_checkpoint(checkpoint)
    config_path = Path(data_config) if data_config else checkpoint.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: pass --data with a recipe whose data section gives the images")
    datamodule = data_module_from(config_path)
    datamodule.setup("test")
    images = (images for images, _ in datamodule.test_dataloader())
    # eager: the hooks read every 3x3 layer's output, and a net trained compiled need not pay to compile again here
    module = ResNetClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True, compile_mode=None)
    return checkpoint.parent.parent.name, module, images


def responses_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="resnet-repro responses", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="runs/<experiment>/<run>/checkpoints/last.ckpt ...")
    parser.add_argument("--data", type=Path, help="a recipe whose data section gives the images (default: each run's)")
    parser.add_argument("--images", type=int, default=1000, help="how many test images (default 1000)")
    parser.add_argument("--pool", choices=["channel", "all"], default="channel", help="how the std is pooled")
    parser.add_argument("--out", type=Path, default=Path("results/responses"))
    args = parser.parse_args(argv)
    tables = []
    for checkpoint in args.checkpoints:
        label, module, images = load_run(checkpoint, args.data)
        table = layer_responses(module, images, args.images, args.pool)
        tables.append(table.assign(label=label, model=module.hparams.model))
    responses = pd.concat(tables, ignore_index=True)
    responses["sorted_rank"] = responses.groupby("label")["std"].rank(ascending=False, method="first").astype(int)
    lines = response_findings(responses)
    command = shlex.join(["resnet-repro", "responses", *map(str, argv)])
    with staged(args.out) as folder:
        responses.to_csv(folder / "responses.csv", index=False)
        figure = figure7(responses)
        figure.savefig(folder / "responses.png", dpi=120)
        plt.close(figure)
        (folder / "README.md").write_text(
            f"# Layer responses (Figure 7)\n\nMade by `{command}`: the std of each 3x3 layer's output after BN, "
            f"before ReLU/addition, over the first {args.images} test images of each run's data, pooled per "
            f"`{args.pool}`.\n\n" + "".join(f"- {line}\n" for line in lines))
    print("\n".join(lines) or "no plain/ResNet pair or ResNet pair to compare")
    print(f"written to {args.out}/: responses.csv, responses.png, README.md")
