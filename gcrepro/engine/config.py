"""TrainConfig: the training recipe and run options as one typed record.

Resolution order (each later step overrides the earlier one):

1. the paper's recipe (SPEC §4), written out as the field defaults below;
2. the profile: ``toy`` changes a documented handful of fields (:data:`TOY_PROFILE`);
3. the table entry: epochs and lr steps (1x: 12, (8, 11); 2x: 24, (16, 22));
4. command-line options (``--amp``, ``--seed``, ...);
5. ``--set key=value`` overrides, parsed to the field's type (``epochs`` without ``lr_steps``
   moves the steps to the same fractions of the new length).

``--set`` also accepts the keys of ``gcrepro.modeling.build.ModelConfig``; those are passed to
``gcrepro.build_model`` as keyword overrides. An unknown key or a bad value raises
:class:`ConfigError` whose message is one line naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A bad ``--set`` key or value; the message is one line, printable as is."""


AMP_MODES = ("none", "bf16", "fp16")
PROFILES = ("paper", "toy")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model's own architecture."""

    # --- what is trained on what (set by the command line, not by --set) ---
    entry: str = ""
    profile: str = "paper"  # "paper" | "toy"
    data: str = ""  # dataset root (COCO 2017 layout)
    data_kind: str = "coco"  # "toy" | "coco"

    # --- the paper's recipe, SPEC §4 (mmdet v0.6 configs/gcnet/*: optimizer, lr_config) ---
    images_per_gpu: int = 2  # SPEC §4: 8 GPUs x 2 images; on CPU a "GPU" is one process
    base_lr: float = 0.02  # SPEC §4: lr 0.02 for a total batch of 16 ...
    base_batch_size: int = 16  # ... scaled linearly: lr = base_lr * total_batch / 16
    momentum: float = 0.9  # SPEC §4
    weight_decay: float = 1e-4  # SPEC §4: on all parameters
    warmup_iters: int = 500  # SPEC §4: linear warmup over 500 iterations ...
    warmup_ratio: float = 1.0 / 3.0  # ... starting from 1/3 of the lr
    epochs: int = 12  # SPEC §4: 1x = 12 epochs (2x = 24), taken from the entry
    lr_steps: tuple[float, ...] = (8, 11)  # SPEC §4: lr x0.1 after epochs 8 and 11 (16, 22 for 2x)
    lr_gamma: float = 0.1  # SPEC §4
    grad_clip_norm: float = 35.0  # SPEC §4: clip the L2 norm of all gradients at 35
    max_iters: int = 0  # stop after this many iterations in total (0: run all epochs)

    # --- run options ---
    num_workers: int = 2  # data-loading processes per rank
    cpu_threads: int = 0  # CPU runs: compute threads per process (0: PyTorch's default, one per core)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms + seeded data workers
    amp: str = "none"  # "none" | "bf16" | "fp16" (fp16 uses a GradScaler)
    channels_last: bool = False
    log_interval: int = 20  # iterations between metrics.jsonl lines
    checkpoint_interval: int = 0  # iterations between checkpoints; 0: at the end of each epoch
    keep_checkpoints: int = 0  # keep only the newest N iter_*.pth files; 0: keep all
    timing_skip_iters: int = 5  # SPEC §5: first iterations of each epoch excluded from s/iter
    gc_impl: str = "auto"  # GC op implementation passed to build_model
    pretrained_backbone: str | None = None  # ImageNet backbone file passed to build_model

    # --- keyword overrides for gcrepro.build_model (keys of ModelConfig) ---
    model: dict[str, Any] = field(default_factory=dict)

    def total_batch(self, world_size: int) -> int:
        return self.images_per_gpu * world_size

    def scaled_lr(self, world_size: int) -> float:
        """SPEC §4: lr = 0.02 * total_batch / 16 (linear scaling rule)."""
        return self.base_lr * self.total_batch(world_size) / self.base_batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/`weights_only`-safe types (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["lr_steps"] = list(self.lr_steps)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "lr_steps" in values:
            values["lr_steps"] = tuple(float(s) for s in values["lr_steps"])
        values["model"] = dict(values.get("model") or {})
        return cls(**values)


# Fields set by dedicated command-line flags, not by --set.
_NOT_SETTABLE = ("entry", "profile", "data", "data_kind", "model")

# The toy profile: what differs from the paper's recipe so that a toy entry learns in about two
# minutes on a CPU core (toy data: ~500 images of 160-240 px; the model's toy profile shrinks
# input scale and backbone width). Epochs and lr steps of the toy profile are derived from the
# entry's schedule by TOY_EPOCH_DIVISOR (1x: 12 -> 2 epochs = 496 iterations, steps at the same
# fractions). Measured (idle 2-core AMD EPYC, 1 thread): rows 1/2/3 train in 132/153/148 s and
# reach box AP 12.9/14.0/13.8 on toy val (untrained: 0.0); three rows at once take 296 s.
TOY_PROFILE: dict[str, Any] = {
    "warmup_iters": 50,  # the paper's 500 would cover most of a toy run
    # 8x the paper's lr per 16 images (0.02 at the toy's batch of 2): a from-scratch toy run learns
    # faster with it (measured box AP after 2 toy epochs, row 1, stem frozen: 4.1 at 0.04, 5.7 at
    # 0.08, 10.0 at 0.16; 0.32 stalls at AP 0)
    "base_lr": 0.16,
    "num_workers": 0,  # toy images load in ~5 ms; a loader process beside 2 compute threads on 2 cores
    # oversubscribes them (measured: 0.2 -> 0.6-8 s per iteration)
    "log_interval": 10,
    # One compute thread: with 2 threads on 2 cores, any other busy process makes every small op
    # wait at an OpenMP barrier for a descheduled thread (measured with one compiler job beside it:
    # 5-7 s per toy iteration with 2 threads, 0.3 s with 1; on an idle machine 0.2 s vs 0.26 s).
    "cpu_threads": 1,
}
TOY_EPOCH_DIVISOR = 6  # toy epochs = entry epochs / 6 (1x: 2, 2x: 4)
# Model training-sampler sizes of the toy profile (ModelConfig keys; --set can change them again).
# The toy images hold ~3.5 small objects (COCO: ~7 at 800 px), and the RoI sampler size sets the
# cost of the box and mask heads (up to 25% of the sampled RoIs are positives, each one a mask-head
# pass): 128 instead of 512 RoIs and 500 instead of 2000 proposals make a toy iteration ~2.6x
# cheaper on a CPU (measured: 0.68 -> 0.26 CPU s per 2-image iteration, 1 thread).
TOY_MODEL: dict[str, Any] = {
    "box_batch_size_per_image": 128,  # paper (upstream rcnn sampler num): 512
    "rpn_pre_nms_top_n_train": 500,  # paper (upstream rpn_proposal nms_pre): 2000
    "rpn_post_nms_top_n_train": 500,  # paper (upstream rpn_proposal max_num): 2000
    # Trained from scratch, a frozen stem + layer1 would stay random forever (the paper freezes
    # them because they come from ImageNet). Measured box AP after 2 toy epochs, row 1: 10.0 -> 12.9.
    "frozen_stages": 0,  # paper (upstream backbone frozen_stages): 1
}


def toy_schedule(epochs: int, lr_steps: tuple[float, ...]) -> tuple[int, tuple[float, ...]]:
    """Toy epochs and lr steps: the entry's schedule shrunk, the steps kept at the same fractions.

    1x (12 epochs, steps 8, 11) -> 2 epochs, steps at epochs 1.333 and 1.833 (fractional epochs are
    turned into iterations by ``recipe.milestone_iters``).
    """
    toy_epochs = max(1, epochs // TOY_EPOCH_DIVISOR)
    return toy_epochs, tuple(round(s * toy_epochs / epochs, 3) for s in lr_steps)


_MODEL_KEYS_NOT_SETTABLE = ("num_classes", "gc_impl")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def settable_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_SETTABLE]


def model_config_types() -> dict[str, Any]:
    """Field name -> type of ``gcrepro.modeling.build.ModelConfig`` (empty until it exists)."""
    try:
        from gcrepro.modeling.build import ModelConfig
    except ImportError:
        return {}
    hints = typing.get_type_hints(ModelConfig)
    # num_classes comes from the dataset; gc_impl is a TrainConfig field passed to build_model.
    return {k: v for k, v in hints.items() if k not in _MODEL_KEYS_NOT_SETTABLE}


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "none"
    if origin in (tuple, list):
        inner = get_args(tp)[0] if get_args(tp) else str
        return f"comma-separated {_describe(inner)}s"
    if tp is bool:
        return "a bool (true|false)"
    if origin is dict or tp is dict:
        return "not settable"
    return f"an {tp.__name__}" if tp is int else f"a {getattr(tp, '__name__', str(tp))}"


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_value(text: str, tp: Any) -> Any:
    """Parse ``text`` as type ``tp``; raises ValueError with what is allowed."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if text == str(choice):
                return choice
        raise ValueError(_describe(tp))
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg)
            except ValueError:
                continue
        raise ValueError(_describe(tp))
    if origin in (tuple, list):
        args = get_args(tp)
        inner = args[0] if args else str
        parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
        values = [parse_value(p, inner) for p in parts]
        fixed = origin is tuple and len(args) > 1 and Ellipsis not in args
        if fixed and len(values) != len(args):
            raise ValueError(f"{len(args)} comma-separated {_describe(inner)}s")
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(_describe(tp))
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(_describe(tp)) from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(_describe(tp)) from None
    if tp is str:
        return text
    raise ValueError(_describe(tp))


# Value checks beyond the type: key -> (predicate, what is allowed).
_CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "images_per_gpu": (lambda v: v >= 1, "an int >= 1"),
    "base_lr": (lambda v: v > 0, "a float > 0"),
    "base_batch_size": (lambda v: v >= 1, "an int >= 1"),
    "momentum": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a float >= 0"),
    "warmup_iters": (lambda v: v >= 0, "an int >= 0"),
    "warmup_ratio": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "epochs": (lambda v: v >= 1, "an int >= 1"),
    "lr_steps": (lambda v: all(s > 0 for s in v) and list(v) == sorted(v), "increasing epochs > 0, e.g. 8,11"),
    "lr_gamma": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "grad_clip_norm": (lambda v: v >= 0, "a float >= 0 (0 disables clipping)"),
    "max_iters": (lambda v: v >= 0, "an int >= 0 (0: no cap)"),
    "num_workers": (lambda v: v >= 0, "an int >= 0"),
    "cpu_threads": (lambda v: v >= 0, "an int >= 0 (0: PyTorch's default)"),
    "amp": (lambda v: v in AMP_MODES, "one of " + "|".join(AMP_MODES)),
    "log_interval": (lambda v: v >= 1, "an int >= 1"),
    "checkpoint_interval": (lambda v: v >= 0, "an int >= 0 (0: each epoch end)"),
    "keep_checkpoints": (lambda v: v >= 0, "an int >= 0 (0: keep all)"),
    "timing_skip_iters": (lambda v: v >= 0, "an int >= 0"),
    "gc_impl": (lambda v: v in ("auto", "reference", "fused"), "one of auto|reference|fused"),
}


def parse_overrides(
    items: list[str] | dict[str, Any] | None, *, source: str = "--set"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``["key=value", ...]`` (or a dict of already-typed values) -> (train fields, model overrides).

    Every key must be a TrainConfig field (see :func:`settable_keys`) or a ModelConfig field.
    Raises ConfigError with one line naming the key and what is allowed.
    """
    if not items:
        return {}, {}
    train_types = _field_types()
    model_types = model_config_types()
    pairs: list[tuple[str, Any, bool]] = []  # (key, value, value_is_text)
    if isinstance(items, dict):
        pairs = [(str(k), v, isinstance(v, str)) for k, v in items.items()]
    else:
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value")
            key, _, text = item.partition("=")
            pairs.append((key.strip(), text.strip(), True))
    train: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value, is_text in pairs:
        if key.startswith("model."):
            key = key[len("model."):]
        if key in settable_keys():
            tp, target = train_types[key], train
        elif key in model_types:
            tp, target = model_types[key], model
        else:
            allowed = ", ".join(settable_keys() + sorted(model_types))
            raise ConfigError(f"{source} {key}: unknown key; allowed keys: {allowed}")
        if is_text:
            try:
                value = parse_value(value, tp)
            except ValueError as err:
                raise ConfigError(f"{source} {key}={value}: bad value; {key} takes {err}") from None
        else:
            value = _check_typed(key, value, tp)
        check = _CHECKS.get(key) if target is train else None
        if check is not None and not check[0](value):
            raise ConfigError(f"{source} {key}={value}: bad value; {key} takes {check[1]}")
        target[key] = value
    return train, model


def _check_typed(key: str, value: Any, tp: Any) -> Any:
    """An override given as a Python value (API): accept it if it fits the field's type."""
    try:
        return parse_value(_as_text(value), tp)
    except ValueError as err:
        raise ConfigError(f"override {key}={value!r}: bad value; {key} takes {err}") from None


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def paper_config(*, epochs: int, lr_steps: tuple[float, ...]) -> TrainConfig:
    """The paper's recipe (SPEC §4) for an entry with this schedule."""
    return TrainConfig(epochs=epochs, lr_steps=tuple(lr_steps))


def make_config(
    *,
    entry: str,
    epochs: int,
    lr_steps: tuple[float, ...],
    profile: str,
    data: str,
    data_kind: str,
    options: dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve a TrainConfig: paper recipe -> profile -> entry schedule -> options -> --set."""
    if profile not in PROFILES:
        raise ConfigError(f"--profile {profile}: bad value; allowed: {'|'.join(PROFILES)}")
    cfg = paper_config(epochs=epochs, lr_steps=lr_steps)
    if profile == "toy":
        toy_epochs, toy_steps = toy_schedule(epochs, lr_steps)
        cfg = dataclasses.replace(cfg, **TOY_PROFILE, epochs=toy_epochs, lr_steps=toy_steps)
    cfg = dataclasses.replace(cfg, entry=entry, profile=profile, data=str(data), data_kind=data_kind)
    train_opts, model_opts = parse_overrides({k: v for k, v in (options or {}).items() if v is not None}, source="option")
    if model_opts:
        raise ConfigError(f"option {sorted(model_opts)[0]}: a model key; pass it in overrides")
    train_set, model_set = parse_overrides(overrides)
    model = {**(TOY_MODEL if profile == "toy" else {}), **model_set}
    changes = {**train_opts, **train_set}
    if "epochs" in changes and "lr_steps" not in changes:
        # a new length keeps the lr steps at the same fractions of the run (8/12, 11/12 for 1x)
        changes["lr_steps"] = tuple(round(s * changes["epochs"] / cfg.epochs, 3) for s in cfg.lr_steps)
    cfg = dataclasses.replace(cfg, **changes, model=model)
    return cfg


def differences_from_paper(cfg: TrainConfig, *, epochs: int, lr_steps: tuple[float, ...]) -> dict[str, Any]:
    """Recipe fields whose value differs from the paper's, as {key: {"paper": .., "used": ..}}."""
    paper = paper_config(epochs=epochs, lr_steps=lr_steps)
    recipe_keys = (
        "images_per_gpu", "base_lr", "base_batch_size", "momentum", "weight_decay", "warmup_iters",
        "warmup_ratio", "epochs", "lr_steps", "lr_gamma", "grad_clip_norm", "max_iters",
    )
    out: dict[str, Any] = {}
    for key in recipe_keys:
        a, b = getattr(paper, key), getattr(cfg, key)
        if a != b:
            out[key] = {"paper": list(a) if isinstance(a, tuple) else a, "used": list(b) if isinstance(b, tuple) else b}
    if cfg.model:
        out["model"] = {"paper": {}, "used": dict(cfg.model)}
    return out
