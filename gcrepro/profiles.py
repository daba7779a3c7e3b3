"""Profiles: the one table of what a profile changes from the paper's model and recipe.

A profile is a set of overrides of ``ModelConfig`` and ``TrainConfig`` fields, applied after the
paper's values and before the user's (:func:`gcrepro.runspec.resolve_run`). It never changes the
structure (depth, GC, DCN, heads). ``paper`` changes nothing. ``toy`` is the same structure sized for
a laptop CPU and the built-in toy dataset, trained from scratch; why each value was chosen, with the
measurements, is in ``benchmarks/RESULTS.md`` ("The toy profile").
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig and TrainConfig fields
    schedule_divisor: int = 1  # epochs = entry epochs // divisor; lr steps kept at the same fractions


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", "the paper's model and recipe (SPEC §2-4): inputs (800, 1333), full widths"),
    "toy": Profile(
        "toy",
        "the paper's structure for a laptop CPU: inputs (160, 256), widths /4, smaller samplers, "
        "trained from scratch, 1/6 of the schedule",
        overrides={
            # model: input scale and widths (paper: 800/1333, base 64, FPN 256, fc 1024, convs 256)
            "min_size": 160, "max_size": 256, "base_width": 16, "fpn_channels": 64, "box_fc_dim": 256,
            "box_conv_dim": 64, "mask_conv_dim": 64,
            # model: from-scratch init (paper: an ImageNet backbone with stem + layer1 frozen)
            "zero_init_residual": True, "frozen_stages": 0,
            # model: training samplers (paper: 512 RoIs, 2000/2000 proposals); the RoI sampler sets the
            # mask head's RoIs (<= 1/4 of it, positives), the largest cost of a toy step (128 -> 64 -> 32
            # in issue 14: a toy image holds a few objects, 8 positive RoIs each still cover them)
            "box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 500, "rpn_post_nms_top_n_train": 500,
            # recipe (paper: warmup 500, lr 0.02 per 16 images)
            "warmup_iters": 50, "base_lr": 0.16,
            # run options: toy images load in ms; one compute thread, no loader process beside it
            # (channels_last measured 0.94-1.00x the NCHW step: not worth a layout change, benchmarks/RESULTS.md)
            "num_workers": 0, "cpu_threads": 1, "log_interval": 10,
        },
        schedule_divisor=6,  # 1x: 12 -> 2 epochs, 2x: 24 -> 4
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"profile {name!r}: expected one of {'|'.join(PROFILES)}")
    return PROFILES[name]
