"""Fit a mapped state dict to the model a ``ModelConfig`` builds: every model key filled, every source key placed.

The model is built on the ``meta`` device (shapes, no memory). A model key the source lacks is an
error naming it, except BatchNorm's ``num_batches_tracked`` counters, filled with zeros (torchvision's
frozen BatchNorm has none; the counter is read by nothing at test time). A shape that differs is an
error naming both. A source key the model has no place for is an error, unless ``DROPPABLE`` says why
it may go.
"""
from __future__ import annotations

import re
from collections import Counter

import torch
from torch import Tensor

from gcrepro.convert.errors import ConvertError
from gcrepro.convert.keymap import Mapped
from gcrepro.modeling.config import ModelConfig

DROPPABLE = (
    (re.compile(r"\.num_batches_tracked\Z"), "BatchNorm step counters the model has no place for"),
    (re.compile(r"\Abackbone\.(body\.)?fc\.(weight|bias)\Z"), "an ImageNet classifier (not part of a detector)"),
)


def expected_state(config: ModelConfig) -> dict[str, Tensor]:
    """The state dict (meta tensors: names, shapes, dtypes) of the model ``config`` builds."""
    from gcrepro.modeling.build import build_detector

    with torch.device("meta"):
        return build_detector(config).state_dict()


def fit_to_model(mapped: Mapped, config: ModelConfig, *, model: str,
                 where: str) -> tuple[dict[str, Tensor], Counter, list[str]]:
    """(state dict in the model's key order, counts "filled" and "dropped", notes). ``model`` names the
    model in messages ("entry 2 (mask_rcnn_r50_fpn_gc_r16_1x)")."""
    expected = expected_state(config)
    out: dict[str, Tensor] = {}
    counts: Counter = Counter(filled=0, dropped=0)
    for key, ref in expected.items():
        t = mapped.tensors.get(key)
        if t is None and key.endswith(".num_batches_tracked"):
            out[key] = torch.zeros(ref.shape, dtype=ref.dtype)
            counts["filled"] += 1
        elif t is None:
            raise ConvertError(f"{where}: no {mapped.source_key(key)}: {model} needs it (as {key})")
        elif t.shape != ref.shape:
            raise ConvertError(f"{where}: {mapped.source_key(key)} has shape {tuple(t.shape)}; {model} needs "
                               f"{tuple(ref.shape)} (as {key})")
        else:
            out[key] = t
    dropped: Counter = Counter()
    extra = [(k, mapped.source_key(k)) for k in mapped.tensors if k not in expected]
    for key, source in extra + [(k, k) for k in mapped.unmatched]:
        why = next((why for pattern, why in DROPPABLE if pattern.search(key)), None)
        if why is None:
            raise ConvertError(f"{where}: {source} has no place in {model} (an extra key)")
        dropped[why] += 1
    counts["dropped"] = sum(dropped.values())
    return out, counts, [f"dropped {n} tensor(s): {why}" for why, n in dropped.items()]
