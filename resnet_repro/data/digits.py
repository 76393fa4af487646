"""scikit-learn's handwritten digits (1,797 8x8 images, shipped with scikit-learn, so it works offline):
the embedded default for demos and tests. Upsampled to 32x32x3 so the CIFAR nets run on it as on CIFAR-10, or
kept at 8x8 (or 16x16) for speed: the nets pool globally, so any size runs; a fixed 1,297/200/300
train/val/test split."""

from pathlib import Path

import torch
import torch.nn.functional as F
from typing import Literal

from jsonargparse.typing import NonNegativeInt
from sklearn.datasets import load_digits
from torch import Tensor

from .small_images import SmallImageDataModule, generator_for

TEST_SIZE = 300


class DigitsDataModule(SmallImageDataModule):
    """scikit-learn's 1,797 8x8 digits (embedded: no download) as grey RGB images; 300 are the test set.

    Args:
        val_size: training images held out for validation
        image_size: the side the 8x8 digits are resized to: 32 (CIFAR-10's), 16 or 8 (their own; 16x fewer
            pixels than 32 to compute); the augmentation's padding scales with it (4 pixels of 32)
    """

    dataset = "digits"
    test_size = TEST_SIZE

    def __init__(self, val_size: NonNegativeInt = 200, image_size: Literal[8, 16, 32] = 32, **kwargs):
        super().__init__(val_size=val_size, **kwargs)
        self.image_size = image_size
        self.pad = image_size // 8

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        digits = load_digits()
        images = torch.from_numpy(digits.images).float()[:, None] * (255 / 16)  # pixel values are 0..16
        images = F.interpolate(images, size=self.image_size, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
        images, labels = images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long()
        order = torch.randperm(len(images), generator=generator_for(self.split_seed, 1))
        test, pool = order[:TEST_SIZE], order[TEST_SIZE:]
        return images[pool], labels[pool], images[test], labels[test]


def write_standin(data_dir: Path) -> dict:
    """The digits ship with scikit-learn: nothing to write, a miniature uses them as they are."""
    return {}
