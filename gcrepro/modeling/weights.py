"""Load ImageNet weights into a gcrepro backbone (SPEC §2: GC blocks are NOT pretrained).

``source`` is either a torchvision weights name (``"ResNet50_Weights.IMAGENET1K_V1"``, or a bare
``"IMAGENET1K_V1"`` / ``"DEFAULT"`` resolved from the backbone's depth and groups) or a local file:
a state dict, or a dict holding one under ``"state_dict"`` or ``"model"`` (open-mmlab / mmdet /
torchvision-reference checkpoints). Keys prefixed ``module.``, ``backbone.`` or ``backbone.body.``
are reduced to backbone keys; mmdet 2.x DCN offsets ``conv2.conv_offset`` become ``conv2_offset``;
the ImageNet classifier ``fc.*`` is ignored. Loading is ``strict=False`` and ends with ONE log line
that counts missing and unexpected keys (GC and DCN-offset keys are expected to be missing).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_WEIGHTS_NAME = re.compile(r"^(?:(?P<enum>\w+_Weights)\.)?(?P<member>IMAGENET1K_V\d+|DEFAULT)$")
# (depth, groups, width_per_group) -> torchvision weights enum for a bare member name
_TORCHVISION_ENUMS = {(50, 1, 64): "ResNet50_Weights", (101, 1, 64): "ResNet101_Weights"}
_EXPECTED_MISSING = (("GC", ".context_block."), ("DCN offset", ".conv2_offset."))


@dataclass(frozen=True)
class LoadReport:
    """What ``load_pretrained`` did. ``missing``/``unexpected`` as ``load_state_dict(strict=False)``."""

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # classifier / non-backbone keys dropped on purpose

    def expected_missing(self) -> dict[str, list[str]]:
        """Missing keys that are new in gcrepro (GC blocks, DCN offsets), by kind."""
        return {kind: [k for k in self.missing if tag in f".{k}"] for kind, tag in _EXPECTED_MISSING}

    def other_missing(self) -> list[str]:
        return [k for k in self.missing if not any(tag in f".{k}" for _, tag in _EXPECTED_MISSING)]


def _examples(keys: list[str], n: int = 3) -> str:
    return "[" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + "]"


def _torchvision_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    from torchvision.models import get_weight

    match = _WEIGHTS_NAME.match(name)
    enum = match.group("enum")
    if enum is None:
        arch = (getattr(model, "depth", None), getattr(model, "groups", None), getattr(model, "width_per_group", None))
        enum = _TORCHVISION_ENUMS.get(arch)
        if enum is None:
            raise ValueError(
                f"pretrained={name!r}: torchvision has no ImageNet weights for depth/groups/width_per_group={arch} "
                "(ResNeXt-101 32x4d: pass the local path of open-mmlab's converted file instead)"
            )
    full = f"{enum}.{match.group('member')}"
    try:
        weights = get_weight(full)
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"pretrained={name!r}: {full!r} is not a torchvision weights name ({e})") from e
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # network down, proxy, partial download...
        raise RuntimeError(
            f"pretrained={name!r}: could not fetch {weights.url} ({type(e).__name__}: {e}); download it elsewhere "
            f"and pass the local .pth path, or put it in {torch.hub.get_dir()}/checkpoints/"
        ) from e


def _file_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"pretrained weights file {str(path)!r} could not be read by torch.load: {e}") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"pretrained weights file {str(path)!r}: expected a state dict of tensors, or a dict with one "
            "under 'state_dict' or 'model'"
        )
    return obj


def _backbone_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Reduce a checkpoint's keys to backbone keys. Returns (state, ignored keys)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored: list[str] = []
    for prefix in ("backbone.body.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            ignored = [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    ignored += [k for k in state if k.startswith("fc.")]
    state = {k.replace(".conv2.conv_offset.", ".conv2_offset."): v for k, v in state.items() if not k.startswith("fc.")}
    return state, ignored


def load_pretrained(model: nn.Module, source: str | os.PathLike) -> LoadReport:
    """Load ImageNet weights into ``model`` (strict=False) and log one line about the keys."""
    text = os.fspath(source)
    if _WEIGHTS_NAME.match(text) and not Path(text).exists():
        raw = _torchvision_state_dict(model, text)
    elif not Path(text).exists() and "/" not in text and not text.endswith((".pth", ".pt", ".bin")):
        raise FileNotFoundError(
            f"pretrained={text!r}: no such file, and not a torchvision weights name like "
            "'ResNet50_Weights.IMAGENET1K_V1' or 'IMAGENET1K_V1'"
        )
    else:
        raw = _file_state_dict(Path(text))
    state, ignored = _backbone_keys(raw)

    own = model.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(
            f"pretrained {text!r} does not fit this backbone ({len(mismatched)} shape mismatches, e.g. "
            f"{_examples(mismatched)}); check depth/groups/width_per_group/base_width (ImageNet weights need base_width=64)"
        )
    result = model.load_state_dict(state, strict=False)
    report = LoadReport(
        source=text,
        loaded=len(state) - len(result.unexpected_keys),
        missing=list(result.missing_keys),
        unexpected=list(result.unexpected_keys),
        ignored=ignored,
    )
    expected = report.expected_missing()
    other = report.other_missing()
    level = logging.WARNING if other or report.unexpected else logging.INFO
    logger.log(
        level,
        "pretrained backbone %s: loaded %d tensors; missing %d (expected, new in gcrepro: %s; other: %d %s); "
        "unexpected %d %s; ignored %d classifier/non-backbone keys %s",
        text,
        report.loaded,
        len(report.missing),
        ", ".join(f"{len(v)} {kind} {_examples(v, 1)}" if v else f"0 {kind}" for kind, v in expected.items()),
        len(other),
        _examples(other),
        len(report.unexpected),
        _examples(report.unexpected),
        len(ignored),
        _examples(ignored),
    )
    return report
