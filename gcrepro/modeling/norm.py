"""Backbone normalisation layers for the three norm modes of the GCNet table (SPEC §2).

- ``fixbn``:  :class:`FrozenStatsBatchNorm2d` everywhere: normalise with the ImageNet running
  statistics, never update them; the affine weight/bias still train (mmdet ``norm_eval=True``).
- ``syncbn``: :class:`SyncBatchNorm` (a ``torch.nn.SyncBatchNorm``) whose statistics are updated
  and synchronised across ranks. It only synchronises on CUDA with a process group; elsewhere it
  normalises with per-process batch statistics (exactly ``nn.BatchNorm2d``) and says so ONCE in a
  warning log line.
- ``bn``:     plain ``nn.BatchNorm2d``.

All three keep ``nn.BatchNorm2d``'s state-dict keys (weight, bias, running_mean, running_var,
num_batches_tracked) and eps 1e-5 (SPEC §2: do not zero it).
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

BN_EPS = 1e-5  # SPEC §2 / torchvision / mmdet: BN eps 1e-5
NORM_KINDS = ("fixbn", "syncbn", "bn")


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates them.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` in train and eval mode.
    ``weight``/``bias`` stay parameters (trainable unless frozen by the backbone); the statistics
    are buffers that no forward touches. Computed by ``batch_norm`` in its eval mode: one pass over x
    forward, one fused kernel backward (0.6x the time of torchvision's ``FrozenBatchNorm2d``, which
    computes ``x * scale + shift`` in two; 4% of a toy train step, benchmarks/RESULTS.md). A
    torchvision ``maskrcnn_resnet50_fpn`` backbone loaded into ours gives its features to float
    rounding (tests/test_backbone.py). Caveat: being a ``_BatchNorm``, it is converted by
    ``nn.SyncBatchNorm.convert_sync_batchnorm``; never call that on a gcrepro model (the syncbn
    mode already holds SyncBatchNorm where the statistics should move).
    """

    def __init__(self, num_features: int, eps: float = BN_EPS) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=True)
        self.training = False

    def train(self, mode: bool = True) -> "FrozenStatsBatchNorm2d":
        # Always behaves as in eval mode, so it always says so (``.training`` stays False).
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        # x [N, C, H, W] -> [N, C, H, W]: (x - running_mean) / sqrt(running_var + eps) * weight + bias
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            momentum=0.0, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, frozen_stats=True"


class SyncBatchNorm(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` that also runs where it cannot synchronise.

    On CUDA with an initialised process group it is ``nn.SyncBatchNorm`` (statistics averaged over
    ranks). On any other device, or with no process group, a training forward normalises with
    per-process batch statistics and updates the running statistics like ``nn.BatchNorm2d``;
    the first such forward in the process logs one warning line. Eval forwards use the running
    statistics everywhere (nothing to synchronise).
    """

    _warned: bool = False  # class-wide: one warning per process, not one per layer

    def __init__(self, num_features: int, eps: float = BN_EPS) -> None:
        super().__init__(num_features, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        # x [N, C, H, W] -> [N, C, H, W]
        if not self.training:
            return super().forward(x)
        grouped = dist.is_available() and dist.is_initialized()
        if x.device.type == "cuda" and grouped:
            return super().forward(x)
        self._warn_once(x.device, grouped)
        # _BatchNorm.forward: batch statistics, running-statistic update, no synchronisation.
        return super(nn.SyncBatchNorm, self).forward(x)

    def _warn_once(self, device: torch.device, grouped: bool) -> None:
        if SyncBatchNorm._warned:
            return
        SyncBatchNorm._warned = True
        ranks = dist.get_world_size(self.process_group) if grouped else 1
        why = f"on {device.type}" if device.type != "cuda" else "without a process group"
        logger.warning(
            "SyncBN %s: statistics are per-process, not synchronised across %d rank%s "
            "(normalising like BatchNorm2d with this process's batch)",
            why, ranks, "" if ranks == 1 else "s",
        )


def make_norm(kind: str, num_features: int) -> nn.Module:
    """Norm layer for one backbone position: kind "fixbn" | "syncbn" | "bn"."""
    if kind == "fixbn":
        return FrozenStatsBatchNorm2d(num_features, eps=BN_EPS)
    if kind == "syncbn":
        return SyncBatchNorm(num_features, eps=BN_EPS)
    if kind == "bn":
        return nn.BatchNorm2d(num_features, eps=BN_EPS)
    raise ValueError(f"norm kind {kind!r} is not one of {NORM_KINDS}")
