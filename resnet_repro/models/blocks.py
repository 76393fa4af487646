"""Building blocks of the paper's plain and residual networks (He et al., 2015, Sections 3.2-3.3).

One implementation per block; `residual=False` removes the shortcut and gives the plain net.
Every conv is followed by BN before its ReLU (no conv bias: BN's shift makes it redundant); in a residual
block the last BN output is added to the shortcut and the ReLU comes after the addition.
"""

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUT_OPTIONS = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A where dimensions grow: take every `stride`-th pixel and append zero channels.

    Parameter-free. The extra channels are appended after the input's channels (the paper only says
    "extra zero entries padded"); the subsampled pixels are those a stride-2 conv centres on.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The paper's shortcut options: (A) identity, zero-padding where dimensions grow;
    (B) projection where dimensions grow, identity elsewhere; (C) projection everywhere."""
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"unknown shortcut option {option!r}: valid options are {', '.join(SHORTCUT_OPTIONS)}")
    grows = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and grows):
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    if grows:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs (Figure 5, left): the block of the CIFAR nets and of the 18/34-layer ImageNet nets."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, residual: bool, shortcut: str):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_channels, width, stride) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (Figure 5, right), for the 50/101/152-layer nets.

    The stride of a downsampling block sits in the first 1x1 conv, as in the paper (v1); torchvision
    moves it to the 3x3 ("v1.5"), which is a different network with more FLOPs.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, residual: bool, shortcut: str):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, stages of blocks (the first block of every stage but the first downsamples by stride 2),
    global average pooling, fully connected classifier. The CIFAR and ImageNet nets differ only in
    their stem, block type, widths and depths."""

    def __init__(
        self,
        stem: nn.Module,
        stem_channels: int,
        block: type[BasicBlock | Bottleneck],
        widths: list[int],
        blocks_per_stage: list[int],
        residual: bool,
        shortcut: str,
        num_classes: int,
    ):
        super().__init__()
        if shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"unknown shortcut option {shortcut!r}: valid options are {', '.join(SHORTCUT_OPTIONS)}")
        self.stem = stem
        stages, in_channels = [], stem_channels
        for stage, (width, num_blocks) in enumerate(zip(widths, blocks_per_stage)):
            blocks = []
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(in_channels, width, stride, residual, shortcut))
                in_channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, num_classes)
        self.num_layers = 2 + sum(blocks_per_stage) * (3 if block is Bottleneck else 2)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("Delving deep"): zero-mean Gaussian, std sqrt(2 / (k*k*c_in)).
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        # global average pooling as a mean: unlike AdaptiveAvgPool2d's, its backward is deterministic on CUDA
        # (trainer.deterministic refuses to run AdaptiveAvgPool2d's backward there)
        return self.fc(x.mean(dim=(2, 3)))
