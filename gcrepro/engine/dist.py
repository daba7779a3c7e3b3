"""torch.distributed helpers: init from torchrun's environment, rank queries, gathers, SyncBN.

Any launcher that sets torchrun's variables works: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` (torchrun itself, one or many nodes, or
:func:`gcrepro.engine.launch.launch`). Backend: NCCL when the run uses GPUs, gloo on CPU.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    """True inside a worker started by torchrun or gcrepro's launcher (with several ranks)."""
    return "RANK" in os.environ and env_world_size() > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(*, use_cuda: bool, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group described by the environment; returns this rank's device.

    Without torchrun variables (or with WORLD_SIZE=1) nothing is initialised and the device is
    ``cuda:0``/``cpu``. With them: ``cuda:LOCAL_RANK`` + NCCL, or ``cpu`` + gloo.
    """
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("GPUs requested but torch.cuda.is_available() is False (use --gpus 0 for CPU)")
    device = torch.device("cuda", get_local_rank()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not launched_by_torchrun() or is_initialized():
        return device
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=timedelta(seconds=timeout_s),
        **({"device_id": device} if use_cuda else {}),
    )
    logger.info(
        "distributed: rank %d of %d (local rank %d), backend %s, device %s",
        dist.get_rank(), dist.get_world_size(), get_local_rank(), backend, device,
    )
    return device


def destroy_distributed(*, synchronize: bool) -> None:
    """Leave the process group. ``synchronize`` (a normal exit): every rank first waits for the others, so
    no rank tears its gloo/NCCL connections down while another still uses them (seen: a rank aborting
    with "terminate called without an active exception" when rank 0, which hosts the store, left first
    under load). After an error there is no waiting: the other ranks may be gone."""
    if is_initialized():
        if synchronize and get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (pickled), in rank order; ``[obj]`` without a process group."""
    if not is_initialized() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over ranks of each scalar (one all_reduce for all of them) as Python floats."""
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= get_world_size()
    return dict(zip(keys, stacked.cpu().tolist()))


def reduce_max(value: float, device: torch.device) -> float:
    """Max over ranks of a Python float."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if is_initialized() and get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def count_sync_bn(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.SyncBatchNorm))


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` by an ``nn.BatchNorm2d`` holding the same parameters and buffers.

    State-dict keys are identical, so checkpoints load into either model. (DDP refuses SyncBatchNorm
    on CPU: "SyncBatchNorm layers only work with GPU modules".)
    """
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias  # the same Parameters (requires_grad kept)
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def prepare_sync_bn(model: nn.Module, *, norm: str, device: torch.device) -> nn.Module:
    """SyncBN entries (SPEC §2) on several CPU processes: per-process BN, with a log line.

    gcrepro's models already hold ``gcrepro.modeling.norm.SyncBatchNorm`` where statistics move (and
    FrozenStatsBatchNorm2d elsewhere); on GPUs they stay. DDP refuses SyncBatchNorm on CPU, so with
    several gloo ranks the SyncBatchNorm layers become ``nn.BatchNorm2d`` (same state-dict keys).
    """
    n_sync = count_sync_bn(model)
    if norm == "syncbn" and device.type != "cuda" and get_world_size() > 1 and n_sync:
        model = revert_sync_batchnorm(model)
        logger.info(
            "SyncBN on CPU: %d SyncBatchNorm layers normalise with per-process batch statistics "
            "(BatchNorm2d; gloo cannot synchronise them across the %d ranks)", n_sync, get_world_size(),
        )
    return model
