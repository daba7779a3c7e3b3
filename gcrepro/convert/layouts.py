"""Which layout a checkpoint is in, and its state dict in gcrepro names: ``read_source(path) -> Source``.

    layout        wrapper                          keys
    mmdet         {"meta", "state_dict", ...}      roi_head.* (mmdetection 2.x / 3.x)
    gcnet_v1      {"meta", "state_dict", ...}      bbox_head.*, mask_head.* (original GCNet = mmdetection v1)
    torchvision   a bare state dict                backbone.body.*, roi_heads.* (maskrcnn_resnet50_fpn)
    gcrepro       {"model", "spec" | "model_config", ...}, or a bare state dict of a model torchvision has
                  no counterpart of (GC, DCN, cascade or 4conv1fc keys)

The layout is read from the keys, not from the wrapper. A ``module.`` prefix on every key (a saved
DistributedDataParallel) is removed first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from gcrepro.convert.errors import ConvertError
from gcrepro.convert.gcnet_v1 import from_gcnet_v1
from gcrepro.convert.keymap import Mapped, Rule, apply_rules
from gcrepro.convert.mmdet import from_mmdet
from gcrepro.convert.safe_load import load_checkpoint_any
from gcrepro.convert.torchvision_layout import from_torchvision

LAYOUT_NAMES = {
    "mmdet": "mmdetection 2.x/3.x",
    "gcnet_v1": "original GCNet (mmdetection v1)",
    "torchvision": "torchvision",
    "gcrepro": "gcrepro",
}
# ModelConfig.conventions of a model converted from each layout (gcrepro: what its checkpoint says)
CONVENTIONS = {"mmdet": "mmdet", "gcnet_v1": "paper", "torchvision": "torchvision"}
_GCREPRO_ONLY = (".context_block.", ".conv2_offset.", "roi_heads.box_heads.", "roi_heads.box_head.0.0.")
_META_KEYS = ("mmdet_version", "mmcv_version", "mmengine_version", "experiment_name", "epoch", "iter", "time", "seed")


@dataclass
class Source:
    """A checkpoint file read: its layout, state dict in gcrepro names, and what came with it."""

    path: Path
    layout: str  # one of LAYOUT_NAMES
    mapped: Mapped
    tensors_in: int
    meta: dict[str, Any]  # the checkpoint's own metadata (mmdetection "meta"), raw
    left_behind: list[str]  # top-level entries that are not the weights (optimizer, message_hub, ...)
    gcrepro_record: dict[str, Any] = field(default_factory=dict)  # gcrepro: {"entry", "model" (plain config)}

    @property
    def where(self) -> str:
        return str(self.path)


def _state_dict_of(checkpoint: dict[str, Any]) -> tuple[dict[str, Tensor], str | None]:
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint.get(wrapper), dict):
            return checkpoint[wrapper], wrapper
    return checkpoint, None


def _check_tensors(state_dict: dict[str, Any], path: Path, wrapper: str | None) -> None:
    if not state_dict:
        raise ConvertError(f"{path}: the state dict is empty")
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            where = f"{wrapper}[{key!r}]" if wrapper else repr(key)
            raise ConvertError(f"{path}: {where} is a {type(value).__name__}, not a tensor: not a model state dict")


def _layout_of(keys: list[str], checkpoint: dict[str, Any], wrapper: str | None, path: Path) -> str:
    if any(k.startswith("roi_head.") for k in keys):
        return "mmdet"
    if any(k.startswith(("bbox_head.", "mask_head.")) for k in keys):
        return "gcnet_v1"
    if any(k.startswith("backbone.body.") for k in keys):
        recorded = wrapper == "model" and ("spec" in checkpoint or "model_config" in checkpoint)
        if recorded or any(part in k for k in keys for part in _GCREPRO_ONLY):
            return "gcrepro"
        return "torchvision"
    raise ConvertError(
        f"{path}: unknown layout: no roi_head.* (mmdetection 2.x/3.x), bbox_head.* (mmdetection v1) or "
        f"backbone.body.* (torchvision, gcrepro) keys; its first keys: {', '.join(keys[:3])}")


def _gcrepro_record(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a gcrepro checkpoint says its model is: the run spec's, or a converted checkpoint's."""
    spec = checkpoint.get("spec")
    if isinstance(spec, dict):
        return {"entry": spec.get("entry"), "model": spec.get("model")}
    conversion = checkpoint.get("conversion")
    if isinstance(checkpoint.get("model_config"), dict):
        return {"entry": conversion.get("entry") if isinstance(conversion, dict) else None,
                "model": checkpoint["model_config"]}
    return {}


def read_source(path: str | Path) -> Source:
    """Load ``path`` safely, tell its layout and map its state dict to gcrepro names."""
    path = Path(path)
    checkpoint = load_checkpoint_any(path)
    state_dict, wrapper = _state_dict_of(checkpoint)
    _check_tensors(state_dict, path, wrapper)
    keys = list(state_dict)
    notes = []
    if all(k.startswith("module.") for k in keys):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        keys = list(state_dict)
        notes.append("removed the 'module.' prefix of every key (a saved DistributedDataParallel)")
    layout = _layout_of(keys, checkpoint, wrapper, path)
    if layout == "mmdet":
        mapped = from_mmdet(state_dict, where=str(path))
    elif layout == "gcnet_v1":
        mapped = from_gcnet_v1(state_dict, where=str(path))
    elif layout == "torchvision":
        mapped = from_torchvision(state_dict, where=str(path))
    else:
        mapped = apply_rules(state_dict, [Rule("{rest}", "{rest}")], where=str(path))
    mapped.notes[:0] = notes
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    read = (wrapper, "meta", "spec", "model_config", "conversion") if layout == "gcrepro" else (wrapper, "meta")
    left = [str(k) for k in checkpoint if k not in read] if wrapper else []
    return Source(path=path, layout=layout, mapped=mapped, tensors_in=len(keys), meta=meta, left_behind=left,
                  gcrepro_record=_gcrepro_record(checkpoint) if layout == "gcrepro" else {})


def plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able facts of a checkpoint's metadata: versions, experiment name, epoch, class names."""
    out = {k: meta[k] for k in _META_KEYS if isinstance(meta.get(k), (str, int, float, bool))}
    classes = meta.get("CLASSES")  # mmdetection 1.x/2.x
    if classes is None and isinstance(meta.get("dataset_meta"), dict):
        classes = meta["dataset_meta"].get("classes")  # mmdetection 3.x
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        out["classes"] = list(classes)
    return out


def config_text(meta: dict[str, Any]) -> str | None:
    """The training config as text: mmdetection 1.x/2.x ``meta["config"]``, 3.x (mmengine) ``meta["cfg"]``."""
    for key in ("config", "cfg"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key]
    return None
