"""Start N local worker processes with torchrun's environment (works from a notebook).

Each worker is a fresh ``python -m gcrepro.engine.worker SPEC.json`` process that imports and
runs LIBRARY code: a ``gcrepro.*`` function given as ``"module:function"`` plus JSON keyword
arguments. Functions defined in a notebook cannot be sent to workers (they do not pickle), so none
are accepted.

    from gcrepro.engine.launch import launch
    launch(2, target="gcrepro.engine.api:run_training", kwargs={...})   # returns rank 0's result

Workers get ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` (as torchrun sets them) and, unless already set, ``OMP_NUM_THREADS`` = cores /
workers. Their stdout/stderr are relayed to this process's ``sys.stdout``/``sys.stderr`` (so they
show in a notebook cell). If one worker fails, the others are stopped and :class:`LaunchError`
names the rank, its exit code and its last error line.

Many nodes: use torchrun itself on every node, e.g. 2 nodes x 8 GPUs::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank {0|1} \\
        --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
        -m gcrepro.cli train ENTRY --data /data/coco --work-dir runs/x --gpus 8

(inside a torchrun worker ``gcrepro train`` joins the process group instead of launching).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

LIBRARY_PREFIX = "gcrepro."


class LaunchError(RuntimeError):
    """A worker process failed; the message names the rank, the exit code and its last error line."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"launch kwargs must be JSON values; got {type(obj).__name__}: {obj!r}")


def check_target(target: str) -> None:
    """Only ``gcrepro.*`` functions, named as ``module:function``, run in workers."""
    module, sep, func = target.partition(":")
    if not sep or not func or not module.startswith(LIBRARY_PREFIX):
        raise ValueError(
            f"launch target {target!r}: expected 'gcrepro.module:function' (workers run library code only; "
            "functions defined in a notebook or script cannot be sent to worker processes)"
        )


def _relay(stream: IO[bytes], sink: IO[str], tail: deque[str]) -> None:
    """Copy a worker's output to ``sink`` chunk by chunk (keeps tqdm's carriage returns)."""
    buffer = ""
    for chunk in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
        text = chunk.decode("utf-8", errors="replace")
        sink.write(text)
        sink.flush()
        buffer = (buffer + text)[-8192:]
    for line in buffer.replace("\r", "\n").splitlines():
        if line.strip():
            tail.append(line)
    stream.close()


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    nprocs: int,
    *,
    target: str,
    kwargs: dict[str, Any] | None = None,
    master_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Any:
    """Run ``target(**kwargs)`` in ``nprocs`` local workers; returns rank 0's result.

    The result is what the target returned on rank 0, passed back as JSON (a ``Path`` comes back
    as a string); a failure raises LaunchError.
    """
    if nprocs < 1:
        raise ValueError(f"launch: nprocs must be >= 1, got {nprocs}")
    check_target(target)
    port = master_port or free_port()
    with tempfile.TemporaryDirectory(prefix="gcrepro-launch-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        result_path = Path(tmp) / "result.json"
        spec = {"target": target, "kwargs": kwargs or {}, "result": str(result_path)}
        spec_path.write_text(json.dumps(spec, default=_json_default))
        procs: list[subprocess.Popen] = []
        tails: list[deque[str]] = []
        threads: list[threading.Thread] = []
        threads_per_proc = max(1, (os.cpu_count() or 1) // nprocs)
        try:
            for rank in range(nprocs):
                worker_env = dict(os.environ)
                worker_env.update(env or {})
                worker_env.update(
                    RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs),
                    LOCAL_WORLD_SIZE=str(nprocs), GROUP_RANK="0", ROLE_RANK=str(rank),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1",
                )
                worker_env.setdefault("OMP_NUM_THREADS", str(threads_per_proc))
                p = subprocess.Popen(
                    [sys.executable, "-m", "gcrepro.engine.worker", str(spec_path)],
                    env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )
                procs.append(p)
                tail: deque[str] = deque(maxlen=20)
                tails.append(tail)
                out_tail: deque[str] = deque(maxlen=20)
                for stream, sink, keep in ((p.stdout, sys.stdout, out_tail), (p.stderr, sys.stderr, tail)):
                    t = threading.Thread(target=_relay, args=(stream, sink, keep), daemon=True)
                    t.start()
                    threads.append(t)
            failed: tuple[int, int] | None = None
            while failed is None and any(p.poll() is None for p in procs):
                for rank, p in enumerate(procs):
                    rc = p.poll()
                    if rc is not None and rc != 0:
                        failed = (rank, rc)
                        break
                time.sleep(0.2)
            if failed is None:
                for rank, p in enumerate(procs):
                    if p.returncode != 0:
                        failed = (rank, p.returncode)
                        break
        except BaseException:
            _stop(procs)
            raise
        if failed is not None:
            _stop(procs)
        for t in threads:
            t.join(timeout=5)
        if failed is not None:
            rank, rc = failed
            last = _last_error_line(tails[rank])
            raise LaunchError(f"worker rank {rank} of {nprocs} exited with code {rc}: {last}")
        if not result_path.is_file():
            raise LaunchError("worker rank 0 finished without writing its result")
        return json.loads(result_path.read_text())["result"]


def _last_error_line(tail: deque[str]) -> str:
    """The worker's last error line, without torch's ``[rankN]:`` prefix and the exception's module path."""
    lines = [line for line in tail if not line.lstrip().startswith(("File ", "^", "~"))]
    if not lines:
        return "(no output)"
    line = re.sub(r"^\[rank\d+\]:\s*", "", lines[-1].strip())
    return re.sub(r"^(?:\w+\.)+(\w+(?:Error|Exception)\b)", r"\1", line)
