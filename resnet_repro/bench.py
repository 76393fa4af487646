"""`resnet-repro bench MODEL`: training throughput of three ways to train the same net, in one process, one
after another, on the embedded digits data (32x32x3, like CIFAR-10):

1. fit: the real `resnet-repro fit` path (LightningModule, device-resident data, batched augmentation);
2. compute: the same LightningModule's forward, backward and SGD step on one in-memory batch (no data
   pipeline: the ceiling for 1);
3. dataloader: the usual CIFAR loop: a torchvision DataLoader with PIL images and per-image transforms
   (pad-crop, flip, to tensor, normalise), a plain contiguous fp32 net, a hand-written step.

Before them, how much a step launches, which on a GPU decides a small net's step time more than its arithmetic:
the ATen operations per step of the fit path (each a kernel launch on a GPU; views and allocations, which
launch nothing, not counted) and its host time per step on 1x1 images, where the arithmetic is negligible. Both
are the difference between fits of 12 and 4 steps, over 8 steps, so that a fit's set-up cancels out.

Each is timed over `--steps` steps after a warm-up of at least `--warmup` steps that lasts until three steps in a
row take within 10% of each other (compilation, cuDNN tuning, CUDA graph capture and oneDNN's kernel set-up happen
in the warm-up). Prints images/s, the ratios against 2 and 3, peak memory (CUDA: allocated per phase;
CPU: the process's peak resident set so far, which only grows), the bytes autograd keeps for one step's
backward pass (the activations: the same count on any device), and the wall time of a 64k-iteration run (the
CIFAR-10 recipe) at the fit rate.
"""

import os
import resource
import time
from typing import get_args

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .data import DigitsDataModule, SmallImageDataModule
from .hardware import device_name
from .models import build_model
from .module import CompileMode, ResNetClassifier
from .options import OptionParser, count
from .timing import WarmUp, synchronize, train_step


class Timer(L.Callback):
    """Wall time of `steps` training steps after the warm-up (synchronised with the device at both ends); stops the
    fit when they are done."""

    def __init__(self, warm_up: WarmUp, steps: int):
        self.warm_up, self.steps = warm_up, steps
        self.start, self.started_at, self.seconds = None, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and self.warm_up.over():
            self.start, self.started_at = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None and trainer.global_step - self.started_at == self.steps:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations that run while it is active, but views and allocations."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func.overloadpacket in ALLOCATIONS):
            self.count += 1
        return func(*args, **(kwargs or {}))


ALLOCATIONS = (torch.ops.aten.empty, torch.ops.aten.empty_strided, torch.ops.aten._unsafe_view)


class NoiseImages(SmallImageDataModule):
    """Random 1x1 images: a step's arithmetic is then negligible, and what is left of its time is the host's."""

    dataset = "1x1 noise"
    pad = 0

    def load_arrays(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2048, 3, 1, 1), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (2048,), generator=generator)
        return images, labels, images[:100], labels[:100]


def short_fit(model: str, device: str, steps: int, data: L.LightningDataModule, precision: str,
              compile_mode: CompileMode | None, bn_group_size: int | None, callbacks=()) -> L.Trainer:
    """The fit path for `steps` steps, without validation, checkpoints or logs."""
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks), precision=precision)
    trainer.fit(ResNetClassifier(model, compile_mode=compile_mode, bn_group_size=bn_group_size), data)
    return trainer


def launches_per_step(model: str, device: str, batch_size: int, precision: str, compile_mode: CompileMode | None,
                      bn_group_size: int | None) -> tuple[float, float]:
    """(ATen operations per step of the fit path, host milliseconds per step on 1x1 images): fits of 12 and 4
    steps, the difference over 8 steps (the faster of two tries of each, for the time)."""
    def fit(steps: int) -> float:
        start = time.perf_counter()
        short_fit(model, device, steps, NoiseImages(batch_size=batch_size, val_size=0), precision, compile_mode,
                  bn_group_size)
        synchronize(torch.device(device))
        return time.perf_counter() - start

    counts = []
    for steps in (4, 12):
        with OpCounter() as counter:
            fit(steps)
        counts.append(counter.count)
    seconds = [min(fit(steps) for _ in range(2)) for steps in (4, 12)]
    return (counts[1] - counts[0]) / 8, 1000 * (seconds[1] - seconds[0]) / 8


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return f"{peak:,.0f} MiB allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB peak RSS so far"


def fit_path(model: str, device: str, batch_size: int, warm_up: WarmUp, steps: int, precision: str,
             compile_mode: CompileMode | None, bn_group_size: int | None) -> tuple[float, str]:
    timer = Timer(warm_up, steps)
    short_fit(model, device, warm_up.limit + steps, DigitsDataModule(batch_size=batch_size), precision, compile_mode,
              bn_group_size, callbacks=[timer])
    return steps * batch_size / timer.seconds, warm_up.note()


def saved_for_backward(forward) -> tuple[torch.Tensor, int]:
    """The output of `forward()` and the bytes of the tensors autograd keeps for its backward pass (each
    storage counted once: a ReLU's output that the next conv also keeps is one tensor)."""
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    return output, sum(storages.values())


def compute_only(model: str, device: torch.device, batch_size: int, warm_up: WarmUp, steps: int, precision: str,
                 compile_mode: CompileMode | None, bn_group_size: int | None) -> tuple[float, str, int]:
    """(images/s, the warm-up's note, bytes kept for backward). The bytes are counted on an eager forward before the
    timed loop: compiled code does not show its saved tensors to the hooks."""
    module = ResNetClassifier(model, bn_group_size=bn_group_size).to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with autocast:
        _, saved = saved_for_backward(lambda: F.cross_entropy(module(images), labels))
    if compile_mode is not None:
        module.net.compile(mode=compile_mode)
    while not warm_up.over():
        train_step(module, optimizer, images, labels, autocast)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(module, optimizer, images, labels, autocast)
    synchronize(device)
    rate = steps * batch_size / (time.perf_counter() - start)
    busy = device_busy(lambda: train_step(module, optimizer, images, labels, autocast), device)
    return rate, warm_up.note(), saved, busy


def device_busy(step, device: torch.device, steps: int = 3) -> tuple[int, float, float]:
    """(kernels per step, milliseconds per step the device spends in them, milliseconds per step) of `step`, from a
    profiler pass: on a GPU its CUDA kernels, on a CPU the ATen operations the host runs (there the host is the
    device). The step's own time is the profiled one, so that the busy share is of the same steps."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        kernels = [event for event in profiler.events() if event.device_type == DeviceType.CUDA]
        busy_us = sum(event.device_time for event in kernels)
    else:  # the outermost ATen calls, each counted once with the time under it
        kernels = [event for event in profiler.events() if event.name.startswith("aten::") and not (
            event.cpu_parent and event.cpu_parent.name.startswith("aten::"))]
        busy_us = sum(event.cpu_time_total for event in kernels)
    return round(len(kernels) / steps), busy_us / 1000 / steps, 1000 * seconds / steps


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


def dataloader_loop(model: str, device: torch.device, batch_size: int, warm_up: WarmUp, steps: int,
                    workers: int) -> tuple[float, str]:
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    loader = DataLoader(PILDigits(transform), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    net = build_model(model).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    timed, start = 0, None
    while timed < steps:
        for images, labels in loader:
            if start is None and warm_up.over():
                start = time.perf_counter()
            train_step(net, optimizer, images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            timed += start is not None
            if timed == steps:
                break
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start), warm_up.note()


def bench_command(argv: list[str]) -> None:
    parser = OptionParser(prog="resnet-repro bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="resnet20")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=count, default=20)
    parser.add_argument("--warmup", type=count, default=5, help="warm-up steps at least (it lasts until steady)")
    parser.add_argument("--warmup-limit", type=count, default=50,
                        help="warm-up steps at most: when the steps never agree within 10%%, time from there")
    parser.add_argument("--batch-size", type=count, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline loop")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--compile", dest="compile_mode", choices=get_args(CompileMode),
                        help="torch.compile mode of the fit path and the compute-only step (default: eager)")
    parser.add_argument("--bn-group-size", type=count,
                        help="BN over groups of this many images in fit and compute (the CIFAR-10 recipe's 64; "
                             "default: the whole batch)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms and cuDNN benchmark off, as trainer.deterministic sets them")
    args = parser.parse_args(argv)
    if args.warmup_limit < args.warmup:
        raise ValueError(f"--warmup-limit must be at least --warmup ({args.warmup}), got {args.warmup_limit}")
    device = torch.device(args.device)
    # as in the recipes, for all three loops alike (the Trainer keeps these)
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:  # what Lightning's Trainer(deterministic=True) sets
        torch.use_deterministic_algorithms(True)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    name = device_name(device)
    print(f"{args.model}, batch {args.batch_size}, {args.steps} timed steps after a warm-up of {args.warmup} to "
          f"{args.warmup_limit}, {args.precision}, "
          f"compile {args.compile_mode or 'off'}, BN groups {args.bn_group_size or 'off'}, "
          f"deterministic {'on' if args.deterministic else 'off'}, {name}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, lightning {L.__version__}")
    figures = {}

    def show(label: str, rate: float, warm_up: str, note: str = "") -> None:
        figures[label] = rate
        print(f"{label:>10}: {rate:8,.0f} images/s   {peak_memory(device)}{note}   ({warm_up})")

    def common():  # each path warms up on its own
        return args.batch_size, WarmUp(args.warmup, args.warmup_limit, device), args.steps

    switches = (args.precision, args.compile_mode, args.bn_group_size)
    if args.compile_mode is None:
        ops, host_ms = launches_per_step(args.model, args.device, args.batch_size, *switches)
        print(f"{'step':>10}: {ops:8,.0f} ops per step (ATen calls but views and allocations; each a kernel launch "
              f"on a GPU), {host_ms:,.1f} ms of host time per step on 1x1 images")
    else:  # a compiled step runs generated kernels, not ATen calls; six more fits would each compile anew
        print(f"{'step':>10}: not counted when compiled (the profiler line below counts its kernels)")
    show("fit", *fit_path(args.model, args.device, *common(), *switches))
    rate, warm_up, saved, (kernels, busy_ms, step_ms) = compute_only(args.model, device, *common(), *switches)
    show("compute", rate, warm_up, f"   autograd keeps {saved / 2**20:,.0f} MiB for one step's backward")
    what = "CUDA kernels" if device.type == "cuda" else "ATen calls"
    print(f"{'profile':>10}: {kernels:8,} {what} per compute step, {busy_ms:,.1f} ms busy of its {step_ms:,.1f} ms "
          f"under the profiler ({busy_ms / step_ms:.0%}{': launch-bound' if busy_ms < step_ms / 2 else ''})")
    show("dataloader", *dataloader_loop(args.model, device, *common(), args.workers))
    print(f"fit / dataloader = {figures['fit'] / figures['dataloader']:.2f}x   "
          f"fit / compute = {figures['fit'] / figures['compute']:.2f}x")
    minutes = 64_000 * args.batch_size / figures["fit"] / 60
    print(f"64k iterations of {args.batch_size} at the fit rate: {minutes:,.1f} min")
