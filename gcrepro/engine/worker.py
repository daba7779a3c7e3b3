"""A worker process started by :func:`gcrepro.engine.launch.launch`.

``python -m gcrepro.engine.worker SPEC.json``: the spec names a library function
(``"gcrepro.module:function"`` + JSON kwargs). Rank 0 writes the
function's return value to the spec's result file (JSON, atomically).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from gcrepro.atomic import write_json_atomic


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run(spec_path: str) -> int:
    from gcrepro.engine.launch import check_target

    spec = json.loads(Path(spec_path).read_text())
    target = spec["target"]
    check_target(target)
    module_name, _, func_name = target.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(**spec.get("kwargs", {}))
    if os.environ.get("RANK", "0") == "0":
        write_json_atomic(spec["result"], {"result": _jsonable(result)}, indent=None)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gcrepro.engine.worker SPEC.json (started by gcrepro.engine.launch)")
    sys.exit(run(sys.argv[1]))
