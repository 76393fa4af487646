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
    """What the registry says about a net, so that no code reads it off the net's name."""
    family: Callable[..., ResNet]  # cifar_net or imagenet_net
    depth: int
    residual: bool
    input_size: int  # the side of the images the net was designed for: 32 (CIFAR-10) or 224 (ImageNet)
    default_shortcut: str  # the option a residual net of this family uses unless told: A (CIFAR-10), B (ImageNet)
    plain_twin: str | None  # the plain net of the same family and depth, if the paper trains one (None for plain nets)

    @property
    def kind(self) -> str:
        return "residual" if self.residual else "plain"

    @property
    def overrides(self) -> tuple[str, ...]:
        return ("shortcut", "num_classes") if self.residual else ("num_classes",)

    def shortcut(self, option: str | None) -> str | None:
        """The shortcut option a net built with `option` (None: the default) has; None for a plain net."""
        return (option or self.default_shortcut) if self.residual else None

    def columns(self, option: str | None) -> dict:
        """The net in the words a run's record, W&B's columns and the report's tables share: family (plain /
        residual), depth, and shortcut as built ("none" for a plain net)."""
        return {"family": self.kind, "depth": self.depth, "shortcut": self.shortcut(option) or "none"}


def _register(family: Callable[..., ResNet], depth: int, input_size: int, default_shortcut: str, with_plain: bool) -> None:
    common = dict(family=family, depth=depth, input_size=input_size, default_shortcut=default_shortcut)
    if with_plain:
        _REGISTRY[f"plain{depth}"] = ModelSpec(residual=False, plain_twin=None, **common)
    _REGISTRY[f"resnet{depth}"] = ModelSpec(residual=True, plain_twin=f"plain{depth}" if with_plain else None, **common)


_REGISTRY: dict[str, ModelSpec] = {}
for _depth in (6 * n + 2 for n in PAPER_N):
    _register(cifar_net, _depth, input_size=32, default_shortcut="A", with_plain=True)
for _depth in BLOCKS:  # the paper trains plain ImageNet nets of 18 and 34 layers only
    _register(imagenet_net, _depth, input_size=224, default_shortcut="B", with_plain=_depth in (18, 34))


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
