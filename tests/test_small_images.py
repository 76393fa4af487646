import gzip
import struct

import numpy as np
import pytest
import torch

from helpers import write_cifar10
from resnet_repro.data import CIFAR10DataModule, DigitsDataModule, FashionMNISTDataModule
from resnet_repro.data.small_images import EvalBatches, TrainBatches, generator_for, pad_crop_flip


def test_pad_crop_flip_takes_a_window_of_the_zero_padded_image_possibly_mirrored():
    images = torch.arange(1, 1 + 6 * 2 * 5 * 5, dtype=torch.float32).reshape(6, 2, 5, 5)
    out = pad_crop_flip(images, generator_for(0), pad=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for image, source in zip(out, padded):
        windows = [w for y in range(5) for x in range(5) for w in (source[:, y:y + 5, x:x + 5],)]
        assert any(torch.equal(image, w) or torch.equal(image, w.flip(2)) for w in windows)
    # across many draws every offset and both flips occur
    big = pad_crop_flip(torch.ones(2000, 1, 4, 4), generator_for(1), pad=4)
    assert (big.sum((1, 2, 3)) == 16).any() and (big.sum((1, 2, 3)) == 1).any()


def labelled(n: int):
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    return images, torch.arange(n), torch.zeros(3, 4, 4)


def test_ranks_get_disjoint_parts_of_every_global_batch_and_batches_depend_only_on_the_step():
    images, ids, mean = labelled(100)
    whole = TrainBatches(images, ids, mean, 16, 0, 1, seed=3, first_step=lambda: 0, pad=4)
    ranks = [TrainBatches(images, ids, mean, 16, r, 2, seed=3, first_step=lambda: 0, pad=4) for r in range(2)]
    for step in [0, 5, 6, 13]:  # 6 batches per epoch: 6 and 13 are in later epochs
        halves = [rank.batch(step)[1] for rank in ranks]
        assert not set(halves[0].tolist()) & set(halves[1].tolist())
        assert torch.equal(torch.cat(halves), whole.batch(step)[1])
    fresh = TrainBatches(images, ids, mean, 16, 0, 1, seed=3, first_step=lambda: 13, pad=4)
    x, y = next(iter(fresh))
    assert torch.equal(y, whole.batch(13)[1]) and torch.equal(x, whole.batch(13)[0])
    epoch = torch.cat([whole.batch(s)[1] for s in range(6)])
    assert len(set(epoch.tolist())) == 96  # a permutation, the incomplete last batch dropped


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_counts_every_image_exactly_once(world_size):
    images, ids, mean = labelled(31)
    seen = [y for rank in range(world_size) for _, y in EvalBatches(images, ids, mean, 4, rank, world_size)]
    assert sorted(torch.cat(seen).tolist()) == list(range(31))


def test_cifar10_reads_the_on_disk_format_and_splits_with_its_own_seed(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=40, test=31)
    data = CIFAR10DataModule(str(tmp_path), download=False, val_size=20, batch_size=16)
    data.setup("fit")
    assert [len(data.splits[s][0]) for s in ("train", "val", "test")] == [180, 20, 31]
    import pickle
    raw = pickle.load(open(folder / "test_batch", "rb"), encoding="bytes")
    assert torch.equal(data.splits["test"][0][3], torch.from_numpy(raw[b"data"][3].reshape(3, 32, 32)))
    other = CIFAR10DataModule(str(tmp_path), download=False, val_size=20, seed=7)
    other.setup("fit")
    assert torch.equal(other.splits["val"][1], data.splits["val"][1])  # the split ignores the run's seed
    train = data.splits["train"][0].double() / 255
    assert torch.allclose(data.mean.double(), train.mean(0), atol=1e-6)  # per-pixel mean image


def test_cifar10_train_on_all_evaluates_the_test_set_only(tmp_path):
    write_cifar10(tmp_path)
    data = CIFAR10DataModule(str(tmp_path), download=False, train_on_all=True)
    data.setup("fit")
    assert len(data.splits["train"][0]) == 200 and data.val_splits == ["test"]


def test_cifar10_missing_and_corrupt_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 is not in .*cifar-10-batches-py: download"):
        CIFAR10DataModule(str(tmp_path), download=False).setup("fit")
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:5000])
    with pytest.raises(ValueError, match="data_batch_3 is corrupt"):
        CIFAR10DataModule(str(tmp_path), download=False).setup("fit")


def write_idx(path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_gzipped_idx_files_and_pads_to_32x32(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    train, test = rng.integers(1, 256, (50, 28, 28)), rng.integers(1, 256, (12, 28, 28))
    write_idx(raw / "train-images-idx3-ubyte.gz", train)
    write_idx(raw / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 50))
    write_idx(raw / "t10k-images-idx3-ubyte.gz", test)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 12))
    data = FashionMNISTDataModule(str(tmp_path), download=False, val_size=10)
    data.setup("fit")
    images = data.splits["test"][0]
    assert images.shape == (12, 3, 32, 32)
    assert torch.equal(images[5, 2, 2:30, 2:30], torch.from_numpy(test[5]).to(torch.uint8))
    assert images[:, :, :2].sum() == 0 and images[:, :, :, 30:].sum() == 0
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 7))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is not a complete idx file"):
        FashionMNISTDataModule(str(tmp_path), download=False).setup("fit")


def test_digits_is_a_fixed_32x32_split():
    a, b = DigitsDataModule(), DigitsDataModule(seed=5)
    a.setup("fit"), b.setup("fit")
    assert [len(a.splits[s][0]) for s in ("train", "val", "test")] == [1297, 200, 300]
    assert a.splits["train"][0].shape[1:] == (3, 32, 32) and a.splits["train"][0].dtype == torch.uint8
    assert torch.equal(a.splits["test"][1], b.splits["test"][1])
