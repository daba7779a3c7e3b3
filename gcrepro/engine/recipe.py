"""The optimiser and learning-rate schedule of the paper's recipe (SPEC §4).

mmdetection v0.6 (the upstream of the GCNet configs)::

    optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
    optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
    lr_config = dict(policy='step', warmup='linear', warmup_iters=500,
                     warmup_ratio=1.0 / 3, step=[8, 11])

The schedule is per iteration: a linear warmup factor ``1 - (1 - i / warmup_iters) * (1 - ratio)``
(mmcv's 'linear' warmup, which reaches 1 at ``warmup_iters``) times ``gamma ** (number of step
epochs passed)``, where a step at epoch ``s`` takes effect at iteration ``s * iters_per_epoch``.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


_FUSED_SGD_DEVICES = ("cpu", "cuda")  # torch.optim.SGD(fused=True) has kernels for both (PyTorch >= 2.4)


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over every trainable parameter, weight decay on all of them (SPEC §4, mmdet v0.6).

    PyTorch's fused SGD kernel where every parameter's device has one (CPU, CUDA): the same update as the
    per-parameter loop (tests/test_engine_config.py compares them), in one call instead of ~10 small ops per
    parameter; the GC blocks add 104 parameters to a ResNet-50 Mask R-CNN's 198. On the toy profile's step
    that halved the optimizer's time (7.3 -> 3.3 ms with the gradient clipping, benchmarks/RESULTS.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_SGD_DEVICES for p in params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def clip_grad_norm(params: list[nn.Parameter], *, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2)``, the same numbers, as a float: the
    total L2 norm of the gradients before clipping; they are scaled by ``max_norm / (norm + 1e-6)`` when that
    is below 1. Cheaper on the CPU: one ``_foreach_norm`` call instead of a norm per parameter, and no
    multiplication of every gradient by 1 when nothing is clipped (torch multiplies always, to avoid a device
    sync; the trainer reads the norm anyway). ~1 ms of a toy train step's 300 gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads, 2.0)  # one 0-d tensor per gradient, as torch's own computes them
    total = torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in norms]), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if not float(coef) >= 1.0:  # clip (also for a non-finite norm, as torch would)
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return float(total)


def scale_lr(*, base_lr: float, base_batch_size: int, total_batch: int) -> float:
    """SPEC §4 linear scaling rule: lr = 0.02 * total_batch / 16. Logs a line when it changes the lr."""
    lr = base_lr * total_batch / base_batch_size
    if total_batch != base_batch_size:
        logger.info(
            "lr scaled linearly to the total batch: %g * %d / %d = %g",
            base_lr, total_batch, base_batch_size, lr,
        )
    return lr


def milestone_iters(lr_steps: tuple[float, ...], iters_per_epoch: int) -> tuple[int, ...]:
    """Step epochs (possibly fractional, toy profile) -> the iterations where the lr drops."""
    return tuple(int(round(s * iters_per_epoch)) for s in lr_steps)


class WarmupStepSchedule:
    """Per-iteration lr: linear warmup from ``warmup_ratio`` then x ``gamma`` at each milestone.

    ``step()`` is called after every optimiser step; ``iteration`` counts the steps taken, so the
    lr of the step with 0-based index ``i`` is ``lr_at(i)``. Its state is one int (checkpointable
    with ``weights_only=True``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        warmup_iters: int,
        warmup_ratio: float,
        milestones: tuple[int, ...],
        gamma: float,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.iteration = 0
        self._apply()

    def lr_at(self, iteration: int) -> float:
        factor = self.gamma ** sum(1 for m in self.milestones if iteration >= m)
        if iteration < self.warmup_iters:
            # mmcv 'linear' warmup: 1 - (1 - i / W) * (1 - ratio); i = 0 gives `ratio` (1/3)
            factor *= 1.0 - (1.0 - iteration / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return self.base_lr * factor

    def _apply(self) -> None:
        lr = self.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    @property
    def lr(self) -> float:
        return self.lr_at(self.iteration)

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])
        self._apply()
