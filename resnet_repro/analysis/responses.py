"""Layer responses (the paper's Figure 7): the standard deviation of each 3x3 layer's output after its BN and
before the ReLU or the addition, over a set of images.

The paper does not say which images or how the std is pooled. Here: the evaluation images of the run's own
test set (the first `num_images`), with the network in eval mode (BN uses its running statistics), and
`pool="channel"` (default) takes the std of each channel over images and positions, then the mean over the
channels (the typical response of one filter); `pool="all"` takes one std over every value of the layer.
"""

import inspect
import shlex
import sys
from pathlib import Path
from typing import Iterable, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..data import data_module_class
from ..files import read_yaml, staged
from ..hooks import hooked
from ..models import BasicBlock, Bottleneck, get_spec
from ..options import OptionParser, count
from ..report.figures import LINE_STYLES, net_colours, seeds_text
from ..rundir import check_no_links, check_not_a_link, last_checkpoint, read_checkpoint, read_summary, run_dirs
from ..stats import BOOTSTRAP_SAMPLES, interval, resampled_seeds, verdict
# Where this machine reads and writes a dataset and whether it downloads one: the user's to choose (--data),
# never a run folder's, which may come from elsewhere
DATA_LOCATION = ("data_dir", "download")


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after every 3x3 conv, in forward order: the stem's when it is a 3x3 conv (the CIFAR nets' first
    layer; ImageNet's 7x7 stem is not one), then two per basic block, one per bottleneck."""
    layers = []
    for name, stem in [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "stem"][:1]:
        for i, (conv, bn) in enumerate(zip(stem, list(stem)[1:]), start=1):
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and isinstance(bn, nn.BatchNorm2d):
                layers.append((f"{name}.{i}", bn))
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            layers += [(f"{name}.bn1", module.bn1), (f"{name}.bn2", module.bn2)]
        elif isinstance(module, Bottleneck):
            layers.append((f"{name}.bn2", module.bn2))
    return layers


@torch.no_grad()
def per_image_moments(model: nn.Module, batches: Iterable[Tensor], num_images: int | None = None) -> dict[str, Tensor]:
    """For each 3x3 layer (by name, in forward order): per image and channel, the count, sum and sum of squares
    of its responses over positions (images x 3 x channels, float64): enough to compute the std over any
    resample of the images, which is what the bootstrap needs."""
    layers = response_layers(model)
    moments = {name: [] for name, _ in layers}

    def record(name):
        def hook(module, inputs, output: Tensor) -> None:
            values = output.detach().double().flatten(2)  # images x channels x positions
            moments[name].append(torch.stack([torch.full_like(values[:, :, 0], values.shape[2]), values.sum(2),
                                              values.square().sum(2)], dim=1))
        return hook

    seen = 0
    with hooked(model, [bn.register_forward_hook(record(name)) for name, bn in layers], training=False):
        for images in batches:
            if num_images is not None and seen >= num_images:
                break
            images = images if num_images is None else images[: num_images - seen]
            model(images)
            seen += len(images)
    return {name: torch.cat(parts) for name, parts in moments.items()}


def pooled_std(moments: Tensor, pool: Literal["channel", "all"] = "channel", weights: Tensor | None = None) -> Tensor:
    """The std of one layer's responses from per-image moments (images x 3 x channels), the images weighted by
    `weights` (resamples x images; a bootstrap resample's counts) or all once: per resample, the std of each
    channel averaged over channels (`channel`) or one std over all values (`all`)."""
    weights = torch.ones(1, len(moments), dtype=torch.float64) if weights is None else weights.double()
    count, total, squares = (weights @ moments[:, k] for k in range(3))  # resamples x channels
    if pool == "all":
        count, total, squares = count.sum(1, keepdim=True), total.sum(1, keepdim=True), squares.sum(1, keepdim=True)
    mean = total / count
    return (squares / count - mean.square()).clamp_min(0).sqrt().mean(1)


def response_table(moments: dict[str, Tensor], pool: Literal["channel", "all"] = "channel") -> pd.DataFrame:
    """One row per 3x3 layer in forward order: layer (1-based), name, std over all the images."""
    return pd.DataFrame([{"layer": index, "name": name, "std": pooled_std(m, pool).item()}
                         for index, (name, m) in enumerate(moments.items(), start=1)])


def layer_responses(model: nn.Module, batches: Iterable[Tensor], num_images: int | None = None,
                    pool: Literal["channel", "all"] = "channel") -> pd.DataFrame:
    """The response table of a net; statistics are accumulated in float64 over all the images, so the result
    does not depend on the batch size."""
    return response_table(per_image_moments(model, batches, num_images), pool)


def figure7(responses: pd.DataFrame) -> Figure:
    """Top: std per layer in the original order; bottom: sorted by magnitude, largest first. One line per net, the
    mean of its seeds (band: lowest to highest), one colour per net and one line style per family (plain dashed,
    ResNet solid); the data set and the seeds in the title, the legend beside the axes."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), layout="constrained")
    models = responses.model.unique().tolist()
    colours = net_colours(dict(zip(models, models)))
    for model in sorted(models, key=lambda m: (get_spec(m).depth, get_spec(m).residual)):
        runs = responses[responses.model == model]
        style = LINE_STYLES[get_spec(model).kind]
        for ax, position in ((top, "layer"), (bottom, "sorted_rank")):
            per_seed = runs.pivot(index=position, columns="label", values="std")
            ax.plot(per_seed.index, per_seed.mean(1), style, color=colours[model], marker=".", label=model)
            if per_seed.shape[1] > 1:
                ax.fill_between(per_seed.index, per_seed.min(1), per_seed.max(1), color=colours[model], alpha=0.15,
                                linewidth=0)
    top.set(xlabel="layer index (original)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(" and ".join(sorted(responses.dataset.dropna().unique())) + ": "
                    + seeds_text(responses.groupby("model").label.nunique()), fontsize=10)
    return figure


def bootstrap_weights(images: int, resamples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Tensor:
    """How often each test image is drawn in each bootstrap resample (resamples x images)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, images, (resamples, images), generator=generator)
    return torch.zeros(resamples, images, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))


def mean_response(moments: dict[str, Tensor], pool: str, weights: Tensor | None = None) -> Tensor:
    """A net's mean response: the std of each 3x3 layer averaged over the layers (per resample)."""
    return torch.stack([pooled_std(m, pool, weights) for m in moments.values()]).mean(0)


def response_findings(runs: pd.DataFrame, replicates: dict[str, Tensor], seed: int = 0) -> list[str]:
    """The paper's findings on mean responses, each with a 95% bootstrap interval: a ResNet responds less than
    its plain twin, and a deeper ResNet less than a shallower one. `runs` has one row per run (label, model,
    mean std over its layers); `replicates[label]` the same statistic over bootstrap resamples of the test
    images (the same resamples for every run, so that nets are compared on the same images). Where a net has
    several seeds, the seeds are resampled too."""
    rng = np.random.default_rng(seed)
    by_model = runs.groupby("model", sort=False)
    point = by_model["mean_std"].mean()
    specs = {model: get_spec(model) for model in point.index}

    def resampled(model: str) -> np.ndarray:
        return resampled_seeds(np.stack([replicates[label].numpy() for label in by_model.get_group(model).label]), rng)

    def line(less: str, more: str) -> str:
        low, high = interval(resampled(more) - resampled(less))
        seeds = f"{len(by_model.get_group(less))} and {len(by_model.get_group(more))} seeds"
        return (f"{less} responds less than {more}: mean std {point[less]:.4f} vs {point[more]:.4f}, difference "
                f"{point[more] - point[less]:+.4f} [{low:+.4f}, {high:+.4f}] ({seeds}): {verdict(low, high)}.")

    lines = [line(model, specs[model].plain_twin) for model in point.index if specs[model].plain_twin in point.index]
    resnets = sorted((m for m in point.index if specs[m].residual), key=lambda m: specs[m].depth)
    lines += [line(deep, shallow) for shallow, deep in zip(resnets, resnets[1:])]
    return lines


def data_module_from(config_path: Path, from_run: bool):
    """The data module named in a config's data section. Only this package's data modules are built: a run
    directory from elsewhere is data, and its config must not name code to run. From a run's own config
    (`from_run`) the data's location and download setting are not taken: the module's defaults hold (its data
    where this machine keeps it, ./data), and nothing is downloaded."""
    try:
        data = read_yaml(config_path)["data"]
        module = data_module_class(data["class_path"])
        init_args = dict(data.get("init_args") or {})
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{config_path} has no data section with a class_path ({type(error).__name__}); pass "
                         f"--data with a recipe such as experiments/cifar10/base.yaml") from error
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from None
    if from_run:
        init_args = {key: value for key, value in init_args.items() if key not in DATA_LOCATION}
        if "download" in inspect.signature(module).parameters:
            init_args["download"] = False
    try:
        return module(**init_args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: its data section does not build {module.__name__} ({error}); pass --data with "
                         f"a recipe whose data section says where the images are") from error


def load_run(checkpoint: Path, data_config: Path | None = None):
    """(label, the trained LightningModule, its test images, their data set's name) of a checkpoint in a run
    directory; the images come from the run's own config.yaml, or from the data section of `data_config`."""
    from ..module import ResNetClassifier  # Lightning: imported only where a checkpoint is loaded

    checkpoint = Path(checkpoint)
    read_checkpoint(checkpoint)
    config_path = Path(data_config) if data_config else checkpoint.parent.parent / "config.yaml"
    if not data_config:
        check_not_a_link(config_path, "the config of the checkpoint's run")
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: pass --data with a recipe whose data section gives the images")
    datamodule = data_module_from(config_path, from_run=data_config is None)
    try:
        datamodule.setup("test")
    except FileNotFoundError as error:
        if data_config:
            raise
        raise FileNotFoundError(f"{error} (responses takes where the data is from --data, never from the run's "
                                f"{config_path}: pass --data with a recipe that sets data.init_args.data_dir)") from error
    images = (images for images, _ in datamodule.test_dataloader())
    # eager: the hooks read every 3x3 layer's output, and a net trained compiled need not pay to compile again here
    module = ResNetClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True, compile_mode=None)
    return checkpoint.parent.parent.name, module, images, datamodule.dataset


def find_checkpoints(paths: list[Path]) -> list[Path]:
    """Checkpoints from what a user names: checkpoint files, run directories, or experiment folders (every finished
    run in them with a checkpoint, including runs an experiment takes from another; the unfinished ones are named
    on stderr, as a figure of a net halfway through its schedule is not the study's: name its run to measure it)."""
    found, unfinished = [], []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif last_checkpoint(path).is_file():
            check_no_links(path)
            found.append(last_checkpoint(path))
        elif path.is_dir():
            for run in run_dirs(path):
                status = read_summary(run).get("status")
                if status == "finished" and last_checkpoint(run).is_file():
                    found.append(last_checkpoint(run))
                elif status is not None and status != "finished":
                    unfinished.append(f"{run.name} ({status})")
        else:
            raise FileNotFoundError(f"{path} does not exist: pass checkpoints, run directories or runs/<experiment>")
    if unfinished:
        print(f"responses: left out the unfinished runs {', '.join(unfinished)}", file=sys.stderr)
    return found


def experiment_names(paths: list[Path]) -> list[str]:
    """The experiments of what a user names (experiment folders, run directories, checkpoints), in order, once."""
    names = []
    for path in map(Path, paths):
        folder = path.parents[2] if path.is_file() else path if not last_checkpoint(path).is_file() else path.parent
        names += [folder.name] if folder.name not in names else []
    return names


def measure_runs(paths: list[Path], models: list[str] | None = None, num_images: int | None = 1000,
                 pool: Literal["channel", "all"] = "channel", data_config: Path | None = None):
    """(responses: one row per run and 3x3 layer, with its sorted rank; runs: one row per run with its mean
    response and the number of test images it was measured on; replicates: each run's mean response over bootstrap resamples of the test images, the same
    resamples for every run) of the runs found in `paths`, or only those of `models`."""
    tables, runs, replicates, weights = [], [], {}, None
    for checkpoint in find_checkpoints(paths):
        label, module, images, dataset = load_run(checkpoint, data_config)
        if models and module.hparams.model not in models:
            continue
        moments = per_image_moments(module, images, num_images)
        if weights is None:
            weights = bootstrap_weights(len(next(iter(moments.values()))))
        tables.append(response_table(moments, pool).assign(label=label, model=module.hparams.model, dataset=dataset))
        runs.append({"label": label, "model": module.hparams.model, "mean_std": tables[-1]["std"].mean(),
                     "images": len(next(iter(moments.values())))})
        replicates[label] = mean_response(moments, pool, weights)
    if not tables:
        raise ValueError(f"no run of {', '.join(models or [])} among {' '.join(map(str, paths))}")
    responses = pd.concat(tables, ignore_index=True)
    responses["sorted_rank"] = responses.groupby("label")["std"].rank(ascending=False, method="first").astype(int)
    return responses, pd.DataFrame(runs), replicates


def responses_command(argv: list[str]) -> None:
    parser = OptionParser(prog="resnet-repro responses", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path,
                        help="checkpoints, run directories or experiment folders (runs/cifar10-table6 ...)")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="only runs of these nets (e.g. plain20 resnet56)")
    parser.add_argument("--data", type=Path, help="a recipe whose data section gives the images and where they are (default: each run's "
                             "data module, from its default folder, ./data, never downloading)")
    parser.add_argument("--images", type=count, default=1000, help="how many test images (default 1000)")
    parser.add_argument("--pool", choices=["channel", "all"], default="channel", help="how the std is pooled")
    parser.add_argument("--out", type=Path, help="default: results/<experiment>[+<experiment>...]-responses, beside "
                                                     "the experiments' report")
    args = parser.parse_args(argv)
    out = args.out or Path("results") / ("+".join(experiment_names(args.paths)) + "-responses")
    responses, runs, replicates = measure_runs(args.paths, args.models, args.images, args.pool, args.data)
    lines = response_findings(runs, replicates)
    command = shlex.join(["resnet-repro", "responses", *map(str, argv)])
    with staged(out) as folder:
        responses.to_csv(folder / "responses.csv", index=False)
        figure = figure7(responses)
        figure.savefig(folder / "responses.png", dpi=120)
        plt.close(figure)
        (folder / "README.md").write_text(
            f"# Layer responses (Figure 7)\n\nMade by `{command}`: the std of each 3x3 layer's output after BN, "
            f"before ReLU/addition (the stem's 3x3 conv included), over the first {runs.images.max():,} test "
            f"images of each run's data, pooled per `{args.pool}`. Findings compare the mean over layers, with a 95% "
            f"bootstrap interval over the test images (the same resamples for every net) and over seeds where a "
            f"net has several; \"holds\" only when the interval excludes no difference.\n\n"
            + "".join(f"- {line}\n" for line in lines))
    print("\n".join(lines) or "no plain/ResNet pair or ResNet pair to compare")
    print(f"written to {out}/: responses.csv, responses.png, README.md")
