"""CIFAR-10 from the standard `cifar-10-batches-py` files: 50k training images (45k/5k train/val split,
as the paper chose its schedule on), 10k test images."""

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.utils import download_and_extract_archive

from .small_images import SmallImageDataModule, checked_dataset

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"


class BatchUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles of numpy arrays and lists; any other global in a file is refused, so a
    planted file cannot run code when it is read."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}  # encode: bytes in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar_batches(folder: Path, names: list[str]) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = BatchUnpickler(f, encoding="bytes").load()
            data, batch_labels = batch[b"data"], batch[b"labels"]
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is missing: download {URL} and extract it into {folder.parent}")
        except Exception as error:  # a truncated or foreign file fails in pickle or numpy, in many ways
            raise ValueError(f"{path} is corrupt ({type(error).__name__}: {error}): delete {folder} and "
                             f"download {URL} again") from error
        data, batch_labels = checked_dataset(data, batch_labels, (3 * 32 * 32,), path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return torch.cat(images), torch.cat(labels)


class CIFAR10DataModule(SmallImageDataModule):
    """CIFAR-10 from the python batches in `<data_dir>/cifar-10-batches-py`.

    Args:
        data_dir: the folder that holds (or gets) cifar-10-batches-py
        download: download the batches there when they are missing
    """

    dataset = "CIFAR-10"

    def __init__(self, data_dir: str = "data", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.data_dir, self.download = Path(data_dir), download

    @property
    def folder(self) -> Path:
        return self.data_dir / "cifar-10-batches-py"

    def missing_data(self) -> str | None:
        """None when the batches are here; else one line saying where they go and how they come."""
        if self.folder.is_dir():
            return None
        return (f"CIFAR-10 is not in {self.folder}: " + (f"downloaded from {URL} when the first run starts" if
                self.download else f"download {URL} and extract it into {self.data_dir}, or set data.download true"))

    def prepare_data(self) -> None:
        folder = self.folder
        if folder.is_dir():
            return
        if not self.download:
            raise FileNotFoundError(self.missing_data())
        try:
            download_and_extract_archive(URL, str(self.data_dir), md5=MD5)
        except Exception as error:
            raise FileNotFoundError(f"CIFAR-10 is not in {folder} and downloading it failed ({error}): "
                                    f"download {URL} and extract it into {self.data_dir}") from error

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_data()  # setup without a trainer (a notebook, a test) still finds or fetches the data
        return (*read_cifar_batches(self.folder, TRAIN_FILES), *read_cifar_batches(self.folder, [TEST_FILE]))


def write_standin(data_dir: Path, per_batch: int = 40, test: int = 31, seed: int = 0) -> dict:
    """A tiny CIFAR-10 in the exact on-disk format of cifar-10-batches-py (pickled dicts of uint8 rows and label
    lists, five training batches and a test batch), for tests and miniatures; returns the data module's
    settings for it. Brightness depends on the class, so that a net can learn something from it."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [*((name, per_batch) for name in TRAIN_FILES), (TEST_FILE, test)]:
        labels = rng.integers(0, 10, n)
        data = np.clip(rng.normal(100 + 12 * labels[:, None], 30, (n, 3072)), 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    return {"data_dir": str(data_dir), "download": False, "val_size": 20}
