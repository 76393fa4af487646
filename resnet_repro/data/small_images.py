"""Small-image datasets (CIFAR-10, Fashion-MNIST, digits) held on the training device as uint8 tensors.

The paper's CIFAR-10 pipeline (Section 4.2): subtract the per-pixel mean image of the training set, pad
4 pixels on each side, take a random 32x32 crop and flip it horizontally at random; test on the single
original view. Here every step of it is one batched tensor operation on the device, and each training
batch is a pure function of (seed, step): a run resumed at step k sees exactly the batches an
uninterrupted run would, on any number of ranks.
"""

import inspect
import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import Tensor


def seed_of(*key: int) -> int:
    """A seed from a tuple of integers (seed, purpose, step, ...), without collisions."""
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def generator_for(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (seed, purpose, step, ...)."""
    return torch.Generator().manual_seed(seed_of(*key))


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor copied to `device` without a host sync: a blocking copy to a GPU waits for all the work
    queued on it (once per step, that stalls training); an asynchronous copy from pinned memory does not."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pad_crop_flip(images: Tensor, generator: torch.Generator, pad: int) -> Tensor:
    """Pad by `pad` zeros on each side, crop back to the original size at a random offset, flip half of
    the images horizontally: one gather for the whole batch. The random draws come from a CPU generator, so
    a batch is the same on every kind of device."""
    n, c, h, w = images.shape
    device = images.device
    offsets = to_device(torch.randint(0, 2 * pad + 1, (2, n), generator=generator), device)
    flips = to_device(torch.rand(n, generator=generator) < 0.5, device)
    rows = offsets[0, :, None] + torch.arange(h, device=device)
    cols = offsets[1, :, None] + torch.arange(w, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # reading the columns backwards flips the image
    padded = F.pad(images, (pad, pad, pad, pad))
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def first_step(trainer) -> int:
    """Where a training stream starts: during fit, at the trainer's step (a resumed run goes on where it
    stopped); anywhere else (precise BN before a test), at step 0, so that fit and test see the same batches."""
    return trainer.global_step if trainer and trainer.state.fn == "fit" else 0


class TrainBatches:
    """The endless stream of augmented training batches of one rank, starting at the trainer's step.

    Each epoch is a permutation of the training set seeded by (seed, epoch); global batch k is the k-th
    slice of batch_size images of it (an incomplete last slice is dropped), and rank r takes the r-th
    of its W equal parts, so the ranks see disjoint parts of every global batch.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, batch_size: int, rank: int, world_size: int,
                 seed: int, first_step, pad: int):
        self.images, self.labels, self.mean, self.pad = images, labels, mean, pad
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.first_step = first_step  # a callable: the trainer's global step when iteration starts (resume)
        self.batches_per_epoch = len(images) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {len(images)} images, fewer than one batch of {batch_size}")
        self._epoch, self._order = -1, None

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            order = torch.randperm(len(self.images), generator=generator_for(self.seed, 0, epoch))
            self._epoch, self._order = epoch, to_device(order, self.images.device)
        per_rank = self.batch_size // self.world_size
        start = i * self.batch_size + self.rank * per_rank
        index = self._order[start:start + per_rank]
        images = normalize(self.images[index], self.mean)
        return pad_crop_flip(images, generator_for(self.seed, 1, step, self.rank), self.pad), self.labels[index]

    def __iter__(self):
        step = self.first_step()
        while True:
            yield self.batch(step)
            step += 1


class EvalBatches:
    """One rank's share of an evaluation set: images rank, rank + W, rank + 2W, ... (no padding, so every
    image is counted exactly once whatever the world size)."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, batch_size: int, rank: int, world_size: int):
        self.index = torch.arange(rank, len(images), world_size, device=images.device)
        self.images, self.labels, self.mean, self.batch_size = images, labels, mean, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __iter__(self):
        for index in self.index.split(self.batch_size):
            yield normalize(self.images[index], self.mean), self.labels[index]


NUM_CLASSES = 10  # CIFAR-10, Fashion-MNIST and digits alike


def checked_dataset(images, labels, image_shape: tuple[int, ...], path, labels_path=None) -> tuple[Tensor, Tensor]:
    """Images and labels as read from a dataset's files, as (uint8 images, int64 labels); refused in one line
    naming the file unless the pixels are bytes (or integers 0..255), each image has `image_shape`, and every
    image has exactly one label, a class index. Numpy would otherwise cast without a word: NaN to 0, 300 to 44."""
    def refuse(where, what: str) -> None:
        raise ValueError(f"{where} {what}: the file is corrupt or of another dataset; delete it and download the "
                         f"dataset again")

    try:
        images, labels = np.asarray(images), np.asarray(labels)
    except ValueError as error:  # ragged lists
        refuse(path, f"does not hold arrays of images and labels ({error})")
    if images.dtype != np.uint8 and (images.dtype.kind not in "iu" or images.size
                                     and not 0 <= images.min() <= images.max() <= 255):
        shown = f"from {images.min()} to {images.max()}" if images.dtype.kind in "iuf" and images.size else ""
        refuse(path, f"holds pixels of type {images.dtype} {shown}, not bytes 0..255")
    if images.shape[1:] != tuple(image_shape):
        refuse(path, f"holds images of shape {images.shape[1:]}, not {tuple(image_shape)}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        refuse(labels_path or path, f"holds labels of type {labels.dtype} and shape {labels.shape}, not one class "
                                    f"index per image")
    if len(labels) != len(images):
        refuse(f"{path}" + (f" and {labels_path}" if labels_path else ""),
               f"hold {len(images)} images and {len(labels)} labels: every image has exactly one label")
    if len(labels) and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
        refuse(labels_path or path, f"holds labels from {labels.min()} to {labels.max()}, outside 0..{NUM_CLASSES - 1}")
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))


def normalize(images: Tensor, mean: Tensor) -> Tensor:
    """uint8 images to floats in [0, 1] less the per-pixel mean image of the training set."""
    return images.float().div_(255).sub_(mean)


class SmallImageDataModule(L.LightningDataModule):
    """A dataset of small 3 x H x W uint8 images (32 x 32 but for the digits at their own size) split into
    train/val/test, resident on the training device.

    `load_arrays` (per dataset) returns the training pool and the test set; the validation set is a fixed
    part of the training pool, chosen by `split_seed` alone so that every rank and every run agree.
    With `train_on_all` the whole pool is trained on and there is no validation set. During `fit` the
    test set is evaluated beside the validation set at every validation (the paper's Figure 6 plots test
    error during training; the recipe's schedule is fixed in iterations, so nothing is selected on it).

    Args:
        batch_size: training images per iteration, over all ranks together (the paper's 128)
        eval_batch_size: images per evaluation batch, over all ranks (no effect on the result)
        val_size: training images held out for validation (the paper's 45k/5k split: 5000)
        train_on_all: train on the whole training set, with no validation set
        seed: the training stream's seed: each batch's images, crops and flips are a function of (seed, step)
    """

    dataset = ""  # the data set's name as a run records it and the report shows it: "CIFAR-10", "Fashion-MNIST"
    test_size = 10_000  # images in the test set (CIFAR-10's and Fashion-MNIST's)
    split_seed = 0
    pad = 4  # the paper's padding of 32 x 32 images before the random crop
    eval_protocol = "single_view"  # the paper's CIFAR-10 test: each original test image, once
    protocol_views = {"single_view": 1}  # each test protocol, with what one image costs in it (images of the net's size)
    protocols = tuple(protocol_views)

    def __init__(self, batch_size: PositiveInt = 128, eval_batch_size: PositiveInt = 1000, val_size: NonNegativeInt = 5000,
                 train_on_all: bool = False, seed: int = 0):
        super().__init__()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.train_on_all, self.seed = val_size, train_on_all, seed
        self.splits: dict[str, tuple[Tensor, Tensor]] | None = None

    @classmethod
    def validation_images(cls, init_args: dict) -> int:
        """The images evaluated at each validation during fit, from the module's settings (nothing is read)."""
        settings = {}  # the defaults of the data module's own __init__ over its bases' (the digits hold out 200)
        for klass in reversed(cls.__mro__):
            if "__init__" in vars(klass) and klass is not object:
                settings.update({name: p.default for name, p in inspect.signature(klass.__init__).parameters.items()
                                 if p.default is not inspect.Parameter.empty})
        settings.update(init_args)
        return cls.test_size + (0 if settings["train_on_all"] else settings["val_size"])

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train images N x 3 x H x W uint8, train labels int64, test images, test labels)."""
        raise NotImplementedError

    def missing_data(self) -> str | None:
        """None when the data set is on this machine (the digits always are); else one line saying where it goes
        and how it comes, which `run` prints (a dry run) or refuses with (data that is not downloaded)."""
        return None

    def use_protocol(self, protocol: str) -> None:
        if protocol not in self.protocols:
            raise ValueError(f"{type(self).__name__} is tested by {', '.join(self.protocols)}, not {protocol!r}")

    @property
    def rank_and_world_size(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def setup(self, stage: str) -> None:
        if self.splits is not None:
            return
        _, world_size = self.rank_and_world_size
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} is global and must divide by the {world_size} ranks")
        pool_images, pool_labels, test_images, test_labels = self.load_arrays()
        if not self.train_on_all and not 0 <= self.val_size < len(pool_images):
            raise ValueError(f"val_size {self.val_size} must be below the {len(pool_images)} training images")
        order = torch.randperm(len(pool_images), generator=generator_for(self.split_seed))
        train, val = (order, order[:0]) if self.train_on_all else (order[self.val_size:], order[:self.val_size])
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.mean = (pool_images[train].sum(0, dtype=torch.float64) / (255 * len(train))).float().to(device)
        self.splits = {
            name: (images.to(device), labels.to(device))
            for name, images, labels in [("train", pool_images[train], pool_labels[train]),
                                         ("val", pool_images[val], pool_labels[val]),
                                         ("test", test_images, test_labels)]
        }

    def _eval_batches(self, split: str) -> EvalBatches:
        rank, world_size = self.rank_and_world_size
        return EvalBatches(*self.splits[split], self.mean, max(1, self.eval_batch_size // world_size), rank, world_size)

    def train_dataloader(self) -> TrainBatches:
        rank, world_size = self.rank_and_world_size
        return TrainBatches(*self.splits["train"], self.mean, self.batch_size, rank, world_size, self.seed,
                            first_step=lambda: first_step(self.trainer), pad=self.pad)

    @property
    def val_splits(self) -> list[str]:
        """The splits evaluated at each validation during fit, in dataloader order (the metrics' prefixes)."""
        return ["test"] if self.train_on_all else ["val", "test"]

    def val_dataloader(self) -> list[EvalBatches]:
        return [self._eval_batches(split) for split in self.val_splits]

    def test_dataloader(self) -> EvalBatches:
        return self._eval_batches("test")
