"""RunSpec: what one run IS, resolved once and carried whole from training to the report.

    spec = resolve_run("mask_rcnn_r50_fpn_gc_r16_1x", data=None, profile="toy", overrides=["max_iters=50"])
    spec.model      # ModelConfig: every hyperparameter of the detector, num_classes from the data
    spec.train      # TrainConfig: the recipe and run options
    spec.data       # DataSpec: root, kind (toy | coco | coco-subset | custom), val fingerprint
    spec.label      # what its numbers are: "coco" (comparable with the paper), "toy", "custom", "coco-subset"

:func:`resolve_run` is the ONE function that builds a spec: the paper's values for the entry, then the
profile's overrides (``gcrepro.profiles``), then the user's overrides (``--set``, ``table run --set``,
a notebook's ``overrides``), all parsed by one parser (``gcrepro.fields``) and typed. The spec is saved
in every checkpoint and in ``metrics.json``; evaluation, attention maps and the report read it from
there and never resolve again, so a checkpoint rebuilds exactly the model that was trained.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcrepro.data.identity import DataSpec, describe_data
from gcrepro.engine.config import RUN_OPTIONS, VALUE_CHECKS, ConfigError, TrainConfig
from gcrepro.entries import Entry, get_entry
from gcrepro.fields import coerce, field_types, from_plain, parse_text, plain, to_plain
from gcrepro.modeling.config import CONVENTION_PRESETS, ModelConfig, entry_settings
from gcrepro.profiles import PROFILES, Profile, get_profile

logger = logging.getLogger("gcrepro")

SPEC_SCHEMA = 2  # 2: ModelConfig.conventions (schema-1 models used torchvision's geometry)
LABELS = ("coco", "toy", "coco-subset", "custom")
MODEL_FIELDS = field_types(ModelConfig)
TRAIN_FIELDS = field_types(TrainConfig)
assert not set(MODEL_FIELDS) & set(TRAIN_FIELDS), "ModelConfig and TrainConfig field names must not overlap"
NOT_SETTABLE = {"num_classes": "it comes from the dataset's categories"}
# Model fields that choose an implementation, not what is computed (like TrainConfig.RUN_OPTIONS).
MODEL_RUN_OPTIONS = ("gc_impl",)


def settable_keys() -> list[str]:
    return [k for k in (*TRAIN_FIELDS, *MODEL_FIELDS) if k not in NOT_SETTABLE]


def parse_overrides(items: list[str] | Mapping[str, Any] | None, *, source: str = "--set") -> dict[str, Any]:
    """``["key=value", ...]`` (text) or ``{key: value}`` (text or Python values) -> ``{field: typed value}``.

    Every key must be a TrainConfig or ModelConfig field (``model.`` prefix allowed). Raises
    ConfigError, one line naming the key and what is allowed, at the first bad item.
    """
    if not items:
        return {}
    if isinstance(items, Mapping):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{source} {item!r}: expected key=value")
            pairs.append((key.strip(), text))
    out: dict[str, Any] = {}
    for key, value in pairs:
        key = key.removeprefix("model.")
        if key in NOT_SETTABLE:
            raise ConfigError(f"{source} {key}: not settable ({NOT_SETTABLE[key]}); allowed keys: "
                              f"{', '.join(settable_keys())}")
        tp = TRAIN_FIELDS.get(key) or MODEL_FIELDS.get(key)
        if tp is None:
            raise ConfigError(f"{source} {key}: unknown key; allowed keys: {', '.join(settable_keys())}")
        try:
            typed = parse_text(value, tp) if isinstance(value, str) else coerce(value, tp)
        except ValueError as err:
            raise ConfigError(f"{source} {key}={value}: bad value; {key} takes {err}") from None
        check = VALUE_CHECKS.get(key)
        if check is not None and not check[0](typed):
            raise ConfigError(f"{source} {key}={value}: bad value; {key} takes {check[1]}")
        out[key] = typed
    return out


def _shrunk_schedule(epochs: int, lr_steps: tuple[float, ...], divisor: int) -> tuple[int, tuple[float, ...]]:
    """1x (12 epochs, steps 8, 11) / 6 -> 2 epochs, steps at 1.333 and 1.833 (the same fractions)."""
    new = max(1, epochs // divisor)
    return new, tuple(round(s * new / epochs, 3) for s in lr_steps)


def resolve_configs(entry: Entry, *, profile: Profile, num_classes: int,
                    overrides: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The paper's values for ``entry`` -> ``profile``'s overrides -> the chosen conventions' preset
    (``CONVENTION_PRESETS``: e.g. ``conventions=mmdet`` brings mmdetection's RoIAlign sampling) ->
    ``overrides`` (typed, from :func:`parse_overrides`). ``epochs`` set without ``lr_steps`` keeps the steps at
    the same fractions."""
    model: dict[str, Any] = {**entry_settings(entry), "num_classes": num_classes}
    train: dict[str, Any] = {"epochs": entry.epochs, "lr_steps": tuple(float(s) for s in entry.lr_steps)}
    if profile.schedule_divisor > 1:
        train["epochs"], train["lr_steps"] = _shrunk_schedule(train["epochs"], train["lr_steps"], profile.schedule_divisor)
    conventions = overrides.get("conventions", profile.overrides.get("conventions", "paper"))
    preset = CONVENTION_PRESETS.get(conventions, {})
    for layer in (profile.overrides, preset, overrides):
        changes = dict(layer)
        if "epochs" in changes and "lr_steps" not in changes:
            changes["lr_steps"] = tuple(round(s * changes["epochs"] / train["epochs"], 3) for s in train["lr_steps"])
        for key, value in changes.items():
            (model if key in MODEL_FIELDS else train)[key] = value
    try:
        return ModelConfig(**model), TrainConfig(**train)
    except ValueError as err:  # ModelConfig's own consistency checks
        raise ConfigError(str(err)) from None


def label_of(profile: str, data: DataSpec) -> str:
    """What numbers of a run with this profile on this val set are (see the module docstring of
    gcrepro.data.identity). Only "coco" (paper profile on COCO val2017) is compared with the paper."""
    if profile == "toy" or data.kind == "toy":
        return "toy"
    if profile == "paper" and data.kind == "coco":
        return "coco"
    return data.kind  # "coco-subset" | "custom"


def label_text(label: str, data: DataSpec | None) -> str:
    """The label in words, for captions: what the numbers are and what they are not."""
    name = data.name if data is not None else "?"
    if label == "coco":
        return "COCO val2017 (comparable with the paper)"
    if label == "toy":
        if data is None or (data.kind == "toy" and name == "toy"):
            what = "the synthetic toy set"
        elif data.kind == "toy":
            what = f"the synthetic toy set in {name}"  # another generator's (toy_context) or seed's set
        else:
            what = f"{name}, toy profile"
        return f"toy: {what}; NOT COCO numbers"
    if label == "coco-subset":
        size = f"{data.val_images} val images" if data is not None else "not all of val2017"
        return f"coco-subset: {name} ({size}, not the whole val2017); not comparable with the paper"
    if label == "custom":
        return f"custom: {name}; not COCO numbers"
    return f"{label}: not verified as COCO val2017; not comparable with the paper"


@dataclass(frozen=True)
class RunSpec:
    """Entry, data, profile, the resolved ModelConfig and TrainConfig, and what the user overrode."""

    entry: str
    profile: str
    data: DataSpec
    model: ModelConfig
    train: TrainConfig
    overrides: dict[str, Any] = field(default_factory=dict)  # the user's overrides, typed (for display)

    @property
    def label(self) -> str:
        return label_of(self.profile, self.data)

    @property
    def label_text(self) -> str:
        return label_text(self.label, self.data)

    def with_data(self, data: DataSpec) -> RunSpec:
        """The same model and recipe, evaluated on ``data`` (its class count must fit the model)."""
        if data.num_classes != self.model.num_classes:
            raise ConfigError(
                f"{data.root}: {data.num_classes - 1} categories, but the model of {self.entry} was trained on "
                f"{self.model.num_classes - 1} ({self.data.root}); evaluate it on data with the same categories")
        return dataclasses.replace(self, data=data)

    def differences_from_paper(self) -> dict[str, dict[str, Any]]:
        """``{field: {"paper": value, "used": value}}`` for every model or recipe field that differs from
        the paper's (run options such as num_workers or gc_impl aside)."""
        paper_model, paper_train = resolve_configs(get_entry(self.entry), profile=PROFILES["paper"],
                                                   num_classes=self.model.num_classes, overrides={})
        out: dict[str, dict[str, Any]] = {}
        for ours, paper, skip in ((self.model, paper_model, MODEL_RUN_OPTIONS), (self.train, paper_train, RUN_OPTIONS)):
            used, base = to_plain(ours), to_plain(paper)
            out.update({k: {"paper": base[k], "used": v} for k, v in used.items() if k not in skip and v != base[k]})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (safe for ``torch.load(weights_only=True)`` too)."""
        return {
            "schema": SPEC_SCHEMA, "entry": self.entry, "profile": self.profile, "label": self.label,
            "data": to_plain(self.data), "model": to_plain(self.model), "train": to_plain(self.train),
            "overrides": plain(self.overrides),
        }

    @classmethod
    def from_dict(cls, values: Any, *, where: str) -> RunSpec:
        """Inverse of ``to_dict``. A missing or bad field raises ConfigError naming ``where`` and the field;
        fields the spec lacks (written by an older gcrepro) take today's default, with a warning."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: the run spec is a {type(values).__name__}, expected a mapping")
        for key in ("entry", "profile", "data", "model", "train"):
            if key not in values:
                raise ConfigError(f"{where}: the run spec has no field {key!r}")
        if int(values.get("schema", SPEC_SCHEMA)) > SPEC_SCHEMA:
            raise ConfigError(f"{where}: run spec schema {values['schema']} is newer than this gcrepro's "
                              f"({SPEC_SCHEMA}); update gcrepro")
        model_values = dict(values["model"])
        if "conventions" not in model_values:
            # Written before the conventions existed: the model then ran torchvision's geometry (anchors, box
            # coder, RoIAlign, mask pasting) with the training rules its other fields record.
            model_values["conventions"] = "torchvision"
            logger.warning("%s: a run spec from before the conventions: conventions=torchvision, the geometry "
                           "it was trained with", where)
        try:
            data, _ = from_plain(DataSpec, dict(values["data"]), where=f"{where}: spec.data")
            model, missing_model = from_plain(ModelConfig, model_values, where=f"{where}: spec.model")
            train, missing_train = from_plain(TrainConfig, dict(values["train"]), where=f"{where}: spec.train")
        except (ValueError, TypeError) as err:
            raise ConfigError(str(err)) from None
        missing = [f"model.{k}" for k in missing_model] + [f"train.{k}" for k in missing_train]
        if missing:
            logger.warning("%s: the run spec has no %s (written by an older gcrepro): today's default used",
                           where, ", ".join(missing))
        get_entry(values["entry"])  # an unknown entry fails here, naming it
        overrides = parse_overrides(dict(values.get("overrides") or {}), source=f"{where}: spec.overrides")
        return cls(entry=str(values["entry"]), profile=str(values["profile"]), data=data, model=model,
                   train=train, overrides=overrides)

    def summary(self) -> list[tuple[str, str]]:
        """(what, value) lines for a notebook or a log: the run in a few lines."""
        diffs = self.differences_from_paper()
        return [
            ("entry", self.entry),
            ("data", f"{self.data.root} ({self.data.kind}, {self.data.val_images} val images, "
                     f"{self.data.num_classes - 1} categories)"),
            ("profile", self.profile),
            ("numbers labelled", self.label_text),
            ("your overrides", ", ".join(f"{k}={v}" for k, v in self.overrides.items()) or "none"),
            ("differs from the paper in", ", ".join(f"{k}={d['used']} (paper {d['paper']})" for k, d in diffs.items())
             or "nothing"),
        ]

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self.summary())
        return f"<table>{rows}</table>"


def resolve_run(
    entry: str | int | Entry,
    *,
    data: str | Path | DataSpec | None = None,
    profile: str | None = None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    source: str = "--set",
) -> RunSpec:
    """THE one function that builds a RunSpec (see the module docstring).

    ``data``: a dataset root, a DataSpec, or None (the built-in toy set). ``profile``: "paper" | "toy";
    None: toy on toy data, paper otherwise. ``overrides``: TrainConfig and ModelConfig fields.
    Bad keys, values or combinations raise ConfigError (one line) before anything is built.
    """
    e = get_entry(entry)
    typed = parse_overrides(overrides, source=source)
    data_spec = data if isinstance(data, DataSpec) else describe_data(data)
    name = profile or ("toy" if data_spec.kind == "toy" else "paper")
    try:
        prof = get_profile(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model, train = resolve_configs(e, profile=prof, num_classes=data_spec.num_classes, overrides=typed)
    return RunSpec(entry=e.name, profile=prof.name, data=data_spec, model=model, train=train, overrides=typed)
