"""``WORK_DIR/metrics.json``: the one typed reader and writer.

Training writes its part, evaluation its part; each merges into the file atomically. Layout
(``schema`` 2)::

    schema, entry, label            label: what the AP numbers are (gcrepro.runspec.label_of)
    spec                            the RunSpec as trained (gcrepro.runspec.RunSpec.to_dict)
    iterations, mem_gb, mem_kind, train_s_per_iter, train_images_per_s
    train                           lr, total_batch, world_size, iters_per_epoch, differs_from_paper
    hardware, versions, git_commit  of the training run
    eval_data                       the DataSpec of the val set the AP was measured on
    bbox, segm                      the 12 COCO numbers each (percent; null where COCOeval has no ground truth)
    inf_fps, eval                   fps (batch 1, whole pipeline); checkpoint, images, provenance of the evaluation

Files without ``schema`` (gcrepro before the RunSpec) still read: their label is ``toy`` when they
say so, else ``unverified`` (never compared with the paper), and ``spec`` is None.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcrepro.atomic import write_json_atomic
from gcrepro.data.identity import DataSpec
from gcrepro.fields import from_plain, plain, to_plain
from gcrepro.runspec import RunSpec, label_of, label_text

logger = logging.getLogger("gcrepro")

METRICS_JSON = "metrics.json"
SCHEMA = 2
# pycocotools' 12 summary numbers, in COCOeval.stats order.
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_TRAIN_KEYS = ("iterations", "mem_gb", "mem_kind", "train_s_per_iter", "train_images_per_s", "train",
               "hardware", "versions", "git_commit")
_EVAL_KEYS = ("eval_data", "bbox", "segm", "inf_fps", "eval")


class MetricsError(ValueError):
    """A metrics.json that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics.json, typed. Numbers absent from the file are None."""

    path: Path
    schema: int
    entry: str
    label: str  # "coco" | "toy" | "custom" | "coco-subset" | "unverified" (old files)
    spec: RunSpec | None  # None in files written before the RunSpec
    eval_data: DataSpec | None  # the val set of bbox / segm
    bbox: dict[str, float | None] | None = None
    segm: dict[str, float | None] | None = None
    inf_fps: float | None = None
    iterations: int | None = None
    mem_gb: float | None = None
    mem_kind: str | None = None
    train_s_per_iter: float | None = None
    train_images_per_s: float | None = None
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    git_commit: str | None = None
    legacy_profile: str | None = None  # old files: their "profile"

    @property
    def profile(self) -> str | None:
        return self.spec.profile if self.spec is not None else self.legacy_profile

    @property
    def data(self) -> DataSpec | None:
        """The data the AP numbers describe: the val set evaluated on, else the training data."""
        return self.eval_data or (self.spec.data if self.spec is not None else None)

    @property
    def label_text(self) -> str:
        return label_text(self.label, self.data)

    @property
    def box_ap(self) -> float | None:
        return (self.bbox or {}).get("AP")

    @property
    def mask_ap(self) -> float | None:
        return (self.segm or {}).get("AP")

    @property
    def evaluated(self) -> bool:
        return self.bbox is not None and self.segm is not None


def _path(path_or_dir: str | Path) -> Path:
    path = Path(path_or_dir)
    return path / METRICS_JSON if path.is_dir() else path


def _number(raw: dict, key: str, path: Path) -> float | None:
    value = raw.get(key)
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise MetricsError(f"{path}: field {key!r} is {value!r}, expected a number or null")


def _coco(raw: dict, key: str, path: Path) -> dict[str, float | None] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MetricsError(f"{path}: field {key!r} is a {type(value).__name__}, expected the 12 COCO numbers")
    missing = [k for k in COCO_KEYS if k not in value]
    if missing:
        raise MetricsError(f"{path}: field {key!r} has no {missing[0]!r} (expected {', '.join(COCO_KEYS)})")
    return {k: _number(value, k, path) for k in COCO_KEYS}


def read_metrics(path_or_dir: str | Path) -> RunMetrics:
    """Read ``metrics.json`` (a file, or the run folder holding it). MetricsError names a bad field."""
    path = _path(path_or_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no metrics (written by gcrepro train / gcrepro eval)") from None
    except (OSError, ValueError) as err:
        raise MetricsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise MetricsError(f"{path}: a {type(raw).__name__}, expected a JSON object")
    if not raw.get("entry"):
        raise MetricsError(f"{path}: missing field 'entry'")
    schema = raw.get("schema", 1)
    spec = eval_data = None
    legacy_profile = None
    if schema >= 2:
        if "spec" not in raw:
            raise MetricsError(f"{path}: missing field 'spec'")
        try:
            spec = RunSpec.from_dict(raw["spec"], where=f"{path}")
            if raw.get("eval_data") is not None:
                eval_data, _ = from_plain(DataSpec, raw["eval_data"], where=f"{path}: eval_data")
        except ValueError as err:
            raise MetricsError(str(err)) from None
        label = label_of(spec.profile, eval_data or spec.data)
    else:  # before the RunSpec: "data" was "toy" or (for ANY other folder) "coco"
        legacy_profile = raw.get("profile")
        label = "toy" if "toy" in (raw.get("data"), legacy_profile) else "unverified"
    return RunMetrics(
        path=path, schema=int(schema), entry=str(raw["entry"]), label=label, spec=spec, eval_data=eval_data,
        bbox=_coco(raw, "bbox", path), segm=_coco(raw, "segm", path), inf_fps=_number(raw, "inf_fps", path),
        iterations=raw.get("iterations"), mem_gb=_number(raw, "mem_gb", path), mem_kind=raw.get("mem_kind"),
        train_s_per_iter=_number(raw, "train_s_per_iter", path),
        train_images_per_s=_number(raw, "train_images_per_s", path),
        train=dict(raw.get("train") or raw.get("config") or {}), eval=dict(raw.get("eval") or {}),
        hardware=raw.get("hardware") if isinstance(raw.get("hardware"), dict) else None,
        versions=raw.get("versions"), git_commit=raw.get("git_commit"), legacy_profile=legacy_profile,
    )


def _merge(work_dir: str | Path, spec: RunSpec, updates: dict[str, Any], *, keep: tuple[str, ...]) -> Path:
    """Write ``updates`` into WORK_DIR/metrics.json, keeping the ``keep`` fields of the same run
    (same spec); another run's fields are dropped."""
    path = _path(Path(work_dir) / METRICS_JSON)
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            old = read_metrics(path)
        except (MetricsError, ValueError) as err:
            logger.warning("%s: unreadable (%s); rewritten", path, err)
        else:
            if old.spec is not None and old.spec.to_dict() == spec.to_dict():
                raw = json.loads(path.read_text())
                current = {k: raw[k] for k in keep if k in raw}
    eval_data = updates.get("eval_data", current.get("eval_data"))
    data = from_plain(DataSpec, eval_data, where=str(path))[0] if eval_data else spec.data
    out = {"schema": SCHEMA, "entry": spec.entry, "label": label_of(spec.profile, data), "spec": spec.to_dict(),
           **current, **plain(updates)}
    return write_json_atomic(path, out)


def write_train_metrics(work_dir: str | Path, spec: RunSpec, *, iterations: int, mem_gb: float, mem_kind: str,
                        train_s_per_iter: float | None, train_images_per_s: float | None, train: dict[str, Any],
                        provenance: dict[str, Any]) -> Path:
    """Training's part (SPEC §5 columns); an evaluation of the same run already in the file is kept."""
    return _merge(work_dir, spec, {
        "iterations": iterations, "mem_gb": mem_gb, "mem_kind": mem_kind, "train_s_per_iter": train_s_per_iter,
        "train_images_per_s": train_images_per_s, "train": train,
        **{k: provenance.get(k) for k in ("hardware", "versions", "git_commit")},
    }, keep=_EVAL_KEYS)


def write_eval_metrics(work_dir: str | Path, spec: RunSpec, *, eval_data: DataSpec, bbox: dict, segm: dict,
                       inf_fps: float | None, eval: dict[str, Any]) -> Path:
    """Evaluation's part; the training part of the same run (same spec) is kept."""
    return _merge(work_dir, spec, {"eval_data": to_plain(eval_data), "bbox": bbox, "segm": segm,
                                   "inf_fps": inf_fps, "eval": eval}, keep=_TRAIN_KEYS)
