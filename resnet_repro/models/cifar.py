"""The CIFAR-10 nets of Section 4.2: 6n+2 weighted layers.

A 3x3 conv with 16 filters, then three stages of n blocks (2n 3x3 convs) on 32x32, 16x16 and 8x8 maps
with 16, 32 and 64 filters, downsampling by stride 2 at the first conv of stages 2 and 3, global average
pooling and a fully connected layer. Residual nets use option A (parameter-free) shortcuts, so a plain
net and its residual twin have exactly the same parameters: 269,722 / 464,154 / 658,586 / 853,018 /
1,727,962 / 19,421,274 for 20 / 32 / 44 / 56 / 110 / 1202 layers (Table 6).
"""

from torch import nn

from .blocks import BasicBlock, ResNet, conv3x3

PAPER_N = (3, 5, 7, 9, 18, 200)  # 20, 32, 44, 56, 110, 1202 layers


def cifar_net(depth: int, residual: bool = True, shortcut: str = "A", num_classes: int = 10) -> ResNet:
    if depth < 8 or (depth - 2) % 6:
        valid = ", ".join(str(6 * n + 2) for n in range(1, 6))
        raise ValueError(f"a CIFAR net has 6n+2 layers for n >= 1 ({valid}, ...), not {depth}")
    n = (depth - 2) // 6
    stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    return ResNet(stem, 16, BasicBlock, [16, 32, 64], [n, n, n], residual, shortcut, num_classes)
