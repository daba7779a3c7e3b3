"""The notebooks' own parameter declarations, and checking values against them.

Each notebook has exactly one cell tagged ``parameters`` whose lines read
``name: type = default  # help``. ``papermill.inspect_notebook`` parses them; this
file turns that into typed declarations and checks values (from Python or from
``--set key=value`` strings) against them before anything runs: the declared type,
then the name's rule in ``RULES`` (ranges and choices). ``gcrepro table run`` checks
with it before it starts a notebook; each notebook checks itself with it in the
cell after its parameters (:func:`check_parameters`), so ``papermill -p`` gets the
same one-line errors.
"""
from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gcrepro.paths import PACKAGE_DIR, project_root

# The notebooks the table runner executes for each entry, in order.
ENTRY_NOTEBOOKS: tuple[str, ...] = ("train", "evaluate", "attention")
REPORT_NOTEBOOK = "report"
KNOWN_TYPES: tuple[str, ...] = ("str", "int", "float", "bool", "dict", "list")


class ParameterError(ValueError):
    """A parameter that a notebook does not declare, or a value of the wrong type or outside its rule."""


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    type_name: str  # one of KNOWN_TYPES
    default: str  # the default as written in the notebook (source text)
    help: str


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a value must be beyond its type. ``check`` raises ValueError (one line: what is expected)."""

    type_name: str  # the declared type the rule is written for; a parameter of another type skips it
    check: Callable[[Any], None]
    int_as_str: bool = False  # a str parameter that also takes an int, as its text (`papermill -p entry 2`)


def _at_least(low: int) -> Callable[[Any], None]:
    def check(value: int) -> None:
        if value < low:
            raise ValueError(f"expected an integer >= {low}, got {value!r}")

    return check


def _one_of(*choices: str) -> Callable[[Any], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"expected one of {'|'.join(choices)}, got {value!r}")

    return check


def _entry(value: str) -> None:
    from gcrepro.entries import get_entry

    get_entry(value)  # EntryNotFound names the value and close matches


def _profile(value: str) -> None:
    from gcrepro.profiles import PROFILES

    _one_of(*PROFILES)(value)


def _device(value: str) -> None:
    if value == "":
        return
    import torch

    try:
        torch.device(value)
    except RuntimeError:
        raise ValueError(f"expected '' (cuda when available) or a torch device (cpu, cuda, cuda:1, ...), "
                         f"got {value!r}") from None


def _seed(value: int) -> None:
    if value < -1:
        raise ValueError(f"expected -1 (no seed chosen) or a seed >= 0, got {value!r}")


def _runs_dir(value: str) -> None:
    if value and Path(value).expanduser().is_file():
        raise ValueError(f"expected '' ($GCREPRO_RUNS, else runs/) or a folder of runs, got the file {value!r}")


def _overrides(value: dict) -> None:
    from gcrepro.runspec import parse_overrides

    parse_overrides(value, source="overrides")  # the engine's own parser: ConfigError names the key


def _spec(value: dict) -> None:
    if value:
        from gcrepro.runspec import RunSpec

        RunSpec.from_dict(value, where="spec")


# Rules by parameter name: a name means the same in every notebook that declares it (as ``--set NAME``
# sets it in each of them).
RULES: dict[str, Rule] = {
    "entry": Rule("str", _entry, int_as_str=True),  # a row number (get_entry takes either)
    "profile": Rule("str", _profile),
    "gpus": Rule("int", _at_least(0)),
    "num_images": Rule("int", _at_least(1)),
    "device": Rule("str", _device),
    "resume": Rule("str", _one_of("no", "yes", "auto")),
    "runs_dir": Rule("str", _runs_dir),
    "seed": Rule("int", _seed),
    "overrides": Rule("dict", _overrides),
    "spec": Rule("dict", _spec),
}


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
    """Return ``value`` converted to the declared type (int -> float only), or raise ParameterError when it has
    another type or breaks the name's rule (``RULES``)."""
    ok: bool
    if param.type_name == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    rule = RULES.get(param.name)
    if rule is not None and rule.int_as_str and param.type_name == "str" and isinstance(value, int) \
            and not isinstance(value, bool):
        value = str(value)
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
    if rule is not None and rule.type_name == param.type_name:
        try:
            rule.check(value)
        except (ValueError, LookupError) as err:
            raise ParameterError(f"{where}: parameter {param.name!r}: {err}") from None
    return value


# The first line of the cell papermill injects after the parameters cell (its Python translator's comment).
PAPERMILL_CELL = "# Parameters"
PAPERMILL_NAMES = ("PAPERMILL_INPUT_PATH", "PAPERMILL_OUTPUT_PATH")  # papermill --inject-paths


def injected_names(history: Sequence[str]) -> list[str]:
    """The names the latest papermill-injected cell among ``history`` (IPython's ``In``: the cells run so far)
    assigns, in order; [] when papermill injected nothing."""
    for source in reversed(history):
        if source.lstrip().split("\n", 1)[0].strip() == PAPERMILL_CELL:
            names = []
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
            return names
    return []


def check_parameters(namespace: Mapping[str, Any], notebook: str, *, directory: Path | None = None) -> None:
    """A notebook's first cell after its parameters: ``check_parameters(globals(), "train")``.

    Checks every declared parameter's value in ``namespace`` (type, then ``RULES``) and refuses a name
    papermill injected that the notebook does not declare (``papermill -p NAME VALUE``: papermill itself
    only warns). Injected names are read from the injected cell's source in IPython's input history
    (``In``), so running the cell again interactively, after later cells defined more names, still passes.
    Raises ParameterError, one line, as ``gcrepro table run`` does for the same value (same checks).
    """
    declared = declared_params(notebook_path(notebook, directory))
    injected = [n for n in injected_names(namespace.get("In") or ()) if n not in PAPERMILL_NAMES]
    names = injected + [n for n in declared if n not in injected]
    values = {name: namespace[name] for name in names if name in namespace}
    apply_sets({notebook: values}, [], {notebook: declared})


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
            dicts = sorted({f"{p}.KEY" for nb in targets for p, d in declared[nb].items()
                            if d.type_name == "dict" and p not in reserved})
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
