"""`resnet-repro models`: every registered net with its layers, parameters and multiply-adds beside the paper's."""

import pandas as pd

from ..models import get_spec, list_models
from ..models.size import count_macs, count_params, meta_model
from ..paper import TABLE1_MACS, TABLE6_PARAMS


def complexity_table() -> pd.DataFrame:
    """Every registered model with its layers, parameters and MACs, beside the paper's values."""
    rows = []
    for name in list_models():
        spec = get_spec(name)
        model = meta_model(name)
        paper_params = TABLE6_PARAMS.get(spec.depth) if spec.input_size == 32 else None
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


def models_command(argv: list[str]) -> None:
    if argv:
        raise ValueError(f"models takes no arguments, got {' '.join(argv)}")
    print(format_complexity_table(complexity_table()))
