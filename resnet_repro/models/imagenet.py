"""The ImageNet nets of Section 3.3 and Table 1.

A 7x7 conv with 64 filters and stride 2, a 3x3 max pool with stride 2, then stages conv2_x..conv5_x with
64, 128, 256 and 512 base filters (downsampling at conv3_1, conv4_1 and conv5_1), global average pooling
and a 1000-way fully connected layer. With option B shortcuts: 11,689,512 / 21,797,672 / 25,557,032 /
44,549,160 / 60,192,808 parameters for 18 / 34 / 50 / 101 / 152 layers.
"""

from torch import nn

from .blocks import BasicBlock, Bottleneck, ResNet

BLOCKS = {  # Table 1
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def imagenet_net(depth: int, residual: bool = True, shortcut: str = "B", num_classes: int = 1000) -> ResNet:
    if depth not in BLOCKS:
        raise ValueError(f"an ImageNet net has {', '.join(map(str, BLOCKS))} layers, not {depth}")
    block, blocks_per_stage = BLOCKS[depth]
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    return ResNet(stem, 64, block, [64, 128, 256, 512], blocks_per_stage, residual, shortcut, num_classes)
