"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

Layout of ``WORK_DIR/checkpoints/``: ``iter_0000123.pth`` per save and ``latest.pth`` (a hard link
to the newest, or a copy where links are not supported). A file appears at its final path only
complete: it is written to a temporary file in the same folder, flushed and fsynced, then moved
into place with ``os.replace`` (atomic on POSIX and Windows), and the folder is fsynced.

Everything stored is a tensor or a plain Python type, so the safe loader reads it: RNG states are
tensors (torch, CUDA, numpy's key array) and lists of ints (Python's ``random``), and the run spec
(``spec``: gcrepro.runspec.RunSpec.to_dict) is a dict of plain values.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gcrepro import ctrl_c
from gcrepro.atomic import atomic_open, fsync_dir
from gcrepro.run_dir import as_run_dir_error

if TYPE_CHECKING:
    from gcrepro.runspec import RunSpec

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pth"
_ITER_RE = re.compile(r"^iter_(\d{7,})\.pth$")


def checkpoint_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR


def iter_checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}.pth"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` into place."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` name the same complete file as ``src``, atomically."""
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system: copy, still atomically moved into place
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def save_checkpoint(work_dir: str | Path, state: dict[str, Any], *, iteration: int, keep: int = 0) -> Path:
    """Write ``iter_XXXXXXX.pth`` and point ``latest.pth`` at it; keep the newest ``keep`` (0: all)."""
    folder = checkpoint_dir(work_dir)
    path = folder / iter_checkpoint_name(iteration)
    try:
        with ctrl_c.deferred():  # a Ctrl-C during the write stops the run after it, with this checkpoint whole
            atomic_torch_save(state, path)
            _atomic_link(path, folder / LATEST)
    except Exception as err:  # a full disk inside torch.save surfaces as "unexpected pos ..."; say what it is
        translated = as_run_dir_error(err, Path(work_dir), writing=path)
        if translated is None:
            raise
        raise translated from err
    if keep > 0:
        older = sorted(p for p in folder.iterdir() if _ITER_RE.match(p.name))[:-keep]
        for p in older:
            p.unlink(missing_ok=True)
    return path


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or resumed from; the message is one line naming the file."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Safe load on the CPU: only tensors and plain types (:func:`gcrepro.convert.load_checkpoint_any`).
    A truncated, corrupt or foreign file raises CheckpointError (one line, never torch's advice to load it
    unsafely)."""
    from gcrepro.convert import ConvertError, load_checkpoint_any

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        return load_checkpoint_any(path)
    except ConvertError as err:
        raise CheckpointError(f"checkpoint {err}") from None


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    """``latest.pth`` if present, else the newest ``iter_*.pth``, else None."""
    folder = checkpoint_dir(work_dir)
    if (folder / LATEST).is_file():
        return folder / LATEST
    iters = sorted(p for p in folder.glob("iter_*.pth") if _ITER_RE.match(p.name))
    return iters[-1] if iters else None


def model_state_from(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a gcrepro checkpoint, or of a plain state dict."""
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        return checkpoint["model"]
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        return checkpoint["state_dict"]
    return checkpoint


def spec_from_checkpoint(state: dict[str, Any], path: str | Path) -> "RunSpec | None":
    """The RunSpec a gcrepro checkpoint records; None for a checkpoint written before the run spec."""
    from gcrepro.runspec import RunSpec

    if "spec" in state:
        return RunSpec.from_dict(state["spec"], where=f"checkpoint {path}")
    return None


def legacy_spec(state: dict[str, Any], path: str | Path, *, entry: str, profile: str | None,
                data: str | Path | None) -> "RunSpec":
    """A run spec for a checkpoint of a gcrepro older than the run spec: resolved from the settings it
    records (``config``: profile, data, model and recipe overrides) with today's defaults for the rest."""
    import logging

    from gcrepro.engine.config import ConfigError
    from gcrepro.runspec import MODEL_FIELDS, TRAIN_FIELDS, resolve_run

    config = state.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"checkpoint {path}: no run spec (field 'spec') and no 'config'; is it a gcrepro "
                          "checkpoint? (weights only: build the model with gcrepro.build_model and load them)")
    overrides = {k: v for k, v in config.items() if k in TRAIN_FIELDS or k in MODEL_FIELDS}
    overrides.update({k: v for k, v in (config.get("model") or {}).items() if k in MODEL_FIELDS})
    # Before the conventions existed, models ran torchvision's geometry with the upstream training rules.
    overrides = {"conventions": "torchvision", "box_smooth_l1_beta": 1.0, "rpn_allowed_border": 0.0,
                 "rpn_min_pos_iou": 0.3, **overrides}
    entry = config.get("entry") or entry
    saved_data = data if data is not None else (config.get("data") or None)
    logging.getLogger("gcrepro").warning(
        "checkpoint %s was written by an older gcrepro (no run spec): its model is rebuilt from entry %s, "
        "profile %s and its recorded overrides, with today's defaults for the rest", path, entry,
        profile or config.get("profile"))
    return resolve_run(entry, data=saved_data, profile=profile or config.get("profile"),
                       overrides=overrides, source=f"checkpoint {path} config")


# --- RNG states as tensors / plain types -------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU) and CUDA generator states in ``weights_only``-safe types."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
