"""gcrepro: reproduce the GCNet table (Cao et al., "GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond", 2019) with torchvision detection models.

Public API::

    gcrepro.list_entries()                      # the 30 rows of the paper's table
    gcrepro.build_model("mask_rcnn_r50_fpn_gc_r16_1x", num_classes=81)
    gcrepro.build_model(8, checkpoint="mmdet_or_gcrepro_or_gcnet.pth")   # loaded, any checkpoint layout
    gcrepro.resolve_run(entry, data=..., profile=..., overrides=...) -> RunSpec   # what a run is
    gcrepro.train(...), gcrepro.evaluate(...)   # see gcrepro.engine
    gcrepro.read_metrics(run_dir)               # a run's metrics.json, typed
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["list_entries", "get_entry", "build_model", "resolve_run", "RunSpec", "train", "evaluate", "read_metrics"]


def __getattr__(name: str):
    # Lazy: `import gcrepro` stays cheap (no torch import) for the CLI's --help.
    if name in ("list_entries", "get_entry"):
        from gcrepro import entries

        return getattr(entries, name)
    if name == "build_model":
        from gcrepro.models import build_model

        return build_model
    if name in ("resolve_run", "RunSpec"):
        from gcrepro import runspec

        return getattr(runspec, name)
    if name == "read_metrics":
        from gcrepro.run_metrics import read_metrics

        return read_metrics
    if name in ("train", "evaluate"):
        from gcrepro.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'gcrepro' has no attribute {name!r}")
