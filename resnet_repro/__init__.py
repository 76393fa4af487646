"""resnet-repro: the plain and residual networks of He et al. (2015), their training recipes and the paper's
experiments, tables and figures.

The public surface, for notebooks and scripts (`import resnet_repro as rr; rr.build_model("resnet56")`):
the nets and their sizes, the report's frames, tables and figures, and the layer responses. Each name is
imported when first used, so that `import resnet_repro` (and the report) pays for torch only where a name
needs it.
"""

import importlib

PUBLIC = {
    "build_model": "models", "get_spec": "models", "list_models": "models",
    "count_params": "models.size", "count_macs": "models.size",
    "ResNetClassifier": "module",
    "collect_runs": "report.collect", "read_metrics": "report.collect",
    "error_table": "report.tables", "findings": "report.tables",
    "training_curves": "report.figures", "smoothed_train_error": "report.figures", "seed_spread": "report.figures",
    "measure_runs": "analysis.responses", "layer_responses": "analysis.responses",
    "figure7": "analysis.responses", "response_findings": "analysis.responses",
}
__all__ = list(PUBLIC)


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f"module 'resnet_repro' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{PUBLIC[name]}"), name)
