"""TrainConfig: the training recipe and run options as one frozen, typed record.

The field defaults ARE the paper's recipe (SPEC §4, upstream mmdetection-v1 ``configs/gcnet/*``:
optimizer, lr_config). A run's TrainConfig is resolved once, with its ModelConfig, by
:func:`gcrepro.runspec.resolve_run` (paper -> profile -> the user's overrides) and saved whole in
every checkpoint and in ``metrics.json``. ``VALUE_CHECKS`` says what each field allows beyond its type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

AMP_MODES = ("none", "bf16", "fp16")


class ConfigError(ValueError):
    """A bad override key or value, or a spec that does not fit; the message is one line, printable as is."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model's architecture."""

    # --- the paper's recipe, SPEC §4 (mmdet v0.6 configs/gcnet/*: optimizer, lr_config) ---
    images_per_gpu: int = 2  # SPEC §4: 8 GPUs x 2 images; on CPU a "GPU" is one process
    base_lr: float = 0.02  # SPEC §4: lr 0.02 for a total batch of 16 ...
    base_batch_size: int = 16  # ... scaled linearly: lr = base_lr * total_batch / 16
    momentum: float = 0.9  # SPEC §4
    weight_decay: float = 1e-4  # SPEC §4: on all parameters
    warmup_iters: int = 500  # SPEC §4: linear warmup over 500 iterations ...
    warmup_ratio: float = 1.0 / 3.0  # ... starting from 1/3 of the lr
    epochs: int = 12  # SPEC §4: 1x = 12 epochs (2x = 24), set from the entry
    lr_steps: tuple[float, ...] = (8, 11)  # SPEC §4: lr x0.1 after epochs 8 and 11 (16, 22 for 2x)
    lr_gamma: float = 0.1  # SPEC §4
    grad_clip_norm: float = 35.0  # SPEC §4: clip the L2 norm of all gradients at 35
    max_iters: int = 0  # stop after this many iterations in total (0: run all epochs)
    amp: str = "none"  # "none" (the paper: fp32) | "bf16" | "fp16" (fp16 uses a GradScaler)
    pretrained_backbone: str | None = None  # ImageNet backbone weights: torchvision weights name or a file

    # --- run options: how the run is executed, not what is trained (RUN_OPTIONS) ---
    num_workers: int = 2  # data-loading processes per rank
    cpu_threads: int = 0  # CPU runs: compute threads per process (0: PyTorch's default, one per core)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms + seeded data workers
    channels_last: bool = False
    log_interval: int = 20  # iterations between metrics.jsonl lines
    checkpoint_interval: int = 0  # iterations between checkpoints; 0: at the end of each epoch
    keep_checkpoints: int = 0  # keep only the newest N iter_*.pth files; 0: keep all
    timing_skip_iters: int = 5  # SPEC §5: first iterations of each epoch excluded from s/iter

    def total_batch(self, world_size: int) -> int:
        return self.images_per_gpu * world_size


# Fields that change how a run executes, never what it computes (not "differences from the paper").
RUN_OPTIONS = ("num_workers", "cpu_threads", "seed", "deterministic", "channels_last", "log_interval",
               "checkpoint_interval", "keep_checkpoints", "timing_skip_iters")


def _finite(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and check(v)


# Value checks beyond the type: field -> (predicate, what is allowed).
VALUE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "images_per_gpu": (lambda v: v >= 1, "an int >= 1"),
    "base_lr": (_finite(lambda v: v > 0), "a finite float > 0"),
    "base_batch_size": (lambda v: v >= 1, "an int >= 1"),
    "momentum": (lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "weight_decay": (_finite(lambda v: v >= 0), "a finite float >= 0"),
    "warmup_iters": (lambda v: v >= 0, "an int >= 0"),
    "warmup_ratio": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "epochs": (lambda v: v >= 1, "an int >= 1"),
    "lr_steps": (lambda v: all(math.isfinite(s) and s > 0 for s in v) and list(v) == sorted(v),
                 "increasing epochs > 0, e.g. 8,11"),
    "lr_gamma": (lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "grad_clip_norm": (_finite(lambda v: v >= 0), "a finite float >= 0 (0 disables clipping)"),
    "max_iters": (lambda v: v >= 0, "an int >= 0 (0: no cap)"),
    "amp": (lambda v: v in AMP_MODES, "one of " + "|".join(AMP_MODES)),
    "num_workers": (lambda v: v >= 0, "an int >= 0"),
    "cpu_threads": (lambda v: v >= 0, "an int >= 0 (0: PyTorch's default)"),
    "seed": (lambda v: v >= 0, "an int >= 0"),
    "log_interval": (lambda v: v >= 1, "an int >= 1"),
    "checkpoint_interval": (lambda v: v >= 0, "an int >= 0 (0: each epoch end)"),
    "keep_checkpoints": (lambda v: v >= 0, "an int >= 0 (0: keep all)"),
    "timing_skip_iters": (lambda v: v >= 0, "an int >= 0"),
}
