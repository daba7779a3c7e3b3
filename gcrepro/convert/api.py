"""``convert_checkpoint(src, entry=None) -> Converted`` and ``save_converted(converted, out)``.

    read (safe_load) -> layout + gcrepro names (layouts) -> structure -> entry (infer / preflight)
    -> ModelConfig -> fit to the model's keys and shapes (fit) -> Converted

The written checkpoint holds tensors and plain values only (``torch.load(weights_only=True)``)::

    {"model": state_dict,
     "model_config": ModelConfig as plain values (the paper's, num_classes and widths from the checkpoint,
                     conventions by the source layout),
     "conversion": {"source", "layout", "entry", "counts", "notes", "meta"}}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gcrepro.convert.errors import ConvertError
from gcrepro.convert.fit import fit_to_model
from gcrepro.convert.infer import check_entry, infer_entry, label, read_hints
from gcrepro.convert.layouts import CONVENTIONS, LAYOUT_NAMES, Source, config_text, plain_meta, read_source
from gcrepro.convert.structure import Structure, read_structure
from gcrepro.entries import Entry, get_entry
from gcrepro.fields import from_plain, to_plain
from gcrepro.modeling.config import CONVENTION_PRESETS, ModelConfig

COUNT_WORDS = (  # counts key -> words, in the order they are printed
    ("renamed", "renamed"), ("reordered", "class rows re-ordered"), ("background_rows", "zero background rows added"),
    ("filled", "missing BatchNorm counters set to zero"), ("dropped", "dropped"),
)


@dataclass(frozen=True)
class Converted:
    """A checkpoint converted to gcrepro's layout, and what was done to it."""

    entry: str
    layout: str  # "mmdet" | "gcnet_v1" | "torchvision" | "gcrepro"
    state_dict: dict[str, Tensor]
    model_config: ModelConfig
    counts: dict[str, int]  # tensors_in, tensors_out, kept, renamed, reordered, background_rows, filled, dropped
    notes: list[str]
    source: Path
    meta: dict[str, Any]  # JSON-able facts of the source's metadata (versions, experiment name, classes)

    @property
    def conventions(self) -> str:
        """"paper" | "mmdet" | "torchvision": whose geometry the model reproduces (``ModelConfig.conventions``)."""
        return self.model_config.conventions

    def checkpoint(self) -> dict[str, Any]:
        """What ``save_converted`` writes: tensors and plain values only."""
        return {"model": dict(self.state_dict), "model_config": to_plain(self.model_config),
                "conversion": {"source": str(self.source), "layout": self.layout, "entry": self.entry,
                               "counts": dict(self.counts), "notes": list(self.notes), "meta": dict(self.meta)}}

    def summary(self) -> list[str]:
        """What was found and done, one fact a line."""
        c = self.counts
        versions = ", ".join(f"{k} {v}" for k, v in self.meta.items() if k.endswith("_version"))
        done = ", ".join(f"{c.get(key, 0)} {words}" for key, words in COUNT_WORDS)
        return [f"source: {self.source}",
                f"layout: {LAYOUT_NAMES[self.layout]}" + (f" ({versions})" if versions else ""),
                f"entry: {self.entry} (row {get_entry(self.entry).row}), {self.model_config.num_classes} classes "
                f"(background included), conventions {self.conventions}",
                f"tensors: {c['tensors_in']} in, {c['tensors_out']} out; {done}",
                *(f"note: {n}" for n in self.notes)]


def _model_config(source: Source, entry: Entry, structure: Structure) -> tuple[ModelConfig, list[str]]:
    """The ModelConfig of the converted model, and notes.

    A gcrepro checkpoint's own record, else the paper's values for ``entry`` with the checkpoint's class
    count and widths, and the conventions preset of the source layout (mmdetection 2.x/3.x: ``mmdet``,
    RoIAlign adaptive sampling; torchvision: ``torchvision``, its loss and anchor rules; v1: ``paper``)."""
    from gcrepro.engine.config import ConfigError
    from gcrepro.modeling.build import model_config

    recorded = source.gcrepro_record.get("model")
    if isinstance(recorded, dict):
        try:
            config, missing = from_plain(ModelConfig, recorded, where=f"{source.where}: model config")
        except (ValueError, TypeError) as err:
            raise ConvertError(str(err)) from None
        old = [f"its model config has no {', '.join(missing)} (an older gcrepro): today's defaults"]
        return config, old if missing else []
    notes = [] if source.layout != "gcrepro" else ["a bare state dict in gcrepro names: conventions 'paper' assumed"]
    try:
        paper = model_config(entry, profile="paper", num_classes=structure.num_classes)
        widths = {k: v for k, v in structure.widths.items() if getattr(paper, k) != v}
        if widths:
            notes.append("widths differ from the paper's: " + ", ".join(
                f"{k}={v} (paper {getattr(paper, k)})" for k, v in widths.items()))
        preset = CONVENTION_PRESETS[CONVENTIONS.get(source.layout, "paper")]
        return model_config(entry, profile="paper", num_classes=structure.num_classes, **widths, **preset), notes
    except (ConfigError, ValueError) as err:
        raise ConvertError(f"{source.where}: {err}") from None


def convert_checkpoint(src: str | Path, entry: str | int | Entry | None = None) -> Converted:
    """Read ``src`` (any layout of ``gcrepro.convert.layouts``) and convert it to a gcrepro model.

    ``entry`` (name, row or Entry): refuse a checkpoint of another architecture, naming the first key or
    shape that differs; None: infer it (twins: see ``gcrepro.convert.infer``). Bad input raises
    ``ConvertError`` (one line).
    """
    source = read_source(src)
    mapped, where = source.mapped, source.where
    structure = read_structure(mapped, where)
    hints = read_hints(path=source.path, meta=source.meta, config=config_text(source.meta),
                       recorded_entry=source.gcrepro_record.get("entry"))
    if entry is None:
        chosen, entry_notes = infer_entry(structure, hints, name=mapped.source_key, where=where)
    else:
        chosen, entry_notes = check_entry(structure, hints, entry, name=mapped.source_key, where=where)
    config, config_notes = _model_config(source, chosen, structure)
    state, fitted, fit_notes = fit_to_model(mapped, config, model=label(chosen), where=where)
    counts = {"tensors_in": source.tensors_in, "tensors_out": len(state), "kept": mapped.counts["kept"],
              "renamed": mapped.counts["renamed"], "reordered": mapped.counts["reordered"],
              "background_rows": mapped.counts["background_rows"], **fitted}
    left = [f"left behind: {', '.join(source.left_behind)} (not model weights)"] if source.left_behind else []
    return Converted(entry=chosen.name, layout=source.layout, state_dict=state, model_config=config,
                     counts=counts, notes=[*mapped.notes, *entry_notes, *config_notes, *fit_notes, *left],
                     source=source.path, meta=plain_meta(source.meta))


def save_converted(converted: Converted, out_path: str | Path) -> Path:
    """Write ``converted.checkpoint()`` to ``out_path`` atomically: the complete file or none."""
    from gcrepro.atomic import atomic_open

    with atomic_open(out_path, "wb") as f:
        torch.save(converted.checkpoint(), f)
    return Path(out_path)
