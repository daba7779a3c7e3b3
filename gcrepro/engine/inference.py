"""Inference over a loader into an evaluator, timing the whole pipeline (SPEC §5).

Inference fps is measured at batch 1 over the WHOLE pipeline as the paper's table does: waiting
for the loader (image reading and decoding), the model call (resize/normalise/pad, backbone,
heads, post-processing, mask pasting) and the conversion to COCO results (including RLE
encoding), after ``warmup`` images. On CUDA the clock is read after a synchronize.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gcrepro import ctrl_c
from gcrepro.engine import dist
from gcrepro.engine.evaluate import COCOEvaluator

logger = logging.getLogger(__name__)

WARMUP_IMAGES = 5  # mmdetection's benchmark: 5 warm-up images before timing


@dataclass
class InferenceTiming:
    images: int  # images processed by this rank
    images_timed: int  # after warm-up
    seconds_timed: float

    @property
    def fps(self) -> float | None:
        return self.images_timed / self.seconds_timed if self.images_timed and self.seconds_timed > 0 else None


@torch.inference_mode()
def run_inference(
    model: nn.Module,
    loader: Iterable,
    evaluator: COCOEvaluator,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    warmup: int = WARMUP_IMAGES,
    progress: bool = True,
    entry: str = "eval",
    work_dir: Path | None = None,
    every: int = 20,
) -> InferenceTiming:
    """Feed every batch of ``loader`` through ``model`` into ``evaluator``; returns this rank's timing.

    ``progress``: rank 0 reports stage "evaluate" (:class:`gcrepro.progress.Progress`: a bar, a line every
    ``every`` images, and ``work_dir/progress.json``), counting this rank's images."""
    model.eval()
    evaluator.reset()
    shown = None
    if progress and dist.is_main_process():
        from gcrepro.progress import Progress

        total = len(loader) * (getattr(loader, "batch_size", None) or 1) if hasattr(loader, "__len__") else 0
        shown = Progress(stage="evaluate", total=total, entry=entry, run_dir=work_dir, every=every, unit="img")
    images_done = images_timed = 0
    seconds = 0.0
    tick = time.perf_counter()
    with ctrl_c.watch():  # an error a Ctrl-C caused says "interrupted" (see gcrepro.ctrl_c)
        try:
            for images, targets in loader:
                images = [img.to(device, non_blocking=device.type == "cuda") for img in images]  # [3, H, W] each
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    outputs = model(images)
                outputs = [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
                evaluator.process(targets, outputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                tock = time.perf_counter()
                if images_done >= warmup:
                    seconds += tock - tick
                    images_timed += len(images)
                images_done += len(images)
                if shown is not None:
                    shown.update(images_done)
                tick = time.perf_counter()
        except BaseException:
            if shown is not None:
                shown.close("interrupted" if ctrl_c.caused(sys.exc_info()[1]) else "failed")
            raise
    if shown is not None:
        shown.close("done")
    return InferenceTiming(images=images_done, images_timed=images_timed, seconds_timed=seconds)
