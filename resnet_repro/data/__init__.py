"""The data modules of the project, and the one way a config's `data.class_path` becomes one of them."""

from typing import Callable

import lightning as L

from . import cifar10, cifar10_images, digits, fashion_mnist, imagenet
from .cifar10 import CIFAR10DataModule
from .cifar10_images import CIFAR10ImagesDataModule
from .digits import DigitsDataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagenet import ImageNetDataModule
from .small_images import SmallImageDataModule

__all__ = ["CIFAR10DataModule", "CIFAR10ImagesDataModule", "DigitsDataModule", "FashionMNISTDataModule", "ImageNetDataModule", "SmallImageDataModule",
           "check_protocols", "data_module_class", "image_side", "standin_writer"]

# Each data set's writer of small stand-in data in its real on-disk format (the miniatures and the tests read it
# through the data module's own reader), by data module
STANDIN_WRITERS: dict[type, Callable] = {
    CIFAR10DataModule: cifar10.write_standin,
    CIFAR10ImagesDataModule: cifar10_images.write_standin,
    DigitsDataModule: digits.write_standin,
    FashionMNISTDataModule: fashion_mnist.write_standin,
    ImageNetDataModule: imagenet.write_standin,
}
DATA_MODULES = {module.__name__: module for module in STANDIN_WRITERS}


def data_module_class(class_path: str) -> type[L.LightningDataModule]:
    """The data module a config's `data.class_path` names: one of this package's, by its public path
    (resnet_repro.data.CIFAR10DataModule) or its module's. Nothing else is imported: a config may come from
    elsewhere (a run directory), and must not name code to run."""
    module_name, _, class_name = str(class_path).rpartition(".")
    if not module_name.startswith(__name__) or class_name not in DATA_MODULES:
        raise ValueError(f"data.class_path {class_path!r} is not one of resnet-repro's data modules: use one of "
                         + ", ".join(f"{__name__}.{name}" for name in DATA_MODULES))
    return DATA_MODULES[class_name]


def check_protocols(data: type[L.LightningDataModule], protocols: list[str]) -> None:
    """Every test protocol named is one the data module evaluates under; else one line naming them."""
    unknown = [protocol for protocol in protocols if protocol not in data.protocols]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} is not a test protocol of {data.__name__}, whose protocols are "
                         f"{', '.join(data.protocols)}")


def standin_writer(data: type[L.LightningDataModule]) -> Callable:
    return STANDIN_WRITERS[data]


def image_side(setting: Callable[[str], object], default: int) -> int:
    """The side of the images a data module feeds the net, from its settings (`setting(name)`, None when unset):
    the digits' `image_size`, ImageNet's `crop_size`, else `default`, the side the net was designed for."""
    return setting("image_size") or setting("crop_size") or default
