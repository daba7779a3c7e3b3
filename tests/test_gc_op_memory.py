"""CPU outputs of the fused GC op of 32 MiB and more are advised as transparent huge pages (csrc/gc_ops.h,
advise_huge_pages): without it the paper's c3 block forward spent most of its time in page faults of
its fresh 62 MB output (benchmarks/RESULTS.md). Read back from /proc/self/smaps: the mapping that holds
the output carries the "hg" (MADV_HUGEPAGE) flag; an output under the threshold is left as it is."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from gcrepro import ops
from gcrepro.modeling.context_block import ContextBlock

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = [
    pytest.mark.skipif(os.environ.get("GCREPRO_NO_EXT", "") == "1" or not ops.fused_available("cpu"),
                       reason="compiled GC op not built"),
    pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists(),
                       reason="transparent huge pages are a Linux kernel feature, absent here"),
]


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds ``address``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(p, 16) for p in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    raise AssertionError(f"no mapping in /proc/self/smaps holds {address:#x}")


def _block(channels: int) -> ContextBlock:
    block = ContextBlock(channels, 1 / 16, impl="fused").eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.1)
    return block


def test_a_large_output_is_advised_as_huge_pages() -> None:
    x = torch.randn(2, 256, 128, 160)  # 40 MiB, over the 32 MiB threshold
    block = _block(x.shape[1])
    with torch.no_grad():
        out = block(x)
        block.impl = "reference"
        want = block(x)
    interior = (out.data_ptr() + (8 << 20)) & ~((2 << 20) - 1)  # a 2 MiB-aligned address well inside the output
    assert "hg" in _vm_flags(interior), f"VmFlags {_vm_flags(interior)}"
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5 * float(want.abs().max()))  # the advice changes no value


@pytest.mark.skipif(os.environ.get("THP_MEM_ALLOC_ENABLE", "") == "1",
                    reason="THP_MEM_ALLOC_ENABLE=1: torch's allocator advises every large allocation itself")
def test_a_small_output_is_left_alone() -> None:
    x = torch.randn(2, 512, 64, 64)  # 16 MiB, under the threshold (glibc reuses such blocks, faulted in)
    with torch.no_grad():
        out = _block(512)(x)
    assert "hg" not in _vm_flags(out.data_ptr() + (8 << 20))
