"""A copy of one of gcrepro's notebooks with parameter values set, as papermill would set them.

The values go into a cell after the one tagged ``parameters`` that starts with papermill's ``# Parameters``
line, so the notebook's own parameter check treats them as injected. Only names the notebook declares are
set (``values`` may offer more: a name a notebook does not have is left out, not an error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat

from gcrepro.analysis import notebook_params as nbp


def copy_with_parameters(name: str, out_dir: Path, values: dict[str, Any]) -> Path:
    """``out_dir/NAME.ipynb``: gcrepro's notebook NAME with the declared ones of ``values`` injected."""
    source = nbp.notebook_path(name)
    declared = nbp.declared_params(source)
    lines = [nbp.PAPERMILL_CELL] + [f"{key} = {value!r}" for key, value in values.items() if key in declared]
    nb = nbformat.read(source, as_version=4)
    at = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, injected)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path
