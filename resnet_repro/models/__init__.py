"""The paper's plain and residual networks, by name: `build_model("resnet56")`, `list_models()`."""

from dataclasses import dataclass
from typing import Callable

from .blocks import SHORTCUT_OPTIONS, BasicBlock, Bottleneck, ResNet
from .cifar import PAPER_N, cifar_net
from .imagenet import BLOCKS, imagenet_net

__all__ = ["SHORTCUT_OPTIONS", "BasicBlock", "Bottleneck", "ResNet", "ModelSpec", "build_model",
           "cifar_net", "get_spec", "imagenet_net", "list_models"]


@dataclass(frozen=True)
class ModelSpec:
    family: Callable[..., ResNet]  # cifar_net or imagenet_net
    depth: int
    residual: bool
    input_size: int  # the side of the images the net was designed for: 32 (CIFAR-10) or 224 (ImageNet)

    @property
    def overrides(self) -> tuple[str, ...]:
        return ("shortcut", "num_classes") if self.residual else ("num_classes",)


_REGISTRY: dict[str, ModelSpec] = {}
for _depth in (6 * n + 2 for n in PAPER_N):
    _REGISTRY[f"plain{_depth}"] = ModelSpec(cifar_net, _depth, residual=False, input_size=32)
    _REGISTRY[f"resnet{_depth}"] = ModelSpec(cifar_net, _depth, residual=True, input_size=32)
for _depth in BLOCKS:
    if _depth in (18, 34):  # the paper trains plain nets of these two depths only
        _REGISTRY[f"plain{_depth}"] = ModelSpec(imagenet_net, _depth, residual=False, input_size=224)
    _REGISTRY[f"resnet{_depth}"] = ModelSpec(imagenet_net, _depth, residual=True, input_size=224)


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}: valid models are {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_model(name: str, **overrides) -> ResNet:
    """Build a registered net; `overrides` may set `num_classes` and, for residual nets, `shortcut`."""
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(spec.overrides))
    if unknown:
        raise ValueError(f"{name} takes no {', '.join(unknown)}: valid overrides are {', '.join(spec.overrides)}")
    return spec.family(spec.depth, residual=spec.residual, **overrides)
