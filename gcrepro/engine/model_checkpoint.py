"""The model a checkpoint holds, whatever its layout, ready to evaluate: ``open_checkpoint``.

- a gcrepro checkpoint (``gcrepro train``): its RunSpec, exactly as trained (an older gcrepro's
  ``config``: resolved from it, with a warning);
- a converted checkpoint (``gcrepro convert``): its ModelConfig (with its conventions) and the paper's
  profile;
- any other layout the converter reads (mmdetection 2.x/3.x, the original GCNet code, torchvision):
  converted in memory, refused before anything runs when it is not the entry named.

Converted models were trained elsewhere on COCO with the paper's recipe: their spec has the ``paper``
profile and the val set they are evaluated on, so their numbers are labelled by that val set.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from gcrepro.engine.config import ConfigError
from gcrepro.runspec import RunSpec

logger = logging.getLogger("gcrepro.engine")


@dataclass(frozen=True)
class CheckpointModel:
    trained: RunSpec  # what the model is, as trained (a converted model: on the val set it is evaluated on)
    spec: RunSpec  # the same, on the val set it is evaluated on
    state_dict: dict[str, Tensor]  # gcrepro's keys
    iteration: int | None  # training iteration, when the checkpoint says
    layout: str  # "gcrepro" | "converted" | a converter layout ("mmdet", "gcnet_v1", "torchvision")


def trained_spec(entry: str | int, checkpoint: Path, state: dict[str, Any], *, profile: str | None = None,
                 data: str | Path | None = None) -> RunSpec:
    """The run spec of a gcrepro checkpoint of ``entry``: the one it records, or (older gcrepro) one resolved
    from the settings it records. Another entry or profile raises ConfigError naming both."""
    from gcrepro.engine import checkpoint as ckpt
    from gcrepro.entries import get_entry

    name = get_entry(entry).name
    spec = ckpt.spec_from_checkpoint(state, checkpoint)
    if spec is None:
        spec = ckpt.legacy_spec(state, checkpoint, entry=name, profile=profile, data=data)
    if spec.entry != name:
        raise ConfigError(f"checkpoint {checkpoint} was trained for {spec.entry}, not {name}")
    if profile is not None and profile != spec.profile:
        raise ConfigError(f"checkpoint {checkpoint} was trained with profile {spec.profile!r}, not {profile!r}")
    return spec


def eval_data_of(spec: RunSpec, data: str | Path | None) -> RunSpec:
    """``spec`` on the val set it is evaluated on: ``data``, or the dataset it was trained on."""
    from gcrepro.data.identity import describe_data

    if data is None:
        if not Path(spec.data.root).is_dir():
            raise ConfigError(f"the dataset this model was trained on, {spec.data.root}, is gone; pass --data")
        data = spec.data.root
    described = describe_data(data, splits=("val",))
    if str(data) == spec.data.root and described.val_sha256 != spec.data.val_sha256:
        logger.warning("%s: the val annotations changed since training (fingerprint %s, now %s)",
                       data, spec.data.val_sha256[:12], described.val_sha256[:12])
    return spec.with_data(described)


def _converted_spec(entry: str, model_config: Any, data: str | Path | None, checkpoint: Path) -> RunSpec:
    """A model trained elsewhere with the paper's recipe, on the val set ``data`` (default: data/coco)."""
    from gcrepro.data.identity import describe_data
    from gcrepro.entries import get_entry
    from gcrepro.paths import data_root
    from gcrepro.profiles import PROFILES
    from gcrepro.runspec import resolve_configs

    if data is None:
        data = data_root() / "coco"
        if not Path(data).is_dir():
            raise ConfigError(f"{checkpoint} records no dataset and there is no {data}: pass --data (COCO 2017 layout)")
    data_spec = describe_data(data, splits=("val",))
    _, train = resolve_configs(get_entry(entry), profile=PROFILES["paper"], num_classes=model_config.num_classes,
                               overrides={})
    spec = RunSpec(entry=entry, profile="paper", data=data_spec, model=model_config, train=train)
    return spec.with_data(data_spec)  # the class count must fit the data


@dataclass(frozen=True)
class HeldModel:
    """What a checkpoint holds, before any dataset is involved."""

    entry: str
    model_config: Any  # ModelConfig
    state_dict: dict[str, Tensor]
    trained: RunSpec | None  # a gcrepro checkpoint's run spec; None for models trained elsewhere
    iteration: int | None
    layout: str  # "gcrepro" | "converted" | a converter layout ("mmdet", "gcnet_v1", "torchvision")


def read_model(entry: str | int, checkpoint: str | Path, *, profile: str | None = None,
               data: str | Path | None = None) -> HeldModel:
    """The model ``checkpoint`` holds (any layout, see the module docstring) as entry ``entry``. A checkpoint
    of another entry or profile raises ConfigError / ConvertError naming both. ``data`` only serves
    checkpoints of an older gcrepro (their dataset)."""
    from gcrepro.convert import convert_checkpoint, load_checkpoint_any
    from gcrepro.entries import get_entry
    from gcrepro.fields import from_plain
    from gcrepro.modeling.config import ModelConfig

    path = Path(checkpoint)
    name = get_entry(entry).name
    state = load_checkpoint_any(path)
    if "spec" in state or ("config" in state and "model" in state):  # trained by gcrepro
        from gcrepro.engine.checkpoint import model_state_from

        trained = trained_spec(name, path, state, profile=profile, data=data)
        return HeldModel(entry=name, model_config=trained.model, state_dict=model_state_from(state), trained=trained,
                         iteration=state.get("iteration"), layout="gcrepro")
    if profile not in (None, "paper"):
        raise ConfigError(f"checkpoint {path} was trained elsewhere with the paper's recipe, not profile {profile!r}")
    if "model_config" in state and "conversion" in state:  # written by gcrepro convert
        recorded = state["conversion"].get("entry")
        if recorded != name:
            raise ConfigError(f"checkpoint {path} was converted for {recorded}, not {name}")
        try:
            config, _ = from_plain(ModelConfig, state["model_config"], where=f"checkpoint {path}: model_config")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return HeldModel(entry=name, model_config=config, state_dict=state["model"], trained=None, iteration=None,
                         layout="converted")
    del state
    converted = convert_checkpoint(path, entry=name)  # refuses another architecture, naming the key
    logger.info("checkpoint %s: %s; converted in memory", path, "; ".join(converted.summary()[1:4]))
    return HeldModel(entry=name, model_config=converted.model_config, state_dict=converted.state_dict, trained=None,
                     iteration=None, layout=converted.layout)


def open_checkpoint(entry: str | int, checkpoint: str | Path, *, data: str | Path | None = None,
                    profile: str | None = None) -> CheckpointModel:
    """The model of ``checkpoint`` (any layout) as entry ``entry``, on the val set ``data`` (default: the data
    it was trained on; data/coco for a model trained elsewhere). A checkpoint of another entry, profile or
    class count raises ConfigError / ConvertError."""
    held = read_model(entry, checkpoint, profile=profile, data=data)
    if held.trained is not None:
        return CheckpointModel(trained=held.trained, spec=eval_data_of(held.trained, data), state_dict=held.state_dict,
                               iteration=held.iteration, layout=held.layout)
    spec = _converted_spec(held.entry, held.model_config, data, Path(checkpoint))
    return CheckpointModel(trained=spec, spec=spec, state_dict=held.state_dict, iteration=None, layout=held.layout)
