"""GC block ops: a fused compiled path (csrc/) and the pure-PyTorch reference.

    fused_available(device) -> bool
    cpu_isa() -> "avx2" | "baseline" | None   (the vector ISA of the CPU kernels; None: not built)
    cpu_output_pool() -> dict | None, release_cpu_output_pool() -> int
        the pool that recycles the CPU kernels' large outputs (csrc/cpu/output_pool.h)
    gc_context(x, mask_weight, mask_bias, impl) -> context [N, C, 1, 1]
    channel_add(x, term, residual=None, relu=False, impl) -> out [N, C, H, W]
    gc_block(x, conv_mask, transform, residual=None, relu=False, impl) -> out [N, C, H, W]
        the paper's whole block (context -> transform -> add) as one autograd node (ops/block.py)

impl: "reference" (gcrepro.ops.reference, the ground truth), "fused" (the compiled op; a
RuntimeError naming the build command when it is not built for x's device), or "auto" (fused
when built for x's device and the inputs are ones it supports, else the reference). The first
call of each op on each device logs (logger "gcrepro.ops", INFO) which implementation runs.
Build: `pip install --no-build-isolation -e .` (CPU always, CUDA when a toolkit is found).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from gcrepro.ops import _extension
from gcrepro.ops.reference import channel_add_reference, gc_context_reference

if _extension.STATE.cpu:
    from gcrepro.ops import block as _block
    from gcrepro.ops import fused as _fused
else:
    _block = _fused = None

__all__ = [
    "IMPLS", "cpu_isa", "cpu_output_pool", "release_cpu_output_pool",
    "fused_available", "gc_context", "channel_add", "gc_block",
]

IMPLS = ("auto", "fused", "reference")
_log = logging.getLogger(__name__)
_logged: set[tuple[str, str, str]] = set()


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
    if not _extension.STATE.cpu:
        return None
    import gcrepro._C

    return gcrepro._C.cpu_isa()


def cpu_output_pool() -> dict[str, int] | None:
    """Counters of the pool that serves the CPU kernels' outputs of 1 MiB and more from blocks
    freed earlier (no page faults on reuse; new blocks huge-page backed): cap_bytes
    (GCREPRO_CPU_POOL_MB, default 1024 MiB; 0 turns it off), cached_bytes / cached_blocks (kept
    for reuse), live_bytes (held by tensors), hits, misses. None when the op is not built."""
    if not _extension.STATE.cpu:
        return None
    import gcrepro._C

    return gcrepro._C.cpu_output_pool()


def release_cpu_output_pool() -> int:
    """Free the blocks the CPU output pool keeps (as torch.cuda.empty_cache does for CUDA);
    returns the bytes freed (0 when the op is not built)."""
    if not _extension.STATE.cpu:
        return 0
    import gcrepro._C

    return gcrepro._C.release_cpu_output_pool()


def _use_fused(op: str, impl: str, x: Tensor, unsupported: str | None) -> bool:
    """Resolve impl for one call; `unsupported` says why these inputs need the reference (or None)."""
    if impl not in IMPLS:
        raise ValueError(f"gcrepro.ops.{op}: impl={impl!r}; expected one of {IMPLS}")
    device_type = x.device.type
    built = fused_available(x.device)
    if impl == "fused":
        if not built:
            raise _extension.build_error(device_type)
        use, why = True, "impl='fused'"
    elif impl == "reference":
        use, why = False, "impl='reference'"
    elif not built:
        reason = _extension.STATE.cuda_reason if device_type == "cuda" else _extension.STATE.cpu_reason
        use, why = False, f"impl='auto' and the fused op is unavailable: {reason or 'no kernels for ' + device_type}"
    elif unsupported is not None:
        use, why = False, f"impl='auto' and {unsupported}"
    else:
        use, why = True, "impl='auto'"
    key = (op, device_type, "fused" if use else "reference")
    if key not in _logged and not torch.compiler.is_compiling():
        _logged.add(key)
        which = "the fused compiled op" if use else "the PyTorch reference"
        if use and device_type == "cpu":
            which += f" ({cpu_isa()} kernels)"
        _log.info("gcrepro.ops.%s on %s runs %s (%s)", op, device_type, which, why)
    return use


def _x_unsupported(x: Tensor) -> str | None:
    if x.dim() != 4 or not x.is_floating_point():
        return f"x is {x.dim()}-D {x.dtype} (the op takes 4-D floating tensors)"
    if x.shape[2] * x.shape[3] == 0 or x.shape[1] == 0:
        return f"x has an empty dimension {tuple(x.shape)}"
    return None


def _context_unsupported(x: Tensor, mask_weight: Tensor, mask_bias: Tensor | None) -> str | None:
    why = _x_unsupported(x)
    if why is not None:
        return why
    if mask_weight.numel() != x.shape[1] or mask_weight.device != x.device:
        return "mask_weight does not match x"
    if mask_bias is not None and (mask_bias.numel() != 1 or mask_bias.device != x.device):
        return "mask_bias does not match x"
    return None


def _residual_unsupported(x: Tensor, residual: Tensor | None) -> str | None:
    if residual is not None and (
        residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device
    ):
        return "residual does not match x in shape, dtype or device"
    return None


def _add_unsupported(x: Tensor, term: Tensor, residual: Tensor | None) -> str | None:
    why = _x_unsupported(x)
    if why is not None:
        return why
    if term.numel() != x.shape[0] * x.shape[1] or term.device != x.device or not term.is_floating_point():
        return f"term {tuple(term.shape)} is not one value per (sample, channel) of x {tuple(x.shape)}"
    return _residual_unsupported(x, residual)


def gc_context(x: Tensor, mask_weight: Tensor, mask_bias: Tensor | None, impl: str = "reference") -> Tensor:
    """Attention pooling: softmax_j(w . x_j + b) weighted sum of x over HW.

    x [N, C, H, W], mask_weight [1, C, 1, 1], mask_bias [1] or None -> context [N, C, 1, 1].
    """
    if _use_fused("gc_context", impl, x, _context_unsupported(x, mask_weight, mask_bias)):
        return _fused.gc_context_fused(x, mask_weight, mask_bias)
    return gc_context_reference(x, mask_weight, mask_bias)


def channel_add(
    x: Tensor, term: Tensor, residual: Tensor | None = None, relu: bool = False, impl: str = "reference"
) -> Tensor:
    """x [N, C, H, W] + term [N, C, 1, 1] (broadcast over HW), then + residual and ReLU when asked.

    The fused op returns x's dtype and computes the sum in fp32 (fp64 for fp64), rounding once.
    """
    if _use_fused("channel_add", impl, x, _add_unsupported(x, term, residual)):
        return _fused.channel_add_fused(x, term, residual, relu)
    return channel_add_reference(x, term, residual, relu)


def gc_block(
    x: Tensor,
    conv_mask: nn.Conv2d,
    transform: nn.Sequential,
    residual: Tensor | None = None,
    relu: bool = False,
    impl: str = "reference",
) -> Tensor:
    """The paper's GC block: x + transform(gc_context(x)) (+ residual) (then ReLU).

    x, residual [N, C, H, W]; conv_mask Conv2d(C, 1, 1); transform Conv1x1(C->P) -> LayerNorm ->
    ReLU -> Conv1x1(P->C) (ContextBlock.channel_add_conv) -> out [N, C, H, W]. The fused path is
    one autograd node (gcrepro/ops/block.py): x's two gradients are summed inside the kernel.
    """
    # (the block makes its own channel term, one per (sample, channel): only x, the mask and the residual to check)
    unsupported = _context_unsupported(x, conv_mask.weight, conv_mask.bias) or _residual_unsupported(x, residual)
    if _use_fused("gc_block", impl, x, unsupported):
        return _block.gc_block_fused(x, conv_mask, transform, residual, relu)
    context = gc_context_reference(x, conv_mask.weight, conv_mask.bias)  # [N, C, 1, 1]
    return channel_add_reference(x, transform(context), residual, relu)  # [N, C, H, W]
