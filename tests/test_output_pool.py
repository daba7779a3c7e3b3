"""The pool that recycles the CPU kernels' large outputs (csrc/cpu/output_pool.h).

Outputs of 1 MiB and more come from blocks freed earlier, so a training step that allocates the
same sizes every iteration page-faults only on its first one. The pool must never change a
result: a recycled block holds the previous output's values until the kernel overwrites all of
it, and its strides must be the ones at::empty would give."""
from __future__ import annotations

import gc
import json
import resource
import subprocess
import threading

import pytest
import torch

from gcrepro import ops
from gcrepro.ops import _extension

from child_process import run_python  # tests/child_process.py

pytestmark = pytest.mark.skipif(not _extension.STATE.cpu, reason="the compiled op is not built (or GCREPRO_NO_EXT=1)")

BIG = (2, 64, 64, 64)  # 2 MiB of fp32: served by the pool


def _pool_on() -> bool:
    return ops.cpu_output_pool()["cap_bytes"] > 0


needs_pool = pytest.mark.skipif(
    _extension.STATE.cpu and not _pool_on(), reason="GCREPRO_CPU_POOL_MB=0 turns the pool off in this run"
)


def _run(script: str, pool_mb: str | None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_python(script, env={"GCREPRO_CPU_POOL_MB": pool_mb}, timeout=timeout)


@needs_pool
@pytest.mark.parametrize("channels_last", [False, True])
def test_freed_output_is_reused_and_fully_overwritten(channels_last):
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x1 = torch.randn(BIG, generator=g).to(memory_format=fmt)
    x2 = torch.randn(BIG, generator=g).to(memory_format=fmt)
    term = torch.randn(2, 64, 1, 1, generator=g)
    out = ops.channel_add(x1, term, impl="fused")
    first_ptr = out.data_ptr()
    del out  # back to the pool, still holding x1 + term
    before = ops.cpu_output_pool()
    out = ops.channel_add(x2, -term, residual=x1, relu=True, impl="fused")
    after = ops.cpu_output_pool()
    assert out.data_ptr() == first_ptr, "the freed block was not reused"
    assert after["hits"] == before["hits"] + 1
    # Strides as torch's own output would have them, and every value overwritten.
    want = torch.relu(x2 - term + x1)
    assert out.stride() == want.stride()
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@needs_pool
def test_reused_output_does_not_page_fault():
    # The point of the pool: the second output of the same size touches only mapped memory.
    x = torch.randn(2, 256, 64, 64)  # 8 MiB: 2048 pages of 4 KiB
    term = torch.randn(2, 256, 1, 1)
    ops.channel_add(x, term, impl="fused")  # the block is freed straight away
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = ops.channel_add(x, term, impl="fused")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    assert faults < 100, f"{faults} page faults writing a recycled 8 MiB output (a fresh one: ~2048)"
    torch.testing.assert_close(out, x + term, rtol=0, atol=0)


@needs_pool
def test_small_outputs_bypass_the_pool():
    x = torch.randn(2, 16, 32, 32)  # 128 KiB
    before = ops.cpu_output_pool()
    ops.channel_add(x, torch.randn(2, 16, 1, 1), impl="fused")
    after = ops.cpu_output_pool()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


@needs_pool
def test_outputs_freed_on_other_threads_return_to_the_pool():
    gc.collect()  # pooled tensors of earlier tests, if any are still to be collected, go now
    x = torch.randn(BIG)
    term = torch.randn(2, 64, 1, 1)
    live = ops.cpu_output_pool()["live_bytes"]
    outs = [ops.channel_add(x, term * i, impl="fused") for i in range(8)]
    assert ops.cpu_output_pool()["live_bytes"] >= live + 8 * 2 * 2**20

    def drop(k: int) -> None:
        outs[k] = None

    threads = [threading.Thread(target=drop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ops.cpu_output_pool()["live_bytes"] == live


@needs_pool
def test_pooled_output_resizes_like_any_tensor():
    # Growing moves the data to memory from torch's allocator; the block goes back to the pool.
    gc.collect()
    live = ops.cpu_output_pool()["live_bytes"]
    out = ops.channel_add(torch.randn(BIG), torch.randn(2, 64, 1, 1), impl="fused")
    before = out.clone()
    assert ops.cpu_output_pool()["live_bytes"] == live + 2 * 2**20
    out.resize_(2, 64, 64, 128)
    assert out.shape == (2, 64, 64, 128)
    assert torch.equal(out.view(-1)[: before.numel()], before.view(-1))
    assert ops.cpu_output_pool()["live_bytes"] == live
    out.fill_(1.0)  # the new memory is the tensor's own
    assert out.sum().item() == out.numel()


@needs_pool
def test_release_frees_kept_blocks():
    out = ops.channel_add(torch.randn(BIG), torch.randn(2, 64, 1, 1), impl="fused")
    del out
    cached = ops.cpu_output_pool()["cached_bytes"]
    assert cached >= 2 * 2**20
    assert ops.release_cpu_output_pool() == cached
    assert ops.cpu_output_pool()["cached_bytes"] == 0
    assert ops.cpu_output_pool()["cached_blocks"] == 0


_CAP_SCRIPT = """
import json, torch
from gcrepro import ops
x = torch.randn(2, 64, 64, 64)
t = torch.randn(2, 64, 1, 1)
outs = [ops.channel_add(x, t * i, impl="fused") for i in range(6)]  # six 2 MiB blocks
ok = all(torch.equal(o, x + t * i) for i, o in enumerate(outs))
del outs
print(json.dumps({"ok": ok, **ops.cpu_output_pool()}))
"""


def test_cap_bounds_the_kept_memory():
    proc = _run(_CAP_SCRIPT, "5")  # room for two 2 MiB blocks
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)
    assert stats["ok"]
    assert stats["cap_bytes"] == 5 * 2**20
    assert stats["cached_bytes"] == 4 * 2**20 and stats["cached_blocks"] == 2
    assert stats["live_bytes"] == 0


def test_pool_off_with_zero():
    proc = _run(_CAP_SCRIPT, "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)
    assert stats["ok"]
    assert (stats["cap_bytes"], stats["cached_bytes"], stats["hits"], stats["misses"]) == (0, 0, 0, 0)


def test_bad_pool_size_is_named():
    proc = _run("from gcrepro import ops; ops.cpu_output_pool()", "lots")
    assert proc.returncode != 0
    assert "GCREPRO_CPU_POOL_MB" in proc.stderr and "'lots'" in proc.stderr


_FORK_SCRIPT = """
import os, sys, torch
from gcrepro import ops
x = torch.randn(2, 64, 64, 64)
t = torch.randn(2, 64, 1, 1)
keep = ops.channel_add(x, t, impl="fused")  # a pooled output the child inherits
pid = os.fork()
if pid == 0:  # the child (a DataLoader worker would be one): the pool works, inherited tensors free
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's pool does not survive a fork
    out = ops.channel_add(x, -t, impl="fused")
    ok = torch.equal(out, x - t) and torch.equal(keep, x + t)
    del out, keep
    os._exit(0 if ok and ops.cpu_output_pool()["live_bytes"] == 0 else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@needs_pool
def test_pool_works_in_a_forked_child():
    proc = _run(_FORK_SCRIPT, None, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


_OOM_SCRIPT = """
import resource, torch
from gcrepro import ops
small = torch.randn(2, 64, 128, 128)  # 8 MiB outputs
big = torch.randn(2, 128, 128, 128)  # a 16 MiB output: no kept 8 MiB block can serve it
t_small, t_big = torch.randn(2, 64, 1, 1), torch.randn(2, 128, 1, 1)
want = big + t_big
outs = [ops.channel_add(small, t_small * i, impl="fused") for i in range(4)]
del outs  # 32 MiB kept by the pool
assert ops.cpu_output_pool()["cached_bytes"] == 32 * 2**20
vm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = (vm_kb << 10) - 8 * 2**20  # address space below what is mapped now: a new 16 MiB block cannot fit
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
out = ops.channel_add(big, t_big, impl="fused")  # fails once, frees the kept blocks, succeeds
assert torch.equal(out, want)
stats = ops.cpu_output_pool()
assert stats["cached_bytes"] == 0, stats
print("ok")
"""


@needs_pool
def test_out_of_memory_frees_kept_blocks_and_retries():
    proc = _run(_OOM_SCRIPT, None, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
