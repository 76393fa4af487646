"""Exact parameter and forward multiply-accumulate counts, read off a model instance (not a formula)."""

import copy
import functools

import torch
from torch import nn

from . import build_model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of the conv and fully connected layers for one 3 x size x size image.

    The forward pass runs on a copy on the meta device: shapes only, no arithmetic, so even ResNet-1202
    is counted in a fraction of a second.
    """
    shapes_only = copy.deepcopy(model).to("meta").eval()
    total = 0

    def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in shapes_only.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        shapes_only(torch.zeros(1, 3, input_size, input_size, device="meta"))
    for hook in hooks:
        hook.remove()
    return total


@functools.cache  # shapes only, so one build serves every caller that counts or checks this net
def meta_model(name: str, shortcut: str | None = None, num_classes: int | None = None) -> nn.Module:
    """A registered net on the meta device (no memory, no initialisation); raises ValueError like build_model."""
    overrides = {k: v for k, v in {"shortcut": shortcut, "num_classes": num_classes}.items() if v is not None}
    with torch.device("meta"):
        return build_model(name, **overrides)
