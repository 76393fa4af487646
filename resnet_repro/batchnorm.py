"""Two choices about batch normalisation that the paper leaves implicit, as switches of the training recipe.

Ghost BN (`model.bn_group_size`): the paper trained CIFAR-10 with 128 images on two GPUs, so each BN saw 64.
`GhostBatchNorm2d` normalises a rank's batch in groups of G images, each with its own statistics, as G-image
batches on separate GPUs would; the loss and its gradient stay the mean over the whole batch.

Precise BN (`precise_bn_batches`, a setting of fit and test): the released ImageNet models had their BN
statistics computed over many training images after training, not kept as the moving average of training.
`precise_bn` recomputes them, with the weights frozen, as the mean and variance of each BN's input over N
training batches; the `PreciseBN` callback does so before every test.
"""

import itertools
from collections.abc import Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import hooked


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training batch is normalised in groups of `group_size` images.

    A batch of at most `group_size` images is one group (plain BN). The running statistics move, by the usual
    momentum, with the first group's statistics only: on G GPUs DDP's `broadcast_buffers` hands rank 0's running
    statistics to the others at every step, so rank 0's share is the one whose statistics a multi-GPU run keeps.
    Evaluation uses the running statistics, as always.
    """

    def __init__(self, num_features: int, group_size: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size

    @classmethod
    def convert(cls, net: nn.Module, group_size: int) -> nn.Module:
        """Every BatchNorm2d of `net` made a GhostBatchNorm2d in place (same parameters, buffers and state-dict
        keys, so checkpoints load either way)."""
        for name, child in net.named_children():
            if type(child) is nn.BatchNorm2d:
                ghost = cls(child.num_features, group_size, eps=child.eps, momentum=child.momentum)
                ghost.load_state_dict(child.state_dict())
                setattr(net, name, ghost.to(child.weight.device))
            else:
                cls.convert(child, group_size)
        return net

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or len(x) <= self.group_size:
            return super().forward(x)
        if len(x) % self.group_size:
            raise ValueError(f"a batch of {len(x)} images per rank does not split into BN groups of "
                             f"{self.group_size} (model.bn_group_size): make the per-rank batch a multiple of it")
        # each group through BN as a batch of its own, as on its own GPU; only the first (rank 0's) updates the
        # running statistics, so a step costs one BN call per group and no copies of the statistics
        first, *others = x.split(self.group_size)
        outputs = [super().forward(first)]
        outputs += [F.batch_norm(group, None, None, self.weight, self.bias, True, 0.0, self.eps) for group in others]
        return torch.cat(outputs)


def bn_groups(group_size: int | None, batch_size: int, world_size: int) -> tuple[str, bool]:
    """In one line, the images each BN normalises together in training on `world_size` ranks: a rank's share of
    the global batch, in groups of `group_size` (None: the whole share); and whether that is fewer than the
    group the config asks for (a rank's share smaller than model.bn_group_size, which the batch would fill)."""
    def ranks(n: int) -> str:
        return f"{n} rank{'s' if n > 1 else ''}"

    per_rank = batch_size // world_size
    images = per_rank if group_size is None else min(group_size, per_rank)
    shrunk = group_size is not None and images < min(group_size, batch_size)
    if shrunk:
        return (f"BN over {images} images, not the {group_size} of model.bn_group_size: a batch of {batch_size} on "
                f"{ranks(world_size)} leaves {per_rank} per rank (use at most "
                f"{ranks(batch_size // min(group_size, batch_size))}, or a smaller model.bn_group_size)"), True
    groups = f" in groups of {group_size}" if group_size is not None and group_size < per_rank else ""
    return f"BN over {images} images: a batch of {batch_size} on {ranks(world_size)}, {per_rank} per rank{groups}", False


@torch.no_grad()
def precise_bn(net: nn.Module, batches: Iterable[Tensor], reduce_sum=lambda t: t) -> int:
    """Set the running mean and variance of every BN of `net` to the mean and variance of its input over all
    images of `batches` (each image's values at every position), the inputs computed as in training (train
    mode: each BN normalises by its batch). Across DDP ranks pass `reduce_sum`, a sum over the ranks.
    Returns the number of images seen (on this rank)."""
    norms = [module for module in net.modules() if isinstance(module, nn.BatchNorm2d)]
    # count, sum and sum of squares per channel, kept on the BN's device: no host sync per batch
    moments = {norm: torch.zeros(3, norm.num_features, dtype=torch.float64, device=norm.running_mean.device)
               for norm in norms}

    def accumulate(norm: nn.BatchNorm2d, inputs: tuple[Tensor]) -> None:
        x = inputs[0].double().transpose(0, 1).flatten(1)  # C x (N H W)
        moments[norm] += torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(1), x.square().sum(1)])

    images = 0
    with hooked(net, [norm.register_forward_pre_hook(accumulate) for norm in norms], training=True):
        for batch in batches:
            net(batch)
            images += len(batch)
    for norm in norms:
        count, total, total_sq = reduce_sum(moments[norm])
        mean = total / count
        var = (total_sq - count * mean.square()) / (count - 1)  # unbiased, as BN keeps it
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
    return images


class PreciseBN(L.Callback):
    """Before each test, the BN statistics from `batches` batches of the data module's training stream (augmented
    as in training), summed over the ranks. The module logs how many images they came from beside the errors."""

    def __init__(self, batches: int):
        self.batches = batches

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        data.setup("fit")  # the training set
        images = (images.to(pl_module.device) for images, _ in itertools.islice(data.train_dataloader(), self.batches))
        seen = precise_bn(pl_module, images, reduce_sum=lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
        pl_module.precise_bn_images = int(trainer.strategy.reduce(torch.tensor(float(seen), device=pl_module.device),
                                                                  reduce_op="sum"))
