"""Exact parameter and forward multiply-accumulate counts, read off a model instance (not a formula)."""

import copy
import functools

import pandas as pd
import torch
from torch import nn

from ..models import build_model, get_spec, list_models
from ..report.paper import TABLE1_MACS, TABLE6_PARAMS


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


def complexity_table() -> pd.DataFrame:
    """Every registered model with its layers, parameters and MACs, beside the paper's values."""
    rows = []
    for name in list_models():
        spec = get_spec(name)
        model = meta_model(name)
        paper_params = TABLE6_PARAMS.get(name.replace("plain", "resnet")) if spec.input_size == 32 else None
        rows.append({
            "model": name,
            "layers": model.num_layers,
            "input": f"{spec.input_size}x{spec.input_size}",
            "params": count_params(model),
            "paper params": paper_params,
            "MACs": count_macs(model, spec.input_size),
            "paper MACs": TABLE1_MACS.get(spec.depth) if spec.input_size == 224 else None,
        })
    return pd.DataFrame(rows)


def format_complexity_table(table: pd.DataFrame) -> str:
    def millions(x):
        return "" if pd.isna(x) else f"{x / 1e6:,.2f}M"

    def billions(x):
        return "" if pd.isna(x) else f"{x / 1e9:,.2f}G"

    shown = table.assign(**{
        "params": table["params"].map("{:,}".format),
        "paper params": table["paper params"].map(millions),
        "MACs": table["MACs"].map(lambda m: f"{m / 1e6:,.2f}M" if m < 1e9 else billions(m)),
        "paper MACs": table["paper MACs"].map(billions),
    })
    return shown.to_markdown(index=False, colalign=["left"] + ["right"] * (len(shown.columns) - 1))
