"""Run a Python snippet in a fresh interpreter with some environment variables changed.

The compiled op reads its switches (GCREPRO_CPU_ISA, GCREPRO_CPU_POOL_MB, GCREPRO_CPU_STREAM) once
per process, so tests of each setting run in a child."""
from __future__ import annotations

import os
import subprocess
import sys


def run_python(script: str, *args: str, env: dict[str, str | None], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c script *args`` with ``env`` applied over this process's environment (None removes
    a variable); output captured as text, no exception on a non-zero exit."""
    child_env = dict(os.environ)
    for key, value in env.items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    return subprocess.run([sys.executable, "-c", script, *args], env=child_env, capture_output=True, text=True,
                          timeout=timeout, check=False)
