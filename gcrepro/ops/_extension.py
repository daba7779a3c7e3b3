"""Load the compiled GC op (gcrepro._C for CPU, gcrepro._C_cuda for CUDA) if it is built.

Importing this module never fails: a missing or broken build only records why, and the
callers fall back to the PyTorch reference (impl="auto") or raise `build_error` (impl="fused").
Set GCREPRO_NO_EXT=1 to ignore a build (forces the reference; the op tests then skip).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

BUILD_COMMAND = "pip install --no-build-isolation -e ."


@dataclass(frozen=True)
class ExtensionState:
    cpu: bool  # gcrepro._C loaded: op schemas + CPU kernels
    cuda: bool  # gcrepro._C_cuda loaded: CUDA kernels
    cpu_reason: str | None  # why cpu is False
    cuda_reason: str | None  # why cuda is False


def _import(name: str) -> str | None:
    """Import an extension module; None on success, else the reason it is unavailable."""
    try:
        importlib.import_module(name)
    except (ImportError, OSError) as err:  # not built, or built against another torch
        return f"{name} is not built or does not load ({type(err).__name__}: {err})"
    return None


def _load() -> ExtensionState:
    if os.environ.get("GCREPRO_NO_EXT", "") == "1":
        why = "GCREPRO_NO_EXT=1 is set"
        return ExtensionState(False, False, why, why)
    import torch  # noqa: F401  (the extensions link against torch's libraries)

    cpu_reason = _import("gcrepro._C")
    if cpu_reason is not None:
        return ExtensionState(False, False, cpu_reason, cpu_reason)
    cuda_reason = _import("gcrepro._C_cuda")
    if cuda_reason is not None:
        cuda_reason += " (it is built when a CUDA toolkit is found at install time)"
    return ExtensionState(True, cuda_reason is None, None, cuda_reason)


STATE = _load()


def unavailable_reason(device_type: str) -> str:
    """Why the compiled op cannot run on `device_type` (when fused_available says it cannot)."""
    if device_type == "cuda":
        return STATE.cuda_reason or "no CUDA device is available"
    if device_type == "cpu":
        return STATE.cpu_reason or "it did not load"
    return f"the compiled op has kernels for cpu and cuda only, not {device_type}"


def build_error(device_type: str) -> RuntimeError:
    """The error for impl="fused" when the op cannot run on `device_type`."""
    return RuntimeError(
        f"gcrepro: impl='fused' needs the compiled GC op for {device_type}, but {unavailable_reason(device_type)}. "
        f"Build it from the repository root with `{BUILD_COMMAND}` "
        "(CUDA kernels need a CUDA toolkit: CUDA_HOME or nvcc on PATH), or use impl='auto'/'reference'."
    )
