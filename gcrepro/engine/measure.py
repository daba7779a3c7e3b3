"""The table's own columns, measured as SPEC §5 defines them, and ``WORK_DIR/metrics.json``.

- Mem (GB): max over ranks of ``torch.cuda.max_memory_allocated`` during training
  (``mem_kind="cuda_max_allocated"``); on CPU the peak resident set size of the process
  (``mem_kind="cpu_peak_rss"``, a different quantity: it includes the Python process itself).
- Train time (s/iter): mean wall time per iteration, data loading included, excluding the first
  ``timing_skip_iters`` iterations of each epoch.
- Inference (fps): batch 1, whole pipeline (loading, forward, post-processing), after warm-up
  images; measured in :mod:`gcrepro.engine.inference`.

They are written to ``metrics.json`` by :mod:`gcrepro.run_metrics`.
"""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


GIB = 1024**3


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB (macOS: bytes)
    rss = rss_kib if sys.platform == "darwin" else rss_kib * 1024
    return int(rss), "cpu_peak_rss"


class IterTimer:
    """Per-iteration wall times; the mean excludes the first ``skip`` iterations of each epoch."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.kept: list[float] = []
        self.all: list[float] = []

    def add(self, seconds: float, *, iter_in_epoch: int) -> None:
        self.all.append(seconds)
        if iter_in_epoch >= self.skip:
            self.kept.append(seconds)

    def mean(self) -> float | None:
        """Mean of the kept times; a run too short to keep any falls back to all but the first."""
        times = self.kept or self.all[1:] or self.all
        return sum(times) / len(times) if times else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device, world_size: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device.type,
        "world_size": world_size,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpus_visible"] = torch.cuda.device_count()
    return info


def versions_info() -> dict[str, str | None]:
    import numpy
    import torchvision

    import gcrepro

    try:
        import pycocotools  # noqa: F401
        from importlib.metadata import version

        coco_version: str | None = version("pycocotools")
    except Exception:  # noqa: BLE001
        coco_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pycocotools": coco_version,
        "gcrepro": gcrepro.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
    }


def git_commit() -> str | None:
    """HEAD of the source checkout holding gcrepro (``+dirty`` with uncommitted changes), or None."""
    from gcrepro.paths import project_root

    root = project_root()
    if root is None:
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_info(device: torch.device, world_size: int) -> dict[str, Any]:
    """The provenance keys of metrics.json: hardware, versions, git commit."""
    return {"hardware": hardware_info(device, world_size), "versions": versions_info(), "git_commit": git_commit()}
