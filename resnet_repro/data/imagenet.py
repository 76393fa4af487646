"""ImageNet (ILSVRC-2012) from an ImageFolder layout: `<data_dir>/{train,val}/<class>/<image>`.

The paper (Section 3.4) trains on the shorter side resized to a random size in [256, 480], a random
224x224 crop or its horizontal flip, the per-pixel mean subtracted and AlexNet's PCA colour augmentation.
It reports 10-crop testing for comparisons (Tables 2, 3) and fully-convolutional testing at the scales
{224, 256, 384, 480, 640}, scores averaged, for its best results (Table 4). The validation set is the test
set, as in the paper.

Choices made here, where the paper is silent:
- the "per-pixel mean" is the standard per-channel mean of the ImageNet training set (see MEAN);
- images are scaled to [0, 1] before the colour noise and nothing is divided by a standard deviation;
- center and 10-crop test views are cut from the image with its shorter side resized to 256 (the paper
  does not say; the common AlexNet/VGG/fb.resnet.torch practice);
- the 10 crops are the four corners and the centre of the central 256x256 square, and their horizontal
  flips: AlexNet's (the paper's [21]), which crops a 256x256 image; `ten_crop_of: whole_image` takes the
  corners of the whole 256 x W image instead, fb.resnet.torch's convention (its published errors);
- the multi-scale test feeds the whole resized image (no crop), one image at a time per rank.
"""

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .small_images import first_step, generator_for, seed_of

# A mean image is ill-defined under crops of random size and position, so the mean is per channel, as in
# every common ImageNet pipeline (these are the usual RGB values on the [0, 1] scale).
MEAN = (0.485, 0.456, 0.406)
# The eigen-decomposition of the RGB covariance of ImageNet's training pixels (AlexNet's colour
# augmentation), in the values fb.resnet.torch uses; the eigenvectors are the columns.
EIGENVALUES = (0.2175, 0.0188, 0.0045)
EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                (-0.5808, -0.0045, -0.8140),
                (-0.5836, -0.6948, 0.4203))


class PCALighting(v2.Transform):
    """AlexNet's colour augmentation: add eigenvectors @ (alpha * eigenvalues) to every pixel of a float
    RGB image, with alpha ~ N(0, alpha_std^2) drawn once per image."""

    _transformed_types = (torch.Tensor,)

    def __init__(self, alpha_std: float = 0.1):
        super().__init__()
        self.alpha_std = alpha_std
        self.register_buffer("eigenvalues", torch.tensor(EIGENVALUES))
        self.register_buffer("eigenvectors", torch.tensor(EIGENVECTORS))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # the global generator, which SeededImages seeds for each image from the seed and the step
        return {"alpha": torch.randn(3) * self.alpha_std}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        rgb = self.eigenvectors @ (params["alpha"] * self.eigenvalues)
        return inpt + rgb[:, None, None].to(inpt.dtype)


class MultiScale(torch.nn.Module):
    """The whole image at each scale (shorter side = scale, no crop): a list of images."""

    def __init__(self, scales: tuple[int, ...]):
        super().__init__()
        self.scales = scales

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [F.resize(image, [scale]) for scale in self.scales]


def to_normalized_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, std=(1.0, 1.0, 1.0))]


PAPER_CROP = 224  # the paper's crop; every other size of the pipeline is given for it


def scaled(size: int, crop_size: int) -> int:
    """A size of the paper's pipeline (for 224 crops) for crops of `crop_size`: small images for a miniature."""
    return round(size * crop_size / PAPER_CROP)


def train_transform(crop_size: int = PAPER_CROP) -> v2.Compose:
    # geometry on uint8 images (cheaper), then floats; torch.randint's upper bound is exclusive, hence 481
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResize(scaled(256, crop_size), scaled(480, crop_size) + 1),
        v2.RandomCrop(crop_size),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        PCALighting(alpha_std=0.1),
        v2.Normalize(MEAN, std=(1.0, 1.0, 1.0)),
    ])


def eval_transform(mode: str, scales: tuple[int, ...], crop_size: int = PAPER_CROP,
                   ten_crop_of: str = "central_square") -> v2.Compose:
    side = scaled(256, crop_size)
    resize = v2.Resize(side)
    if mode == "center":
        return v2.Compose([v2.ToImage(), resize, v2.CenterCrop(crop_size), *to_normalized_float()])
    if mode == "ten_crop":  # 10 x 3 x 224 x 224 per image
        square = [v2.CenterCrop(side)] if ten_crop_of == "central_square" else []
        return v2.Compose([v2.ToImage(), resize, *square, v2.TenCrop(crop_size), *to_normalized_float(),
                           torch.stack])
    if mode == "multi_scale":  # one 3 x H_s x W_s image per scale
        return v2.Compose([v2.ToImage(), MultiScale(tuple(scaled(s, crop_size) for s in scales)),
                           *to_normalized_float()])
    raise ValueError(f"eval_mode {mode!r} is not one of center, ten_crop, multi_scale")


class TrainStream(Sampler[tuple[int, int]]):
    """One rank's part of the endless training stream, from the trainer's step on: epoch e is a permutation of
    the n training images seeded by (seed, e), global batch k its k-th slice of batch_size images (an incomplete
    last slice dropped), and rank r takes the r-th of its W equal parts. Each image comes with the seed of its
    augmentation, a function of (seed, step, place in the global batch): a run resumed at step k sees exactly
    the images, crops, flips and colours an uninterrupted run would, whatever the world size (Lightning would
    restart a plain loader at the start of its epoch, and workers draw from generators seeded at their start)."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int, first_step):
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.first_step = first_step  # a callable: the trainer's global step when iteration starts (resume)
        self.batches_per_epoch = n // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}")

    def __iter__(self):
        per_rank, step, epoch = self.batch_size // self.world_size, self.first_step(), None
        while True:
            if step // self.batches_per_epoch != epoch:
                epoch = step // self.batches_per_epoch
                order = torch.randperm(self.n, generator=generator_for(self.seed, 0, epoch)).tolist()
            start = (step % self.batches_per_epoch) * self.batch_size + self.rank * per_rank
            for place in range(start, start + per_rank):
                yield order[place], seed_of(self.seed, 1, step, place)
            step += 1


class SeededImages(Dataset):
    """An image folder whose item (index, seed) is image `index`, transformed with the CPU generator seeded by
    `seed` (torchvision's random transforms draw from torch's global generator; its state is kept as it was)."""

    def __init__(self, images: ImageFolder):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.images[index]


class EvalSampler(Sampler[int]):
    """Images rank, rank + W, rank + 2W, ... of n: every image exactly once over the W ranks, with no
    padding (torch's DistributedSampler repeats images to even out the ranks, which would bias the error)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = range(rank, n, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def read_image(path: str):
    """An image file as RGB; one that cannot be decoded (truncated, not an image) fails naming the file."""
    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for a broken file
        raise ValueError(f"{path} is not a readable image ({type(error).__name__}: {error}): replace it with a "
                         f"good copy or delete it") from error


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet with the paper's training augmentation and one of its three tests (`eval_mode`).

    Batch sizes are global: each of the W ranks takes batch_size // W training images. Run the trainer
    with `use_distributed_sampler=False`: the samplers here already split the data over the ranks.
    `crop_size` other than the paper's 224 scales every size of the pipeline with it (a miniature's images).

    Args:
        data_dir: an ImageFolder layout: data_dir/train/<class>/*.JPEG and data_dir/val/<class>/*.JPEG
        batch_size: training images per iteration, over all ranks together (the paper's 256)
        eval_batch_size: images (before the 10-crop or the scales) per evaluation batch, over all ranks
        num_workers: DataLoader worker processes per rank
        eval_mode: the test: center (one 224 crop), ten_crop (the paper's Table 3/4 test) or multi_scale
            (fully convolutional, averaged over `scales`, Table 4/5)
        scales: the shorter sides of the multi-scale test
        ten_crop_of: where the 10 crops' corners lie: central_square (the central 256 x 256 square, AlexNet's
            10-crop, which the paper cites) or whole_image (the whole 256 x W image, fb.resnet.torch's)
        crop_size: the training and test crop (the paper's 224)
        seed: the seed of the training order and augmentation
    """

    dataset = "ImageNet"
    test_size = 50_000  # the validation set, which is the test set
    val_splits = ["val"]  # the validation set is the test set; no separate split is held out
    # each test protocol, with what one image costs in it in 224x224 crops: the multi-scale test feeds the whole image
    # (about 4:3) at shorter sides 224 ... 640, 4/3 x (224^2 + 256^2 + 384^2 + 480^2 + 640^2) / 224^2 ~ 24 crops
    protocol_views = {"center": 1, "ten_crop": 10, "multi_scale": 24}
    protocols = tuple(protocol_views)

    def __init__(self, data_dir: str, batch_size: PositiveInt = 256, eval_batch_size: PositiveInt = 64,
                 num_workers: NonNegativeInt = 8,
                 eval_mode: Literal["center", "ten_crop", "multi_scale"] = "ten_crop",
                 scales: tuple[int, ...] = (224, 256, 384, 480, 640),
                 ten_crop_of: Literal["central_square", "whole_image"] = "central_square",
                 crop_size: PositiveInt = PAPER_CROP, seed: int = 0):
        super().__init__()
        self.crop_size = crop_size
        self.data_dir, self.batch_size, self.eval_batch_size = data_dir, batch_size, eval_batch_size
        self.num_workers, self.eval_mode, self.scales, self.seed = num_workers, eval_mode, tuple(scales), seed
        self.ten_crop_of = ten_crop_of
        self.train_set: ImageFolder | None = None
        self.val_set: ImageFolder | None = None

    @property
    def rank_and_world_size(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    @property
    def eval_protocol(self) -> str:
        return self.eval_mode

    def use_protocol(self, protocol: str) -> None:
        """Evaluate under another of the paper's test protocols from now on (the next setup builds its images)."""
        if protocol not in self.protocols:
            raise ValueError(f"ImageNet is tested by {', '.join(self.protocols)}, not {protocol!r}")
        if protocol != self.eval_mode:
            self.eval_mode, self.val_set = protocol, None

    def missing_data(self) -> str | None:
        """None when both folders are here; else one line saying where they go and how to get them."""
        folder = next((Path(self.data_dir) / split for split in ("train", "val")
                       if not (Path(self.data_dir) / split).is_dir()), None)
        if folder is None:
            return None
        return (f"{folder} is missing: ImageNet must be laid out as <data_dir>/{{train,val}}/<class>/<image> "
                f"(data_dir={self.data_dir}); it cannot be downloaded automatically: get ILSVRC-2012 from "
                f"image-net.org, with val sorted into class folders")

    def image_folder(self, split: str, transform: v2.Compose) -> ImageFolder:
        folder = Path(self.data_dir) / split
        if not folder.is_dir():
            raise FileNotFoundError(self.missing_data())
        return ImageFolder(str(folder), transform=transform, loader=read_image)

    @classmethod
    def validation_images(cls, init_args: dict) -> int:
        """The images evaluated at each validation during fit (its centre crops)."""
        return cls.test_size

    def setup(self, stage: str) -> None:
        self.rank, self.world_size = self.rank_and_world_size
        if stage == "fit" and self.batch_size % self.world_size:
            raise ValueError(f"batch_size {self.batch_size} is global and must divide by the {self.world_size} ranks")
        if self.val_set is None:
            views = eval_transform(self.eval_mode, self.scales, self.crop_size, self.ten_crop_of)
            self.val_set = self.image_folder("val", views)
        if stage == "fit" and self.train_set is None:
            self.train_set = self.image_folder("train", train_transform(self.crop_size))
            if self.train_set.classes != self.val_set.classes:  # labels are folder indices: they must agree
                raise ValueError(f"{self.data_dir}/train and {self.data_dir}/val hold different class folders, "
                                 f"so their labels would not match")

    def loader(self, dataset: Dataset, batch_size: int, sampler: Sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=True)

    def train_dataloader(self) -> DataLoader:
        stream = TrainStream(len(self.train_set), self.batch_size, self.rank, self.world_size, self.seed,
                             first_step=lambda: first_step(self.trainer))
        return self.loader(SeededImages(self.train_set), self.batch_size // self.world_size, stream)

    def eval_dataloader(self) -> DataLoader:
        sampler = EvalSampler(len(self.val_set), self.rank, self.world_size)
        # the error does not depend on the evaluation batch size (BN is in eval mode), so a remainder is harmless;
        # multi-scale images differ in size from image to image, so they cannot be batched
        batch_size = 1 if self.eval_mode == "multi_scale" else max(1, self.eval_batch_size // self.world_size)
        return self.loader(self.val_set, batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader()


def write_standin(folder: Path, classes: int = 5, train_per_class: int = 8, val_per_class: int = 3) -> dict:
    """A small ImageNet stand-in in the real on-disk layout (`train/` and `val/` folders of class folders of
    JPEGs, WordNet-style folder names, images of various sizes and aspect ratios); returns the data
    module's settings for it, at 32-pixel crops so that a miniature of an ImageNet experiment runs on a CPU."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in [("train", train_per_class), ("val", val_per_class)]:
        for label in range(classes):
            class_dir = Path(folder) / split / f"n{label:08d}"
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = 40 + 8 * (i % 3), 40 + 8 * ((i + 1) % 3)
                # a class-dependent colour plus noise, so that a net can learn a little in a few iterations
                pixels = (torch.rand(height, width, 3, generator=generator) * 80 + 40 * label).clamp(0, 255)
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(class_dir / f"{split}_{label}_{i}.JPEG")
    return {"data_dir": str(folder), "num_workers": 0, "crop_size": 32}
