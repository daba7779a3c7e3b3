"""Streaming (non-temporal) stores of the CPU add kernel (csrc/cpu/stream_store.h, stream_vec.h).

fp32 outputs larger than half the last-level cache are written with streaming stores, in the
ISA's vector width, with scalar heads and tails around the aligned middle of each row. The
choice is read once per process, so each mode runs in a subprocess (GCREPRO_CPU_STREAM) and both
must give the same bits: the vector and the scalar code add in the same order."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from gcrepro import ops
from gcrepro.ops import _extension
from gcrepro.ops.reference import channel_add_reference

from child_process import run_python  # tests/child_process.py

pytestmark = pytest.mark.skipif(not _extension.STATE.cpu, reason="the compiled op is not built (or GCREPRO_NO_EXT=1)")

_SCRIPT = """
import sys
import torch
from gcrepro import ops
torch.manual_seed(0)
cases = []
# odd H*W and C: rows start at every alignment, so heads, vector middles and tails all run
for shape in [(2, 5, 7, 9), (1, 3, 1, 1), (2, 17, 33, 31), (1, 9, 4, 4)]:
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape)
        x.view(-1)[::7] = float("nan")  # ReLU keeps NaN
        x = x.contiguous(memory_format=fmt)
        t = torch.randn(shape[0], shape[1], 1, 1)
        r = torch.randn(shape).contiguous(memory_format=fmt)
        for res in (None, r):
            for relu in (False, True):
                out = ops.channel_add(x, t, res, relu, impl="fused")
                cases.append((x, t, res, relu, out))
xb = torch.randn(2, 5, 7, 9, dtype=torch.bfloat16)  # not fp32: stored as usual in every mode
cases.append((xb, torch.randn(2, 5, 1, 1, dtype=torch.bfloat16), None, True,
              ops.channel_add(xb, torch.randn(2, 5, 1, 1, dtype=torch.bfloat16), None, True, impl="fused")))
torch.save(cases, sys.argv[1])
"""


def _run(mode: str, path: Path) -> subprocess.CompletedProcess:
    return run_python(_SCRIPT, str(path), env={"GCREPRO_CPU_STREAM": mode})


def test_streaming_and_plain_stores_give_the_same_bits(tmp_path):
    results = {}
    for mode in ("always", "never"):
        proc = _run(mode, tmp_path / f"{mode}.pt")
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[mode] = torch.load(tmp_path / f"{mode}.pt")
    assert len(results["always"]) == len(results["never"]) == 33
    for k, (streamed, plain) in enumerate(zip(results["always"], results["never"])):
        x, t, res, relu, out = streamed
        assert out.stride() == x.stride(), f"case {k}: layout"
        torch.testing.assert_close(out, plain[4], rtol=0, atol=0, equal_nan=True, msg=f"case {k}: always vs never")
        if x.dtype == torch.float32:
            want = channel_add_reference(x, t, res, relu)
            torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True, msg=f"case {k}: vs reference")


def test_bad_mode_is_named(tmp_path):
    proc = _run("sometimes", tmp_path / "x.pt")
    assert proc.returncode != 0
    assert "GCREPRO_CPU_STREAM" in proc.stderr and "'sometimes'" in proc.stderr


def test_last_level_cache_is_read_from_the_machine():
    import gcrepro._C

    llc = gcrepro._C.cpu_last_level_cache_bytes()
    sysfs = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes = {}
    for index in sysfs.glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        sizes[level] = int(text.rstrip("KMG")) * scale
    if sizes:
        assert llc == sizes[max(sizes)]
    else:
        assert llc > 0
    assert ops.cpu_isa() is not None
