from .cifar10 import CIFAR10DataModule
from .digits import DigitsDataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagenet import ImageNetDataModule
from .small_images import SmallImageDataModule

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "FashionMNISTDataModule", "ImageNetDataModule", "SmallImageDataModule"]
