"""`resnet-repro bench MODEL`: training throughput of three ways to train the same net, in one process, one
after another, on the embedded digits data (32x32x3, like CIFAR-10):

1. fit: the real `resnet-repro fit` path (LightningModule, device-resident data, batched augmentation);
2. compute: the same LightningModule's forward, backward and SGD step on one in-memory batch (no data
   pipeline: the ceiling for 1);
3. dataloader: the usual CIFAR loop: a torchvision DataLoader with PIL images and per-image transforms
   (pad-crop, flip, to tensor, normalise), a plain contiguous fp32 net, a hand-written step.

Each is timed over `--steps` steps after `--warmup` steps. Prints images/s, the ratios against 2 and 3, and
peak memory (CUDA: allocated per phase; CPU: the process's peak resident set so far, which only grows).
"""

import argparse
import platform
import resource
import time

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .data import DigitsDataModule
from .models import build_model
from .module import ResNetClassifier


class Timer(L.Callback):
    """Wall time of the training steps after the warm-up ones (synchronised with the device at both ends)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.seconds = time.perf_counter() - self.start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return f"{peak:,.0f} MiB allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB peak RSS so far"


def fit_path(model: str, device: str, batch_size: int, warmup: int, steps: int, precision: str) -> float:
    timer = Timer(warmup)
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=warmup + steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], precision=precision)
    trainer.fit(ResNetClassifier(model), DigitsDataModule(batch_size=batch_size))
    return steps * batch_size / timer.seconds


def compute_only(model: str, device: torch.device, batch_size: int, warmup: int, steps: int, precision: str) -> float:
    module = ResNetClassifier(model).to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(module(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


class PILDigits(Dataset):
    """The digits training images as PIL images, as torchvision's CIFAR10 dataset hands them out."""

    def __init__(self, transform):
        data = DigitsDataModule()
        images, self.labels, _, _ = data.load_arrays()
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])


def dataloader_loop(model: str, device: torch.device, batch_size: int, warmup: int, steps: int, workers: int) -> float:
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    loader = DataLoader(PILDigits(transform), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    net = build_model(model).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    step, start = 0, None
    while step < warmup + steps:
        for images, labels in loader:
            if step == warmup:
                synchronize(device)
                start = time.perf_counter()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == warmup + steps:
                break
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def bench_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="resnet-repro bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="resnet20")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline loop")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{args.model}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, {args.precision}, "
          f"{name}, {torch.get_num_threads()} threads; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, lightning {L.__version__}")
    figures = {}
    for label, run in [
        ("fit", lambda: fit_path(args.model, args.device, args.batch_size, args.warmup, args.steps, args.precision)),
        ("compute", lambda: compute_only(args.model, device, args.batch_size, args.warmup, args.steps, args.precision)),
        ("dataloader", lambda: dataloader_loop(args.model, device, args.batch_size, args.warmup, args.steps,
                                               args.workers)),
    ]:
        figures[label] = run()
        print(f"{label:>10}: {figures[label]:8,.0f} images/s   {peak_memory(device)}")
    print(f"fit / dataloader = {figures['fit'] / figures['dataloader']:.2f}x   "
          f"fit / compute = {figures['fit'] / figures['compute']:.2f}x")
