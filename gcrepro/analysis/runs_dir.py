"""Where runs are: the runs folder, an entry's run in it, and the folder a report covers.

The runs folder is the ``runs_dir`` given, else ``$GCREPRO_RUNS``, else ``runs/`` of the checkout
(:func:`gcrepro.paths.default_runs_dir`). An entry's run is ``RUNS/<entry>/`` or, one level down, in
a table run's folder: ``RUNS/<table>/<entry>/`` (``make demo`` writes ``runs/demo/<entry>/``). A
folder named after an entry is a run when it holds status.json, metrics.json or a checkpoint.
A seeded table run (``gcrepro table run --seeds 0,1,2``) puts one run per seed inside the entry's
folder: ``RUNS/<entry>/seed<k>/`` (or ``RUNS/<table>/<entry>/seed<k>/``); those are runs of the entry
too. When an entry has several runs, ``RUNS/<entry>`` comes first, then the most recently written
table folder's, and within one entry folder its own run, then its seeds, lowest first; the caller is
told which one is used. ``seed`` chooses a seed's run.
"""
from __future__ import annotations

from pathlib import Path

from gcrepro.analysis.seeds import folder_name, seed_of

RUN_FILES = ("status.json", "metrics.json")
SHOWN = 6  # runs named in a message before "... and N more"


class RunsDirError(ValueError):
    """A runs folder that does not exist, is a file, or holds no runs (one line, naming the folder)."""


class RunNotFound(FileNotFoundError):
    """No run of an entry: the message names where it looked and which runs exist instead."""


def runs_root(runs_dir: str | Path | None = None) -> Path:
    """The runs folder (``runs_dir``, else ``$GCREPRO_RUNS``, else ``runs/``), resolved; RunsDirError when it is
    missing or a file."""
    from gcrepro.paths import default_runs_dir

    root = Path(runs_dir).expanduser().resolve() if runs_dir else default_runs_dir()
    origin = "runs_dir" if runs_dir else "the runs folder ($GCREPRO_RUNS, else runs/)"
    if root.is_file():
        raise RunsDirError(f"{origin} {root} is a file, expected a folder of runs")
    if not root.is_dir():
        raise RunsDirError(f"{origin} {root} does not exist: run `make demo` (runs/demo/) or `gcrepro table run`, "
                           "or set runs_dir / GCREPRO_RUNS to where your runs are")
    return root


def entry_names() -> set[str]:
    import gcrepro

    return {e.name for e in gcrepro.list_entries()}


def is_run(folder: Path) -> bool:
    """A folder holding what a run writes: status.json, metrics.json or a checkpoint."""
    return folder.is_dir() and (any((folder / f).is_file() for f in RUN_FILES)
                                or any((folder / "checkpoints").glob("*.pth")))


def _written(run: Path) -> float:
    """When the run last wrote one of its files."""
    files = [run / f for f in RUN_FILES] + list((run / "checkpoints").glob("*.pth"))
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def seed_runs(entry_folder: Path) -> list[Path]:
    """The ``seed<k>`` runs inside an entry's folder, lowest seed first."""
    seeded = [p for p in _children(entry_folder) if seed_of(p) is not None and is_run(p)]
    return sorted(seeded, key=seed_of)


def runs_in(entry_folder: Path, seed: int | None = None) -> list[Path]:
    """The runs an entry's folder holds: itself (when it is a run), then its seed runs; with ``seed``, only
    ``seed<k>``."""
    if seed is not None:
        run = entry_folder / folder_name(seed)
        return [run] if is_run(run) else []
    return ([entry_folder] if is_run(entry_folder) else []) + seed_runs(entry_folder)


def _last_written(entry_folder: Path) -> float:
    return max((_written(run) for run in runs_in(entry_folder)), default=0.0)


def all_runs(root: Path, names: set[str] | None = None) -> list[Path]:
    """Every run under ``root``: ``root/<entry>``, ``root/<table>/<entry>``, and their ``seed<k>`` runs."""
    names = entry_names() if names is None else names
    found = []
    for child in _children(root):
        if child.name in names:
            found += runs_in(child)
        else:
            found += [run for folder in _children(child) if folder.name in names for run in runs_in(folder)]
    return found


def entry_runs(root: Path, entry: str, seed: int | None = None) -> list[Path]:
    """The runs of ``entry`` (of seed ``seed`` when given) under ``root``: ``root/<entry>``'s first, then table
    folders', newest first; within one folder its own run, then its seeds, lowest first."""
    nested = [child / entry for child in _children(root) if child.name != entry and runs_in(child / entry, seed)]
    folders = [root / entry] + sorted(nested, key=_last_written, reverse=True)
    return [run for folder in folders for run in runs_in(folder, seed)]


def _listed(paths: list[Path], root: Path) -> str:
    names = [str(p.relative_to(root)) for p in paths]
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def find_run(entry: str, runs_dir: str | Path | None = None, *, seed: int | None = None) -> tuple[Path, str]:
    """(the run folder of ``entry``, a note saying which one is used when there are several, else "").
    ``seed``: the run of that seed (``.../<entry>/seed<k>``).

    RunsDirError for a bad runs folder; RunNotFound naming where it looked and the runs that do exist."""
    root = runs_root(runs_dir)
    runs = entry_runs(root, entry, seed)
    if runs:
        note = ""
        if len(runs) > 1:
            note = (f"{entry} has {len(runs)} runs under {root}{'' if seed is None else f' with seed {seed}'}: "
                    f"using {runs[0].relative_to(root)} (RUNS/<entry> first, then the newest; its own run, then "
                    f"its seeds, lowest first); also {_listed(runs[1:], root)}. Set "
                    f"{'seed or ' if seed is None else ''}work_dir to choose another")
        return runs[0], note
    if seed is not None:
        seeded = [run for run in entry_runs(root, entry) if seed_of(run) is not None]
        where = f"looked in {root / entry / folder_name(seed)} and {root}/*/{entry}/{folder_name(seed)}"
        if seeded:
            raise RunNotFound(f"no run of {entry} with seed {seed}: {where}; its seed runs are "
                              f"{_listed(seeded, root)}. Choose one of those seeds, or run this one "
                              f"(`gcrepro table run --entries {entry} --seeds {seed}`)")
    others = all_runs(root)
    where = f"looked in {root / entry} and {root}/*/{entry}" + ("" if seed is None else f" (seed {seed})")
    if not others:
        raise RunNotFound(f"no run of {entry}: {where}; {root} holds no runs. Train it first (train.ipynb, "
                          f"`gcrepro table run --entries {entry}`, `make demo`), or set work_dir / runs_dir")
    raise RunNotFound(f"no run of {entry}: {where}; {root} holds runs of other entries: {_listed(others, root)}. "
                      "Choose one of those entries, train this one, or set work_dir / runs_dir")


def table_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold entry runs directly: what a report can cover,
    ``root`` first, then the others newest first."""
    names = entry_names()
    own = [root] if any(child.name in names and runs_in(child) for child in _children(root)) else []
    nested = [child for child in _children(root) if child.name not in names
              and any(run.name in names and runs_in(run) for run in _children(child))]
    newest = {folder: max(_last_written(run) for run in _children(folder) if run.name in names) for folder in nested}
    return own + sorted(nested, key=newest.__getitem__, reverse=True)


def report_folder(runs_dir: str | Path | None = None) -> tuple[Path, str]:
    """(the folder a report covers, a note when it is not the runs folder itself).

    The runs folder when it holds entry runs; else its table folder (``runs/demo``), the newest when there
    are several (the note names the others). RunsDirError when there are no runs at all."""
    root = runs_root(runs_dir)
    folders = table_folders(root)
    if not folders:
        raise RunsDirError(f"{root} holds no runs: no {root}/<entry>/ or {root}/<table>/<entry>/ (or their "
                           "seed<k>/) with status.json, metrics.json or a checkpoint. Run `make demo` or "
                           "`gcrepro table run`, or set runs_dir")
    if folders[0] == root:
        return root, ""
    note = f"{root} holds no entry folders itself; reporting its table folder {folders[0].relative_to(root)}"
    if len(folders) > 1:
        note += f" (the newest; also {_listed(folders[1:], root)}: set runs_dir to choose)"
    return folders[0], note
