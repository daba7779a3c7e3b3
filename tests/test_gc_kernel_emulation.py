"""The CUDA kernels of csrc/cuda/gc_kernels.cu emulated on the CPU: their index formulas and loop
structure, thread by thread (vectorised over the threads of a block; warp shuffles as index
permutations), in fp64, on the launch split the real host code computes
(torch.ops.gcrepro.cuda_context_plan, csrc/cuda/launch_plan.h).

No GPU has run these kernels; this is what checks them here: every element is read and written
as often as the kernel means to (once per phase), every partial result lands where the combine
reads it, the results equal the fp64 reference, a chunk of -inf logits stays out of the sum,
small N x K grids fill the GPU and H*W = 1 uses whole warps. A change to a kernel's indexing goes
into its mirror below. What this cannot see: races, the hardware's rounding, memory errors
(scripts/gc_sanitize.py under compute-sanitizer and tests/test_gc_op_cuda.py on a device).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pytest
import torch

from gcrepro import ops
from gcrepro.ops.reference import channel_add_reference, gc_context_reference

NO_EXT = os.environ.get("GCREPRO_NO_EXT", "") == "1"
pytestmark = pytest.mark.skipif(NO_EXT or not ops.fused_available("cpu"), reason="compiled GC op not built")
WARP = 32
NEG_INF = float("-inf")
H100_SMS = 132  # H100 / H200 SXM


def plan(n: int, hw: int, nhwc: bool, sms: int) -> tuple[int, int, int]:
    """(positions per block P, blocks per sample K, threads per block) from the real host code."""
    p, k, threads, _max_batch = torch.ops.gcrepro.cuda_context_plan(n, hw, nhwc, sms)
    return p, k, threads


@dataclass
class Memory:
    """Flat fp64 arrays and how often each element was touched."""

    x: torch.Tensor  # in the kernel's memory order: [N, C, HW] (NCHW) or [N, HW, C]
    reads: dict[str, torch.Tensor] = field(default_factory=dict)
    writes: dict[str, torch.Tensor] = field(default_factory=dict)
    warp_loads: int = 0  # warp-level load instructions of x in the logit sweep
    lane_loads: int = 0  # lanes that loaded in them

    def count(self, table: dict, name: str, index: torch.Tensor, size: int) -> None:
        table.setdefault(name, torch.zeros(size, dtype=torch.int64)).index_add_(0, index, torch.ones_like(index))


class Block:
    """Thread indices of one block: tid, lane, warp id, warp count."""

    def __init__(self, threads: int) -> None:
        self.tid = torch.arange(threads)
        self.lane = self.tid % WARP
        self.wid = self.tid // WARP
        self.nw = threads // WARP

    def lanes_sum(self, v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """lanes_sum(v, from, to): xor-shuffle butterfly over lane bits [lo, hi)."""
        o = lo
        while o < hi:
            v = v + v[self.tid ^ o]
            o <<= 1
        return v


def chunk_softmax(logit: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Warp 0's chunk_softmax over 32 lanes -> (p [32], max, sum)."""
    l = torch.where(valid, logit, torch.full_like(logit, NEG_INF))
    cm = l.max().item()  # warp_max
    ref = 0.0 if cm == NEG_INF else cm  # finite_or_zero
    e = torch.where(valid, torch.exp(l - ref), torch.zeros_like(l))
    return e, cm, e.sum().item()


def _loop_iters(first_min: int, end: int, step: int) -> int:
    return max(0, math.ceil((end - first_min) / step))


# --------------------------------------------------------------------------- forward kernels


def nchw_blocks(N: int, K: int, threads: int, P: int, C: int, HW: int):
    """Blocks (k, n) of context_partial_nchw / context_backward_nchw with their shared prologue:
    n, k, Block, G (channel groups per warp), q (position in the chunk) and grp (channel group)
    per thread, j0 (first position), valid (j0 + q < HW), base (element (n, c, j0 + q) at
    base + c * HW), c_step (channels per sweep), c_first (each thread's first channel)."""
    for n in range(N):
        for k in range(K):
            b = Block(threads)
            G, q, grp = WARP // P, b.lane % P, b.lane // P
            j0 = k * P
            yield n, k, b, G, q, grp, j0, j0 + q < HW, n * C * HW + j0 + q, b.nw * G, b.wid * G + grp


def context_partial_nchw(mem, w, N, C, HW, P, K, threads, pm, ps, pa):
    x = mem.x
    for n, k, b, G, q, grp, j0, valid, base, c_step, c_first in nchw_blocks(N, K, threads, P, C, HW):
        l = torch.zeros(threads, dtype=torch.float64)
        for i in range(_loop_iters(0, C, c_step)):  # for (c = c_first; c < C; c += c_step), if valid
            c = c_first + i * c_step
            act = valid & (c < C)
            idx = (base + c * HW)[act]
            l[act] += w[c[act]] * x[idx]
            mem.count(mem.reads, "x phase 1", idx, x.numel())
            mem.warp_loads += len(b.wid[act].unique())  # warps with a lane in the loop issue the load
            mem.lane_loads += int(act.sum())
        l = b.lanes_sum(l, P, WARP)
        part = torch.zeros(b.nw, WARP, dtype=torch.float64)
        writer = grp == 0
        part[b.wid[writer], q[writer]] = l[writer]
        lane0 = torch.arange(WARP)
        mine = (lane0 < P) & (j0 + lane0 < HW)
        lj = torch.where(lane0 < P, part.sum(0), torch.zeros(WARP, dtype=torch.float64))
        p, pm[n * K + k], ps[n * K + k] = chunk_softmax(lj, mine)
        mem.count(mem.writes, "pm", torch.tensor([n * K + k]), N * K)
        pj = p[q]
        for i in range(_loop_iters(0, C, c_step)):  # for (c0 = wid * G; c0 < C; c0 += c_step)
            c0 = b.wid * G + i * c_step
            warp_in = c0 < C
            c = c0 + grp
            act = warp_in & valid & (c < C)
            v = torch.zeros(threads, dtype=torch.float64)
            idx = base + c * HW
            v[act] = pj[act] * x[idx[act]]
            mem.count(mem.reads, "x phase 2", idx[act], x.numel())
            v = b.lanes_sum(v, 1, P)
            wr = warp_in & (q == 0) & (c < C)
            pa[(n * K + k) * C + c[wr]] = v[wr]
            mem.count(mem.writes, "pa", (n * K + k) * C + c[wr], N * K * C)


def nhwc_blocks(N: int, K: int, threads: int, P: int, C: int, HW: int):
    """Blocks (k, n) of context_partial_nhwc / context_backward_nhwc: n, k, Block, jn (positions
    in the chunk) and base (element (n, j0 + j, c) at base + j * C + c)."""
    for n in range(N):
        for k in range(K):
            j0 = k * P
            yield n, k, Block(threads), min(P, HW - j0), (n * HW + j0) * C


def context_partial_nhwc(mem, w, N, C, HW, P, K, threads, pm, ps, pa):
    x = mem.x
    for n, k, b, jn, xc in nhwc_blocks(N, K, threads, P, C, HW):
        p = torch.zeros(WARP, dtype=torch.float64)
        for wid in range(b.nw):
            for j in range(wid, jn, b.nw):  # a warp per position
                lane = torch.arange(WARP)
                acc = torch.zeros(WARP, dtype=torch.float64)
                for i in range(_loop_iters(0, C, WARP)):  # for (c = lane; c < C; c += 32)
                    c = lane + i * WARP
                    act = c < C
                    idx = xc + j * C + c[act]
                    acc[act] += w[c[act]] * x[idx]
                    mem.count(mem.reads, "x phase 1", idx, x.numel())
                    mem.warp_loads += 1
                    mem.lane_loads += int(act.sum())
                p[j] = acc.sum()  # warp_sum; lane 0 writes p[j]
        lane = torch.arange(WARP)
        e, pm[n * K + k], ps[n * K + k] = chunk_softmax(torch.where(lane < jn, p, torch.zeros_like(p)), lane < jn)
        mem.count(mem.writes, "pm", torch.tensor([n * K + k]), N * K)
        for i in range(_loop_iters(0, C, threads)):  # for (c = tid; c < C; c += blockDim)
            c = b.tid + i * threads
            c = c[c < C]
            a = torch.zeros(len(c), dtype=torch.float64)
            for j in range(jn):
                idx = xc + j * C + c
                a += e[j] * x[idx]
                mem.count(mem.reads, "x phase 2", idx, x.numel())
            pa[(n * K + k) * C + c] = a
            mem.count(mem.writes, "pa", (n * K + k) * C + c, N * K * C)


def context_combine(N, C, K, pm, ps, pa, out, lse, writes):
    rows = 8  # kCombineRows
    for n in range(N):
        for cb in range(math.ceil(C / WARP)):  # grid ((C + 31) / 32, N), 256 threads
            m = pm[n * K:(n + 1) * K]
            M = m.max().item()
            ref = 0.0 if M == NEG_INF else M
            S = (ps[n * K:(n + 1) * K] * torch.exp(m - ref)).sum().item()
            lane = torch.arange(WARP)
            c = cb * WARP + lane
            ok = c < C
            part = torch.zeros(rows, WARP, dtype=torch.float64)
            for r in range(rows):  # warp r sums chunks r, r + 8, ...
                for k in range(r, K, rows):
                    part[r, ok] += math.exp(m[k].item() - ref) * pa[(n * K + k) * C + c[ok]]
            out[n * C + c[ok]] = part.sum(0)[ok] / S
            writes.setdefault("context", torch.zeros(N * C, dtype=torch.int64)).index_add_(
                0, n * C + c[ok], torch.ones(int(ok.sum()), dtype=torch.int64))
            if cb == 0:
                lse[n] = M + (math.log(S) if S > 0 else NEG_INF)


def emulate_context(x, w, sms, threads=None):
    """gc_context's CUDA path -> (context [N, C], lse [N], Memory, plan). threads overrides the plan's."""
    N, C, H, W = x.shape
    HW = H * W
    nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    P, K, t = plan(N, HW, nhwc, sms)
    t = threads or t
    flat = (x.permute(0, 2, 3, 1) if nhwc else x).contiguous().flatten().double()
    mem = Memory(flat)
    wv = w.flatten().double()
    pm = torch.empty(N * K, dtype=torch.float64)
    ps = torch.empty(N * K, dtype=torch.float64)
    pa = torch.empty(N * K * C, dtype=torch.float64)
    (context_partial_nhwc if nhwc else context_partial_nchw)(mem, wv, N, C, HW, P, K, t, pm, ps, pa)
    out = torch.empty(N * C, dtype=torch.float64)
    lse = torch.empty(N, dtype=torch.float64)
    context_combine(N, C, K, pm, ps, pa, out, lse, mem.writes)
    return out.view(N, C), lse, mem, (P, K, t)


# -------------------------------------------------------------------------- backward kernels


def context_backward_nchw(mem, w, g, gdot, lse, N, C, HW, P, K, threads, ax, dx, pdw):
    x = mem.x
    for n, k, b, G, q, grp, j0, valid, base, c_step, c_first in nchw_blocks(N, K, threads, P, C, HW):
        gn = g[n * C:(n + 1) * C]
        l = torch.zeros(threads, dtype=torch.float64)
        s = torch.zeros(threads, dtype=torch.float64)
        for i in range(_loop_iters(0, C, c_step)):
            c = c_first + i * c_step
            act = valid & (c < C)
            idx = (base + c * HW)[act]
            l[act] += w[c[act]] * x[idx]
            s[act] += gn[c[act]] * x[idx]
            mem.count(mem.reads, "x backward phase 1", idx, x.numel())
        l, s = b.lanes_sum(l, P, WARP), b.lanes_sum(s, P, WARP)
        writer = grp == 0
        part_l = torch.zeros(b.nw, WARP, dtype=torch.float64)
        part_s = torch.zeros(b.nw, WARP, dtype=torch.float64)
        part_l[b.wid[writer], q[writer]] = l[writer]
        part_s[b.wid[writer], q[writer]] = s[writer]
        lane0 = torch.arange(WARP)
        lj, sj = part_l.sum(0), part_s.sum(0)
        pp = torch.where((lane0 < P) & (j0 + lane0 < HW), torch.exp(lj - lse[n]), torch.zeros(WARP, dtype=torch.float64))
        pd = pp * (sj - gdot[n])
        pj, dl = pp[q], pd[q]
        for i in range(_loop_iters(0, C, c_step)):
            c0 = b.wid * G + i * c_step
            warp_in = c0 < C
            c = c0 + grp
            act = warp_in & valid & (c < C)
            idx = (base + c * HW)[act]
            gx = pj[act] * gn[c[act]] + w[c[act]] * dl[act]
            if ax is not None:
                gx = gx + ax[idx]
            dx[idx] = gx
            mem.count(mem.writes, "grad_x", idx, x.numel())
            v = torch.zeros(threads, dtype=torch.float64)
            v[act] = dl[act] * x[idx]
            v = b.lanes_sum(v, 1, P)
            wr = warp_in & (q == 0) & (c < C)
            pdw[(n * K + k) * C + c[wr]] = v[wr]
            mem.count(mem.writes, "pdw", (n * K + k) * C + c[wr], N * K * C)


def context_backward_nhwc(mem, w, g, gdot, lse, N, C, HW, P, K, threads, ax, dx, pdw):
    x = mem.x
    for n, k, b, jn, base in nhwc_blocks(N, K, threads, P, C, HW):
        gn = g[n * C:(n + 1) * C]
        pp = torch.zeros(WARP, dtype=torch.float64)
        pd = torch.zeros(WARP, dtype=torch.float64)
        for wid in range(b.nw):
            for j in range(wid, jn, b.nw):
                c = torch.arange(C)  # lanes c = lane + 32 i, summed by warp_sum
                idx = base + j * C + c
                l, s = (w * x[idx]).sum(), (gn * x[idx]).sum()
                mem.count(mem.reads, "x backward phase 1", idx, x.numel())
                pp[j] = torch.exp(l - lse[n])
                pd[j] = pp[j] * (s - gdot[n])
        for i in range(_loop_iters(0, C, threads)):
            c = b.tid + i * threads
            c = c[c < C]
            a = torch.zeros(len(c), dtype=torch.float64)
            for j in range(jn):
                idx = base + j * C + c
                gx = pp[j] * gn[c] + w[c] * pd[j]
                if ax is not None:
                    gx = gx + ax[idx]
                dx[idx] = gx
                mem.count(mem.writes, "grad_x", idx, x.numel())
                a += pd[j] * x[idx]
            pdw[(n * K + k) * C + c] = a
            mem.count(mem.writes, "pdw", (n * K + k) * C + c, N * K * C)


def emulate_context_backward(x, w, grad_context, grad_lse, context, lse, grad_x_add, sms, threads=None):
    """gc_context_backward's CUDA path (host glue of gc_ops.h included) -> (grad_x, grad_w, Memory)."""
    N, C, H, W = x.shape
    HW = H * W
    nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    P, K, t = plan(N, HW, nhwc, sms)
    t = threads or t
    order = (lambda v: v.permute(0, 2, 3, 1)) if nhwc else (lambda v: v)
    mem = Memory(order(x).contiguous().flatten().double())
    ax = None if grad_x_add is None else order(grad_x_add).contiguous().flatten().double()
    g = grad_context.flatten().double()
    gdot = (grad_context.double() * context.double()).sum(1) - grad_lse.double()  # gc_ops.h
    dx = torch.full((N * C * HW,), float("nan"), dtype=torch.float64)
    pdw = torch.full((N * K * C,), float("nan"), dtype=torch.float64)
    kernel = context_backward_nhwc if nhwc else context_backward_nchw
    kernel(mem, w.flatten().double(), g, gdot, lse.double(), N, C, HW, P, K, t, ax, dx, pdw)
    grad_x = dx.view(N, H, W, C).permute(0, 3, 1, 2) if nhwc else dx.view(N, C, H, W)
    return grad_x, pdw.view(N * K, C).sum(0), mem


# --------------------------------------------------------------------------- add kernels


def rows_of_channels(nhwc: bool, hw: int) -> bool:
    return nhwc or hw == 1  # gc_kernels.cu rows_of_channels


def emulate_add(x, t, residual, relu, sms, vec_width):
    """add_rows over the launch of launch_add (V = vec_width) -> (out, Memory)."""
    N, C, H, W = x.shape
    HW = H * W
    nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    order = (lambda v: v.permute(0, 2, 3, 1)) if nhwc else (lambda v: v)
    xf = order(x).contiguous().flatten().double()
    rf = None if residual is None else order(residual).contiguous().flatten().double()
    tf = t.flatten().double()
    cl = rows_of_channels(nhwc, HW)
    rows, length = (N * HW, C) if cl else (N * C, HW)
    V = vec_width if length % vec_width == 0 else 1  # dispatch_add_vec (alignment assumed)
    packs = length // V
    threads = min(256, (packs + WARP - 1) // WARP * WARP)
    blocks = min(rows, sms * 32)
    out = torch.full_like(xf, float("nan"))
    mem = Memory(xf)
    tid = torch.arange(threads)
    for blk in range(blocks):
        for row in range(blk, rows, blocks):  # grid-stride over rows
            off = row * length
            for i0 in range(0, packs, threads):
                i = tid + i0
                i = i[i < packs]
                mem.warp_loads += math.ceil(len(i) / WARP)
                e = (i[:, None] * V + torch.arange(V)).flatten()  # the pack's elements
                tv = tf[(row // HW) * length + e] if cl else tf[row].expand(len(e))
                v = xf[off + e] + tv
                if rf is not None:
                    v = v + rf[off + e]
                if relu:
                    v = v.clamp_min(0)
                out[off + e] = v
                mem.count(mem.writes, "out", off + e, xf.numel())
    out = out.view(N, H, W, C).permute(0, 3, 1, 2) if nhwc else out.view(N, C, H, W)
    return out, mem, threads


# ------------------------------------------------------------------------------------ tests

SHAPES = [(2, 3, 1, 1), (2, 48, 1, 1), (2, 3, 3, 11), (1, 48, 3, 11), (2, 48, 11, 13), (1, 5, 7, 9)]


def _inputs(shape, layout, seed, logit_scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(1, shape[1], 1, 1, generator=g, dtype=torch.float64) * logit_scale / shape[1] ** 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("sms", [H100_SMS, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES)
def test_context_forward_and_backward_kernels(shape, layout, sms):
    # sms 132 gives small positions per block (few blocks), sms 4 the full 32; both block sizes
    # run through the plan (1024 threads for few NCHW blocks, 256 otherwise)
    x, w = _inputs(shape, layout, seed=sum(shape))
    N, C, H, W = shape
    context, lse, mem, (P, K, threads) = emulate_context(x, w, sms)
    nhwc = layout == "channels_last" and not x.is_contiguous()
    assert P * K >= H * W > P * (K - 1) and 1 <= P <= WARP and P & (P - 1) == 0
    for name in ("x phase 1", "x phase 2"):  # every element read exactly once per phase
        assert torch.equal(mem.reads[name], torch.ones_like(mem.reads[name])), (name, mem.reads[name].unique())
    for name, size in (("pm", N * K), ("pa", N * K * C), ("context", N * C)):
        assert torch.equal(mem.writes[name], torch.ones(size, dtype=torch.int64)), name
    assert _rel(context, gc_context_reference(x, w, None).flatten(1)) <= 1e-12
    logits = torch.nn.functional.conv2d(x, w).flatten(1)
    assert _rel(lse, torch.logsumexp(logits, 1)) <= 1e-12

    g = torch.Generator().manual_seed(7)
    grad_c, grad_lse = torch.randn(N, C, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    add = torch.randn(shape, generator=g, dtype=torch.float64)
    grad_x, grad_w, bmem = emulate_context_backward(x, w, grad_c, grad_lse, context, lse, add, sms)
    assert torch.equal(bmem.reads["x backward phase 1"], torch.ones(x.numel(), dtype=torch.int64))
    assert torch.equal(bmem.writes["grad_x"], torch.ones(x.numel(), dtype=torch.int64))
    assert torch.equal(bmem.writes["pdw"], torch.ones(N * K * C, dtype=torch.int64))
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref_c = gc_context_reference(xr, wr, None).flatten(1)
    ref_l = torch.logsumexp(torch.nn.functional.conv2d(xr, wr).flatten(1), 1)
    ((ref_c * grad_c).sum() + (ref_l * grad_lse).sum()).backward()
    assert _rel(grad_x, xr.grad + add) <= 1e-12 and _rel(grad_w, wr.grad.flatten()) <= 1e-12
    # and the threads count the plan did not pick
    other = 256 if threads == 1024 or nhwc else 1024
    assert _rel(emulate_context(x, w, sms, threads=other)[0], context) <= 1e-12


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_chunk_of_neg_inf_logits(layout):
    # The input: x[0, 0, 0, :32] = -inf, W >= 32, w[0] > 0, so one whole CUDA chunk of 32
    # positions (P = 32 with sms = 1) has only -inf logits. Channel 0 is NaN (0 * -inf) as in the
    # reference, every other channel finite.
    x, w = _inputs((2, 6, 2, 40), layout, seed=3)
    x[0, 0, 0, :32] = NEG_INF
    w[0, 0] = 0.5
    context, lse, _, (P, _, _) = emulate_context(x, w, sms=1)
    assert P == WARP
    want = gc_context_reference(x, w, None).flatten(1)
    assert torch.equal(context.isnan(), want.isnan()) and want[0, 0].isnan()
    ok = ~want.isnan()
    assert _rel(context[ok], want[ok]) <= 1e-12
    assert _rel(lse, torch.logsumexp(torch.nn.functional.conv2d(x, w).flatten(1), 1)) <= 1e-12
    # every logit of a sample -inf: NaN context and lse -inf, as torch
    x[1, 0] = NEG_INF
    w[0, 0] = 1.0
    context, lse, _, _ = emulate_context(x, w, sms=1)
    assert context[1].isnan().all() and lse[1].item() == NEG_INF


def test_small_grids_fill_the_gpu():
    # c5 of the paper (2 x 2048 x 25 x 38): 32 positions per block gave 2 x 30 = 60 blocks for 132
    # SMs. Now the positions per block halve until >= 2 blocks per SM (or 8 positions).
    for nhwc in (False, True):
        p, k, threads = plan(2, 25 * 38, nhwc, H100_SMS)
        assert (p, k) == (8, 119) and 2 * k >= H100_SMS, (p, k)
        assert threads == (256 if nhwc else 1024)
    p, k, _ = plan(2, 50 * 76, False, H100_SMS)  # c4: 16 positions, 476 blocks
    assert (p, k) == (16, 238)
    assert plan(2, 100 * 152, False, H100_SMS)[:2] == (32, 475)  # c3 fills it at 32
    assert plan(1, 25 * 38, False, H100_SMS)[0] == 8  # never below 8 (32-byte fp32 row segments)
    assert plan(16, 25 * 38, False, H100_SMS)[:2] == (32, 30)  # a large batch keeps 32


@pytest.mark.parametrize("channels", [64, 48])
def test_hw_1_uses_whole_warps(channels):
    # H*W = 1: a block per sample with P = 1, so all 32 lanes of a warp read 32 channels (before:
    # lane = position, 1 of 32 lanes). gc_add reads rows of C values instead of N*C rows of one.
    x, w = _inputs((2, channels, 1, 1), "contiguous", seed=1)
    _, _, mem, (P, K, _) = emulate_context(x, w, H100_SMS)
    assert (P, K) == (1, 1)
    busy = mem.lane_loads / (WARP * mem.warp_loads)
    assert busy == (1.0 if channels % WARP == 0 else channels / (WARP * math.ceil(channels / WARP))), busy
    t = torch.randn(2, channels, dtype=torch.float64)
    out, amem, _ = emulate_add(x, t, None, False, H100_SMS, vec_width=4)
    assert amem.warp_loads == 2  # one per sample (was N * C = one per channel)
    assert torch.equal(out, channel_add_reference(x, t.view(2, channels, 1, 1)))


@pytest.mark.parametrize("vec", [1, 4, 8])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 16, 1, 1), (2, 48, 3, 11), (1, 8, 11, 13)])
def test_add_kernel_writes_each_element_once(shape, layout, vec):
    x, _ = _inputs(shape, layout, seed=2)
    g = torch.Generator().manual_seed(5)
    t = torch.randn(shape[0], shape[1], generator=g, dtype=torch.float64)
    res = torch.randn(shape, generator=g, dtype=torch.float64)
    out, mem, _ = emulate_add(x, t, res, True, sms=2, vec_width=vec)
    assert torch.equal(mem.writes["out"], torch.ones(x.numel(), dtype=torch.int64))
    assert torch.equal(out, channel_add_reference(x, t.view(*shape[:2], 1, 1), res, True))
