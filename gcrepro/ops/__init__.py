"""GC block ops: the fused compiled op (csrc/, ops/block.py) and the pure-PyTorch reference.

    use_fused(impl, x, residual, paper_block) -> bool
        THE choice of implementation for one GC block call (ContextBlock asks it every forward);
        logs each decision, with its reason, the first time it is taken on a device type; once the
        fused op was chosen for an (impl, block, device, dtype), later calls with ordinary inputs
        (4-D, non-empty, dense, a matching residual) only check those
    gc_block(x, conv_mask, transform, residual=None, relu=False) -> out [N, C, H, W]
        the paper's whole block (context -> transform -> add) as one op, torch.ops.gcrepro.gc_block
    fused_available(device) -> bool       the compiled op is built (and loads) for this device type
    cpu_isa() -> "avx2" | "baseline" | None   the vector ISA of the CPU kernels (None: not built)
    reference.gc_attention / gc_context_reference / channel_add_reference   the ground truth

impl: "reference" (the PyTorch reference), "fused" (the compiled op: a RuntimeError naming the
build command when it is not built for x's device; a ValueError for a block other than the
paper's or for inputs the kernels cannot take), or "auto" (fused when built for x's device and the
block and inputs are ones the kernels take, else the reference). Inputs "auto" sends to the
reference: a dtype other than fp16/bf16/fp32/fp64 (float8, integer, complex, bool), not 4-D, an
empty channel or spatial dimension, a residual of another shape, dtype or device, a batch above
65535 on CUDA (the kernels' gridDim.y), and, although the op takes them, an empty batch (nothing
to compute) and strides dense in neither NCHW nor channels_last (the op would copy x first).
Each reason is logged once per device type. Build: `pip install --no-build-isolation -e .` (CPU
always, CUDA when a toolkit is found).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from gcrepro.ops import _extension

if _extension.STATE.cpu:
    from gcrepro.ops import block as _block  # noqa: F401  (registers gcrepro::gc_block and the fakes)

__all__ = ["IMPLS", "cpu_isa", "fused_available", "gc_block", "use_fused"]

IMPLS = ("auto", "reference", "fused")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CUDA_MAX_BATCH = 65535  # the CUDA kernels' gridDim.y (kMaxGridY, csrc/cuda/launch_plan.h)
_log = logging.getLogger(__name__)
_logged: set[tuple[bool, str, str]] = set()  # (fused, device type, reason kind) already announced
# (impl, paper_block, device, dtype) for which the fused op was chosen: the part of the decision that
# does not depend on the tensors' shapes and strides, taken once. Valid for the build state, the log
# state and the availability check it was taken under (tests replace them: the cache then empties).
_fused_keys: set[tuple[str, bool, torch.device, torch.dtype]] = set()
_fused_keys_under: list = [None, None, None]


def fused_available(device: torch.device | str) -> bool:
    """True when the compiled op is built (and loads) for this device type."""
    device_type = torch.device(device).type
    if device_type == "cpu":
        return _extension.STATE.cpu
    if device_type == "cuda":
        return _extension.STATE.cuda and torch.cuda.is_available()
    return False


def cpu_isa() -> str | None:
    """The instruction set the CPU kernels run: "avx2" (AVX2+FMA+F16C, picked at run time when the
    CPU has them) or "baseline" (the compiler's default, or GCREPRO_CPU_ISA=baseline); None when the
    op is not built."""
    return torch.ops.gcrepro.cpu_isa() if _extension.STATE.cpu else None


def _dense(t: Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _not_for_kernels(x: Tensor, residual: Tensor | None) -> tuple[str, str] | None:
    """(kind, why) when the kernels cannot take these inputs, else None."""
    if x.dtype not in KERNEL_DTYPES:
        return "dtype", f"x is a {str(x.dtype).removeprefix('torch.')} tensor (the kernels take float16, bfloat16, float32, float64)"
    if x.dim() != 4:
        return "shape", f"x has shape {tuple(x.shape)} (the kernels take [N, C, H, W])"
    if x.shape[1] == 0 or x.shape[2] * x.shape[3] == 0:
        return "shape", f"x has an empty channel or spatial dimension, shape {tuple(x.shape)}"
    if x.device.type == "cuda" and x.shape[0] > CUDA_MAX_BATCH:
        return "batch", f"the batch of {x.shape[0]} exceeds the CUDA kernels' {CUDA_MAX_BATCH} (gridDim.y)"
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device):
        return "residual", (f"the residual ({tuple(residual.shape)}, {residual.dtype}, {residual.device}) differs "
                            f"from x ({tuple(x.shape)}, {x.dtype}, {x.device})")
    return None


def _better_as_reference(x: Tensor, residual: Tensor | None) -> tuple[str, str] | None:
    """(kind, why) for inputs the kernels take but "auto" leaves to the reference, else None."""
    if x.shape[0] == 0:
        return "empty batch", "x has an empty batch (N = 0): nothing to compute"
    for name, t in (("x", x), ("the residual", residual)):
        if t is not None and not _dense(t):
            return "strides", f"{name} has strides {t.stride()}, dense in neither NCHW nor channels_last"
    return None


def _ordinary(x: Tensor, residual: Tensor | None) -> bool:
    """x and the residual are inputs "auto" sends to the fused op whatever their device and dtype."""
    return _not_for_kernels(x, residual) is None and _better_as_reference(x, residual) is None


def use_fused(impl: str, x: Tensor, residual: Tensor | None = None, *, paper_block: bool = True) -> bool:
    """Whether a GC block call on x [N, C, H, W] (and the Bottleneck's residual, or None) runs the
    compiled op (True) or the reference (False). paper_block: att pooling with channel_add fusion
    only, the one block the op implements. Each decision and reason is logged (logger "gcrepro.ops",
    INFO) the first time it is taken on a device type."""
    if torch.compiler.is_compiling():  # (traced once per graph: no cache to guard on)
        return _decide(impl, x, residual, paper_block)
    under = _fused_keys_under
    if under[0] is not _extension.STATE or under[1] is not _logged or under[2] is not fused_available:
        _fused_keys.clear()
        under[:] = [_extension.STATE, _logged, fused_available]
    key = (impl, paper_block, x.device, x.dtype)
    if key in _fused_keys and _ordinary(x, residual):
        return True
    fused = _decide(impl, x, residual, paper_block)
    if fused:
        _fused_keys.add(key)
    return fused


def _decide(impl: str, x: Tensor, residual: Tensor | None, paper_block: bool) -> bool:
    device_type = x.device.type
    if impl == "reference":
        return _chosen(False, device_type, "impl", "impl='reference'")
    if impl not in IMPLS:
        raise ValueError(f"gcrepro.ops: impl={impl!r}; expected one of {IMPLS}")
    if not paper_block:
        if impl == "fused":
            raise ValueError(
                "impl='fused': the compiled op implements the paper's GC block (att pooling, channel_add "
                "fusion) only; use impl='auto' or 'reference' for the other pooling and fusion types"
            )
        return _chosen(False, device_type, "block", "impl='auto' and the block is not the paper's (att + channel_add)")
    if not fused_available(x.device):
        if impl == "fused":
            raise _extension.build_error(device_type)
        why = _extension.unavailable_reason(device_type)
        return _chosen(False, device_type, "build", f"impl='auto' and the compiled op is unavailable: {why}")
    refused = _not_for_kernels(x, residual)
    if impl == "fused":
        if refused is not None:
            raise ValueError(f"impl='fused': {refused[1]}; use impl='auto' to run the reference on such inputs")
        return _chosen(True, device_type, "fused", "impl='fused'")
    kind_why = refused or _better_as_reference(x, residual)
    if kind_why is not None:
        return _chosen(False, device_type, kind_why[0], f"impl='auto' and {kind_why[1]}")
    return _chosen(True, device_type, "fused", "impl='auto'")


def _chosen(fused: bool, device_type: str, kind: str, why: str) -> bool:
    if (fused, device_type, kind) not in _logged and not torch.compiler.is_compiling():
        _logged.add((fused, device_type, kind))
        which = "the fused compiled op" if fused else "the PyTorch reference"
        if fused and device_type == "cpu":
            which += f" ({cpu_isa()} kernels)"
        _log.info("GC blocks on %s run %s (%s)", device_type, which, why)
    return fused


def gc_block(
    x: Tensor, conv_mask: nn.Conv2d, transform: nn.Sequential, residual: Tensor | None = None, relu: bool = False
) -> Tensor:
    """The paper's GC block with the compiled op: x + transform(context(x)) (+ residual) (then ReLU).

    x, residual [N, C, H, W]; conv_mask Conv2d(C, 1, 1); transform Conv1x1(C->P) -> LayerNorm ->
    ReLU -> Conv1x1(P->C) (ContextBlock.channel_add_conv) -> out [N, C, H, W], x's dtype and layout.
    One op (ops/block.py): one autograd node when gradients are needed, none otherwise."""
    if not _extension.STATE.cpu:
        raise _extension.build_error(x.device.type)
    conv1, norm, _relu, conv2 = transform
    out, *_saved = torch.ops.gcrepro.gc_block.default(
        x, conv_mask.weight, conv_mask.bias, conv1.weight, conv1.bias, norm.weight, norm.bias, norm.eps,
        conv2.weight, conv2.bias, residual, relu,
    )
    return out
