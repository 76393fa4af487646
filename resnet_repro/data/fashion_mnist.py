"""Fashion-MNIST: 60k training (55k/5k train/val) and 10k test images of 28x28 grey clothing, zero-padded to
32x32 and repeated over 3 channels, so the CIFAR nets and recipe run on it unchanged.

Read from the standard idx files, in torchvision's layout (`<data_dir>/FashionMNIST/raw`, downloaded when
missing and online) or where Debian's `dataset-fashion-mnist` package installs them.
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import FashionMNIST

from .small_images import SmallImageDataModule, checked_dataset

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def find_idx_files(folders: list[Path]) -> list[Path] | None:
    """The four idx files, plain or gzipped, from the first folder that has all of them."""
    for folder in folders:
        found = [next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None) for name in FILES]
        if all(found):
            return found
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (the MNIST format: a magic number 0x0000 0x08 ndim, ndim big-endian
    sizes, the data), plain or gzipped."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3] if len(data) > 4 else 0
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if len(data) >= 4 + 4 * ndim else ()
    if data[:3] != b"\x00\x00\x08" or not shape or len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ValueError(f"{path} is not a complete idx file of bytes: delete it and download Fashion-MNIST again")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def to_rgb32(images: Tensor) -> Tensor:
    return F.pad(images, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous()


class FashionMNISTDataModule(SmallImageDataModule):
    """Fashion-MNIST from its idx files, each 28x28 image zero-padded to 32x32 and repeated over 3 channels.

    Args:
        data_dir: the folder that holds (or gets) FashionMNIST/raw; Debian's package folder is read too
        download: download the idx files there when none are found
    """

    dataset = "Fashion-MNIST"

    def __init__(self, data_dir: str = "data", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.data_dir, self.download = Path(data_dir), download

    @property
    def folders(self) -> list[Path]:
        return [self.data_dir / "FashionMNIST" / "raw", self.data_dir, Path(DEBIAN_DIR)]

    def missing_data(self) -> str | None:
        """None when the idx files are here; else one line saying where they go and how they come."""
        if find_idx_files(self.folders):
            return None
        return (f"Fashion-MNIST is not in {self.data_dir}/FashionMNIST/raw: " + (
            "downloaded when the first run starts" if self.download else
            "run `make fashion-data` (Debian's dataset-fashion-mnist), or set data.download true"))

    def prepare_data(self) -> None:
        if find_idx_files(self.folders):
            return
        where = f"{self.data_dir}/FashionMNIST/raw (or install Debian's dataset-fashion-mnist)"
        if not self.download:
            raise FileNotFoundError(f"Fashion-MNIST is not in {where}; or set data.download true")
        try:
            FashionMNIST(str(self.data_dir), download=True)
        except Exception as error:
            raise FileNotFoundError(f"Fashion-MNIST is not in {where} and downloading it failed ({error})") from error

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_data()  # setup without a trainer still finds or fetches the data
        train_x, train_y, test_x, test_y = find_idx_files(self.folders)
        train_images, train_labels = checked_dataset(read_idx(train_x), read_idx(train_y), (28, 28), train_x, train_y)
        test_images, test_labels = checked_dataset(read_idx(test_x), read_idx(test_y), (28, 28), test_x, test_y)
        return to_rgb32(train_images), train_labels, to_rgb32(test_images), test_labels


def write_standin(data_dir: Path, train: int = 240, test: int = 60, seed: int = 0) -> dict:
    """A tiny Fashion-MNIST in torchvision's layout (`FashionMNIST/raw/*-idx?-ubyte.gz`, the idx format: magic
    number, big-endian sizes, bytes); returns the data module's settings for it."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for prefix, n in [("train", train), ("t10k", test)]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(rng.normal(60 + 15 * labels[:, None, None], 40, (n, 28, 28)), 0, 255).astype(np.uint8)
        for kind, array in [("images-idx3", images), ("labels-idx1", labels)]:
            header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
    return {"data_dir": str(data_dir), "download": False, "val_size": 40}
