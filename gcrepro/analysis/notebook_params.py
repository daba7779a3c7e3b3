"""The notebooks' own parameter declarations, and checking values against them.

Each notebook has exactly one cell tagged ``parameters`` whose lines read
``name: type = default  # help``. ``papermill.inspect_notebook`` parses them; this
file turns that into typed declarations and checks values (from Python or from
``--set key=value`` strings) against them before anything runs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gcrepro.paths import PACKAGE_DIR, project_root

# The notebooks the table runner executes for each entry, in order.
ENTRY_NOTEBOOKS: tuple[str, ...] = ("train", "evaluate", "attention")
REPORT_NOTEBOOK = "report"
KNOWN_TYPES: tuple[str, ...] = ("str", "int", "float", "bool", "dict", "list")


class ParameterError(ValueError):
    """A parameter that a notebook does not declare, or a value of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    type_name: str  # one of KNOWN_TYPES
    default: str  # the default as written in the notebook (source text)
    help: str


def notebooks_dir() -> Path:
    """Folder holding train/evaluate/attention/report.ipynb.

    An installed package ships them as package data (``gcrepro/notebooks``); in a
    checkout ``gcrepro/notebooks`` is a symlink to the top-level ``notebooks/``.
    """
    packaged = PACKAGE_DIR / "notebooks"
    if (packaged / "train.ipynb").is_file():
        return packaged
    root = project_root()
    if root is not None and (root / "notebooks" / "train.ipynb").is_file():
        return root / "notebooks"
    raise FileNotFoundError(
        f"gcrepro's notebooks are missing: looked in {packaged} and in the checkout's notebooks/ folder"
    )


def notebook_path(name: str, directory: Path | None = None) -> Path:
    path = (directory or notebooks_dir()) / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    return path


def declared_params(path: Path) -> dict[str, Param]:
    """The parameters declared in the notebook's ``parameters`` cell, by name."""
    import nbformat
    import papermill

    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"{path}: expected exactly one cell tagged 'parameters', found {len(tagged)}")
    params: dict[str, Param] = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        type_name = info["inferred_type_name"]
        if type_name not in KNOWN_TYPES:
            raise ParameterError(
                f"{path}: parameter {name!r} has type {type_name!r}; expected an annotation, one of {', '.join(KNOWN_TYPES)}"
            )
        params[name] = Param(name=name, type_name=type_name, default=info["default"], help=info["help"])
    return params


def check_value(param: Param, value: Any, *, where: str) -> Any:
    """Return ``value`` converted to the declared type (int -> float only), or raise ParameterError."""
    ok: bool
    if param.type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if param.type_name == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif param.type_name == "float":
        ok = isinstance(value, float)
    else:
        ok = isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[param.type_name])
    if not ok:
        raise ParameterError(
            f"{where}: parameter {param.name!r} is {param.type_name} ({param.help}); got {value!r} ({type(value).__name__})"
        )
    return value


def parse_cli_value(text: str, type_name: str) -> Any:
    """A ``--set`` value: kept verbatim for str parameters, read as YAML otherwise (2, 0.5, true, [1, 2], {a: 1})."""
    if type_name == "str":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # check_value reports it as the wrong type


def parse_set_args(items: list[str]) -> list[tuple[str, str]]:
    """``["a=1", "train.b=x"]`` -> ``[("a", "1"), ("train.b", "x")]``; a missing '=' is an error."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--set {item!r}: expected key=value")
        pairs.append((key.strip(), value))
    return pairs


def apply_sets(
    base: dict[str, dict[str, Any]],
    sets: list[tuple[str, str]],
    declared: dict[str, dict[str, Param]],
    reserved: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Apply ``--set`` pairs to per-notebook parameter dicts and check every value.

    ``base`` maps notebook name -> parameters the caller passes. A key is
    ``NAME`` (every notebook declaring NAME), ``NOTEBOOK.NAME`` (that notebook
    only) or ``DICTPARAM.KEY`` (one key inside a dict parameter, e.g.
    ``overrides.max_iters=20``), optionally ``NOTEBOOK.DICTPARAM.KEY``.
    ``reserved`` maps names the caller sets itself to the option that sets them
    (``{"profile": "--profile"}``); a ``--set`` of one is an error.
    Returns new dicts; raises ParameterError naming the key and notebook.
    """
    reserved = reserved or {}
    out = {nb: dict(values) for nb, values in base.items()}
    for nb, values in out.items():
        for name, value in values.items():
            if name not in declared[nb]:
                raise ParameterError(
                    f"{nb}.ipynb declares no parameter {name!r} (declared: {', '.join(sorted(declared[nb]))})"
                )
            values[name] = check_value(declared[nb][name], value, where=f"{nb}.ipynb")
    for key, text in sets:
        parts = key.split(".")
        targets = list(out)
        if parts[0] in out:
            targets, parts = [parts[0]], parts[1:]
        if not parts:
            raise ParameterError(f"--set {key}: name a parameter after the notebook, e.g. {key}.NAME=VALUE")
        name, subkey = parts[0], ".".join(parts[1:])
        if name in reserved:
            raise ParameterError(f"--set {key}: {name!r} is set by {reserved[name]}, not --set")
        hit = [nb for nb in targets if name in declared[nb]]
        if not hit:
            known = sorted({f"{nb}.{p}" for nb in targets for p in declared[nb] if p not in reserved})
            dicts = sorted({f"{p}.KEY" for nb in targets for p, d in declared[nb].items() if d.type_name == "dict"})
            raise ParameterError(f"--set {key}: no notebook declares parameter {name!r}; settable: {', '.join(known)}"
                                 + (f" (and {', '.join(dicts)} for keys inside a dict)" if dicts else ""))
        for nb in hit:
            param = declared[nb][name]
            if subkey:
                if param.type_name != "dict":
                    raise ParameterError(f"--set {key}: {nb}.ipynb parameter {name!r} is {param.type_name}, not a dict")
                current = dict(out[nb].get(name) or _literal_default(param))
                current[subkey] = text  # kept as text: its consumer types it (training overrides: gcrepro.runspec)
                out[nb][name] = current
            else:
                out[nb][name] = check_value(param, parse_cli_value(text, param.type_name), where=f"--set {key} ({nb}.ipynb)")
    return out


def _literal_default(param: Param) -> Any:
    import ast

    try:
        return ast.literal_eval(param.default)
    except (ValueError, SyntaxError):
        return {}
