"""ImageNetDataModule on a tiny ImageFolder of generated JPEGs: transforms, batch shapes, rank splits, errors."""

from itertools import islice
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from resnet_repro.data.imagenet import (EIGENVALUES, EIGENVECTORS, MEAN, EvalSampler, ImageNetDataModule,
                                        PCALighting, SeededImages, TrainStream, train_transform)

pytestmark = pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # CPU-only tests

SIZES = [(400, 300), (260, 500), (333, 333)]  # (width, height): landscape, portrait, square
COLOURS = [(255, 255, 255), (200, 100, 50), (0, 0, 0)]  # one constant colour per class
TRAIN_PER_CLASS, VAL_PER_CLASS = [3, 3, 3], [3, 2, 2]  # 9 training images, 7 (odd) validation images
# |eigenvectors @ (alpha * eigenvalues)| per channel for |alpha| <= 5 sigma = 0.5, plus JPEG rounding
LIGHTING_BOUND = 0.5 * (torch.tensor(EIGENVECTORS).abs() @ torch.tensor(EIGENVALUES)) + 3 / 255


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for split, counts in [("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)]:
        for label, (colour, count) in enumerate(zip(COLOURS, counts)):
            folder = root / split / f"n0000000{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", SIZES[i % len(SIZES)], colour).save(folder / f"{i}.JPEG", quality=95)
    return str(root)


def make(data_dir, stage="fit", rank=0, world_size=1, **kwargs) -> ImageNetDataModule:
    dm = ImageNetDataModule(data_dir, num_workers=0, **{"batch_size": 4, "eval_batch_size": 4, **kwargs})
    if world_size > 1:
        # all that setup and the training stream read
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, global_step=0,
                                     state=SimpleNamespace(fn="fit"))
    dm.setup(stage)
    return dm


def test_training_batches_are_mean_subtracted_224_crops(data_dir):
    torch.manual_seed(0)
    loader = make(data_dir).train_dataloader()
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32 and labels.dtype == torch.int64
    expected = torch.tensor(COLOURS, dtype=torch.float32)[labels] / 255 - torch.tensor(MEAN)
    offset = images.mean((2, 3)) - expected  # the lighting noise: the same for every pixel of an image
    assert (images.std((2, 3)) < 0.01).all()
    assert (offset.abs() <= LIGHTING_BOUND).all()
    assert offset.abs().max() > 3 / 255  # some noise was added


def test_scale_augmentation_draws_shorter_sides_256_to_480():
    resize = next(t for t in train_transform().transforms if isinstance(t, v2.RandomResize))
    torch.manual_seed(0)
    sizes = [resize.make_params([])["size"][0] for _ in range(3000)]
    assert min(sizes) == 256 and max(sizes) == 480
    image = v2.functional.to_image(Image.new("RGB", (400, 300)))
    for _ in range(5):
        h, w = resize(image).shape[1:]
        assert 256 <= h <= 480 and abs(w / h - 4 / 3) < 0.01


def test_pca_lighting_adds_one_colour_along_the_eigenvectors():
    image = torch.rand(3, 8, 8)
    torch.manual_seed(1)
    out = PCALighting(alpha_std=0.1)(image)
    torch.manual_seed(1)
    alpha = torch.randn(3) * 0.1
    rgb = torch.tensor(EIGENVECTORS) @ (alpha * torch.tensor(EIGENVALUES))
    torch.testing.assert_close(out - image, rgb[:, None, None].expand(3, 8, 8))
    assert torch.equal(PCALighting(alpha_std=0.0)(image), image)


def test_center_and_ten_crop_batches(data_dir):
    images, labels = next(iter(make(data_dir, "validate", eval_mode="center").val_dataloader()))
    assert images.shape == (4, 3, 224, 224) and labels.shape == (4,)
    loader = make(data_dir, "test", eval_mode="ten_crop").test_dataloader()
    images, labels = next(iter(loader))
    assert images.shape == (4, 10, 3, 224, 224) and images.dtype == torch.float32
    assert sum(len(labels) for _, labels in loader) == 7


def test_multi_scale_yields_whole_images_at_each_scale(data_dir):
    scales = (224, 256, 300)
    loader = make(data_dir, "validate", eval_mode="multi_scale", scales=scales).val_dataloader()
    views, labels = next(iter(loader))
    assert isinstance(views, list) and len(views) == len(scales) and labels.shape == (1,)
    for view, scale in zip(views, scales):
        assert view.shape[:2] == (1, 3) and min(view.shape[2:]) == scale
        assert abs(view.shape[3] / view.shape[2] - 400 / 300) < 0.01  # the first image is 400 x 300, uncropped
    assert len(loader) == 7


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_counts_every_image_once(data_dir, world_size):
    seen = []
    for rank in range(world_size):
        loader = make(data_dir, "validate", rank, world_size).val_dataloader()
        assert len(loader.sampler) == len(list(loader.sampler))
        seen += list(loader.sampler)
    assert sorted(seen) == list(range(7))
    assert sorted(i for r in range(world_size) for i in EvalSampler(7, r, world_size)) == list(range(7))


def test_training_ranks_take_disjoint_halves_of_each_global_batch(data_dir):
    loaders = [make(data_dir, "fit", rank, 2).train_dataloader() for rank in range(2)]
    assert all(loader.batch_size == 2 for loader in loaders)
    halves = [list(islice(loader.sampler, 4)) for loader in loaders]  # two global batches of 4
    whole = list(islice(make(data_dir).train_dataloader().sampler, 8))
    assert halves[0][:2] + halves[1][:2] + halves[0][2:] + halves[1][2:] == whole  # images and their seeds
    assert len({index for index, _ in whole[:4]}) == 4 and len({seed for _, seed in whole}) == 8


def test_the_training_stream_resumed_at_a_step_goes_on_where_it_stopped():
    # 9 images, batches of 4: two batches per epoch, so step 3 is the second batch of the second epoch
    from_start = list(islice(TrainStream(9, 4, 0, 1, seed=5, first_step=lambda: 0), 6 * 4))
    resumed = list(islice(TrainStream(9, 4, 0, 1, seed=5, first_step=lambda: 3), 3 * 4))
    assert resumed == from_start[3 * 4:]
    epochs = [sorted(index for index, _ in from_start[e * 8:e * 8 + 8]) for e in range(3)]
    assert all(len(set(epoch)) == 8 for epoch in epochs) and epochs[0] != epochs[1]  # a new order each epoch
    assert from_start != list(islice(TrainStream(9, 4, 0, 1, seed=6, first_step=lambda: 0), 6 * 4))
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        TrainStream(9, 16, 0, 1, seed=0, first_step=lambda: 0)


def test_an_image_and_its_seed_give_the_same_augmentation_whatever_the_global_generator(data_dir):
    images = SeededImages(make(data_dir).train_set)
    torch.manual_seed(0)
    first, label = images[(4, 123)]
    torch.manual_seed(1)
    before = torch.get_rng_state()
    again, _ = images[(4, 123)]
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
    assert torch.equal(first, again) and label == 1
    assert not torch.equal(first, images[(4, 124)][0])  # another seed, another crop and colour


def test_batch_size_must_divide_by_world_size(data_dir):
    with pytest.raises(ValueError, match="batch_size 4 is global"):
        make(data_dir, "fit", 0, 3)


@pytest.mark.parametrize("missing", ["train", "val"])
def test_missing_folder_is_one_clear_line(data_dir, tmp_path, missing):
    present = "val" if missing == "train" else "train"
    (tmp_path / present).symlink_to(f"{data_dir}/{present}")
    with pytest.raises(FileNotFoundError) as error:
        make(str(tmp_path), "fit")
    message = str(error.value)
    assert f"{tmp_path / missing} is missing" in message and "\n" not in message
    assert "<data_dir>/{train,val}/<class>/<image>" in message and "cannot be downloaded" in message


def test_cudnn_benchmark_is_off_for_the_multi_scale_test_only(tmp_path):
    from helpers import REPO
    from resnet_repro.train import build_cli

    before = torch.backends.cudnn.benchmark  # a Trainer sets it for the whole process
    cli = build_cli(["--config", str(REPO / "experiments/imagenet/base.yaml"), "--run_dir", str(tmp_path / "r"),
                     "--wandb", "false", "--trainer.accelerator", "cpu"], run=False)
    assert cli.config.trainer.benchmark is True  # the recipe: cuDNN tunes once for the fixed 224 x 224 crops
    try:
        for protocol, benchmark in [("ten_crop", True), ("multi_scale", False), ("center", True)]:
            cli.use_protocol(protocol)
            assert (cli.datamodule.eval_protocol, torch.backends.cudnn.benchmark) == (protocol, benchmark)
    finally:
        torch.backends.cudnn.benchmark = before
