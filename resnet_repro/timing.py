"""Timing a training step on a device: the warm-up that ends when steps are steady and the step itself (both
also `bench`'s), and the training rate that `run --dry-run` divides each run's work by."""

import contextlib
import time

import torch
import torch.nn.functional as F

from .models import build_model
from .models.size import count_macs, meta_model


class WarmUp:
    """Says when the timing may start: after at least `minimum` steps, once the last three took within 10% of each
    other, or after `limit` steps. A fixed count is not enough: oneDNN sets up its bf16 kernels over the first
    steps, and a short fixed warm-up times that set-up instead of the steady rate."""

    def __init__(self, minimum: int, limit: int, device: torch.device):
        self.minimum, self.limit, self.device = minimum, limit, device
        self.step_seconds, self.last, self.steady = [], None, False

    def over(self) -> bool:
        """Called before each step (so the time between two calls is one whole step); True from the first call on
        which the warm-up is over."""
        synchronize(self.device)
        now = time.perf_counter()
        if self.last is not None:
            self.step_seconds.append(now - self.last)
        self.last = now
        steps, recent = len(self.step_seconds), self.step_seconds[-3:]
        self.steady = len(recent) == 3 and max(recent) <= 1.1 * min(recent)
        return steps >= self.minimum and (self.steady or steps >= self.limit)

    def note(self) -> str:
        unsteady = "" if self.steady else ", not steady: the rate includes the spread"
        return f"after {len(self.step_seconds)} warm-up steps{unsteady}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_rate(device: torch.device, steps: int = 3, batch: int = 128) -> float:
    """Training multiply-adds per second (forward + backward ~ 3 x forward) of ResNet-20 on 32x32 images on
    `device`, over `steps` SGD steps after a warm-up (until steady, 20 steps at most: the first steps set up
    kernels and memory, and timed they would make a run look several times longer): the rate `run --dry-run`
    divides each run's FLOPs by."""
    net = build_model("resnet20").to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, foreach=True)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    warm_up = WarmUp(2, 20, device)
    while not warm_up.over():
        train_step(net, optimizer, images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(net, optimizer, images, labels)
    synchronize(device)
    return 3 * count_macs(meta_model("resnet20"), 32) * batch * steps / (time.perf_counter() - start)


def train_step(net, optimizer, images, labels, autocast=contextlib.nullcontext()) -> None:
    with autocast:
        loss = F.cross_entropy(net(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
