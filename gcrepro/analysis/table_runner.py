"""Run table entries headlessly: train -> evaluate -> attention notebooks per entry.

For each entry the notebooks are executed with papermill into ``RUNS_DIR/<entry>/``
(beside what they write: params.yaml, metrics.json, COCO results, checkpoints,
attention/ PNGs) and ``status.json`` records running/done/failed, timings and the
error. Every parameter is checked against the notebooks' own declarations, and each
entry's run is resolved (:func:`gcrepro.runspec.resolve_run`), before anything runs:
train.ipynb receives the resolved RunSpec itself, evaluate and attention read it from
the checkpoint. A failing entry keeps its error and its failing notebook while the
others still run; completed entries are skipped unless ``force``. The runner holds each entry's run
folder (:mod:`gcrepro.run_lock`) from before it reads, clears or resumes it until its notebooks are
done; the notebooks' kernels, its children, enter it. An entry whose folder another process holds is
skipped, untouched, with one line naming the holder (also with ``force``).

Every executed notebook is signed with the user's Jupyter notary (:func:`sign_notebook`), so that JupyterLab
opens it trusted, styled tables and widgets included; report.ipynb replaces an earlier one only when it ran
through (a failed one is kept as report.failed.ipynb).

``table_run`` is the whole command (``gcrepro table run``, ``gcrepro demo``): plan, run, report.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import run_status
from gcrepro.analysis.seeds import SeedError, folder_name, parse_seeds, seed_of, seeds_text
from gcrepro.data.identity import DataSpec
from gcrepro.run_lock import LOCK_FILE, RunDirInUse, hold_run_dir
from gcrepro.runspec import RunSpec

KERNEL_NAME = "python3"
# Keep the kernel's own log quiet: its start-up warning and shutdown messages would break the
# one-line-per-entry progress (failures still reach status.json and the executed notebook).
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
IN_USE = "in use"  # run_table's state for an entry whose folder another process holds (never written)


@dataclasses.dataclass(frozen=True)
class EntryPlan:
    """What one entry will run: the run folder, each notebook's parameters (in run order), and what runs:
    a resolved training run (``spec``), or the evaluation of a released checkpoint (``checkpoint``)."""

    entry: str
    run_dir: Path
    params: dict[str, dict[str, Any]]  # notebook name -> parameters, in the order they run
    spec: RunSpec | None = None
    checkpoint: Path | None = None
    seed: int | None = None  # --seeds: this run's seed (run_dir is RUNS/<entry>/seed<k>)

    @property
    def label(self) -> str:
        """The entry, and its seed folder when it runs one seed of several (progress lines)."""
        return self.entry if self.seed is None else f"{self.entry}/{folder_name(self.seed)}"


def base_params(entry: str, run_dir: Path, *, gpus: int) -> dict[str, dict[str, Any]]:
    """The parameters the runner itself passes to each notebook (the rest keep their defaults).
    train.ipynb's ``spec`` is added once the entry's run is resolved."""
    common = {"entry": entry, "work_dir": str(run_dir)}
    return {
        # resume "auto": a failed entry's re-run continues its training (a finished training returns at once);
        # a cleared or new folder starts one.
        "train": {**common, "gpus": gpus, "resume": "auto"},
        "evaluate": {**common, "gpus": gpus},
        "attention": dict(common),
    }


# Names the runner sets from its own options; `--set` may not set them.
RESERVED = {"entry": "--entries/--rows", "data": "--data", "work_dir": "--runs-dir", "runs_dir": "--runs-dir",
            "profile": "--profile", "gpus": "--gpus",
            "resume": "the runner (a failed entry resumes; --force starts afresh)",
            "spec": "the runner (the run resolved from --data, --profile and --set overrides.KEY)",
            "seed": "--seeds (one run per seed in RUNS/<entry>/seed<k>) or --set overrides.seed=K (one run)"}


def _check_gpus(gpus: int) -> None:
    from gcrepro.engine.api import check_gpus
    from gcrepro.engine.config import ConfigError

    if gpus < 0:
        raise nbp.ParameterError(f"--gpus {gpus}: expected 0 (CPU) or a positive number of GPUs")
    try:
        check_gpus(gpus)
    except ConfigError as exc:
        raise nbp.ParameterError(str(exc)) from None


def plan_table(
    entries: list[str],
    *,
    runs_dir: Path,
    data: str | Path | DataSpec | None = None,
    profile: str = "toy",
    gpus: int = 0,
    sets: list[tuple[str, str]] = (),
    notebooks: Path | None = None,
    seeds: list[int] | None = None,
) -> list[EntryPlan]:
    """Check every parameter of every entry against the notebooks and resolve each entry's run; raise
    ParameterError (one line) before anything runs. ``data``: a dataset root or DataSpec; None makes or
    reuses the built-in toy set (only after everything else was checked). ``seeds``: one run per entry and
    seed, in RUNS/<entry>/seed<k>, the seed set as the run option ``seed`` (in entry order, then seed order)."""
    from gcrepro.data import DataError, describe_data
    from gcrepro.engine.config import ConfigError
    from gcrepro.profiles import PROFILES
    from gcrepro.runspec import parse_overrides, resolve_run

    if profile not in PROFILES:
        raise nbp.ParameterError(f"--profile {profile!r}: expected one of {'|'.join(PROFILES)}")
    _check_gpus(gpus)
    if not entries:
        raise nbp.ParameterError("no entries selected")
    if len(set(entries)) != len(entries):
        raise nbp.ParameterError(f"entries listed twice: {sorted({e for e in entries if entries.count(e) > 1})}")
    declared = {nb: nbp.declared_params(nbp.notebook_path(nb, notebooks)) for nb in nbp.ENTRY_NOTEBOOKS}
    runs_dir = Path(runs_dir).resolve()
    checked = []
    for entry in entries:
        for seed in seeds or [None]:
            run_dir = runs_dir / entry if seed is None else runs_dir / entry / folder_name(seed)
            params = nbp.apply_sets(base_params(entry, run_dir, gpus=gpus), list(sets), declared, reserved=RESERVED)
            overrides = params["train"].pop("overrides", None) or {}
            try:
                parse_overrides(overrides, source="--set overrides.")
            except ConfigError as exc:
                raise nbp.ParameterError(f"train.ipynb overrides: {exc}") from None
            if seed is not None:
                if "seed" in overrides:
                    raise nbp.ParameterError(f"--seeds {seeds_text(seeds)} and --set overrides.seed={overrides['seed']} "
                                             "both set the seed: choose one")
                overrides = {**overrides, "seed": seed}
            checked.append((entry, run_dir, params, overrides, seed))
    try:
        data_spec = data if isinstance(data, DataSpec) else describe_data(data)
    except DataError as exc:
        raise nbp.ParameterError(f"--data: {exc}") from None
    plans = []
    for entry, run_dir, params, overrides, seed in checked:
        try:
            spec = resolve_run(entry, data=data_spec, profile=profile, overrides=overrides, source="--set overrides.")
        except (ConfigError, LookupError) as exc:
            raise nbp.ParameterError(f"{entry}: {exc}") from None
        params["train"]["spec"] = nbp.check_value(declared["train"]["spec"], spec.to_dict(), where="train.ipynb")
        plans.append(EntryPlan(entry=spec.entry, run_dir=run_dir, spec=spec, params=params, seed=seed))
    return plans


EVAL_NOTEBOOKS: tuple[str, ...] = ("evaluate", "attention")  # what --checkpoints runs (no training)


def match_checkpoints(entries: list[str], folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Released checkpoints in ``folder`` for ``entries``: ({entry: file}, notes). A file is matched by
    mmdetection's released file name (or config name), else by inferring its entry from its weights."""
    from gcrepro.mmdet_zoo import entry_for_file

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".pth", ".pt", ".ckpt"))
    found: dict[str, Path] = {}
    notes: list[str] = []
    unnamed = []
    for path in files:
        entry = entry_for_file(path.name)
        if entry is None:
            unnamed.append(path)
        elif entry in entries and entry not in found:
            found[entry] = path
    for path in unnamed:
        if len(found) == len(entries):
            break
        from gcrepro.convert import ConvertError, convert_checkpoint

        try:
            entry = convert_checkpoint(path).entry  # inferred from its weights (and metadata)
        except (ConvertError, OSError) as exc:
            notes.append(f"{path.name}: skipped ({exc})")
            continue
        if entry in entries and entry not in found:
            found[entry] = path
            notes.append(f"{path.name}: {entry} (inferred from its weights)")
    return found, notes


def plan_checkpoints(
    entries: list[str],
    *,
    checkpoints: Path,
    runs_dir: Path,
    data: str | Path | None,
    gpus: int = 0,
    sets: list[tuple[str, str]] = (),
    notebooks: Path | None = None,
) -> tuple[list[EntryPlan], list[str]]:
    """Evaluate-only plans (evaluate + attention notebooks) for the selected entries whose released
    checkpoint is in ``checkpoints``; returns (plans, notes on matching). ``data``: the val set (default:
    COCO under the data root, ``data/coco``). ParameterError for bad input."""
    from gcrepro.data import DataError, describe_data
    from gcrepro.paths import data_root

    folder = Path(checkpoints).expanduser().resolve()
    if not folder.is_dir():
        raise nbp.ParameterError(f"--checkpoints {folder}: not a folder of checkpoint files")
    _check_gpus(gpus)
    if not entries:
        raise nbp.ParameterError("no entries selected")
    declared = {nb: nbp.declared_params(nbp.notebook_path(nb, notebooks)) for nb in EVAL_NOTEBOOKS}
    runs_dir = Path(runs_dir).resolve()
    params_of = {}
    for entry in entries:
        common = {"entry": entry, "work_dir": str(runs_dir / entry)}
        base = {"evaluate": {**common, "gpus": gpus}, "attention": dict(common)}
        params_of[entry] = nbp.apply_sets(base, list(sets), declared, reserved=RESERVED)
    if data is None:
        data = data_root() / "coco"
        if not data.is_dir():
            raise nbp.ParameterError(f"--checkpoints evaluates on COCO: no {data}; put COCO 2017 there "
                                     "(data/README.md) or pass --data")
    try:
        data_spec = describe_data(data, splits=("val",))
    except DataError as exc:
        raise nbp.ParameterError(f"--data: {exc}") from None
    found, notes = match_checkpoints(entries, folder)
    if not found:
        raise nbp.ParameterError(f"--checkpoints {folder}: no checkpoint for any of the {len(entries)} selected "
                                 "entries (matched by mmdetection's released file names, or by their weights)")
    plans = []
    for entry in entries:
        if entry not in found:
            notes.append(f"{entry}: no checkpoint in {folder}; not run")
            continue
        params = params_of[entry]
        for nb in EVAL_NOTEBOOKS:
            params[nb].update(checkpoint=str(found[entry]), data=data_spec.root)
        plans.append(EntryPlan(entry=entry, run_dir=runs_dir / entry, params=params, checkpoint=found[entry]))
    return plans, notes


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    """The papermill kernel must run this Python (the one with gcrepro installed)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise RuntimeError(
            f"no Jupyter kernel {kernel_name!r}: run `{sys.executable} -m ipykernel install --sys-prefix`"
        ) from None
    exe = spec.argv[0] if spec.argv else ""
    # jupyter_client runs a spec whose argv[0] is plain "python" with sys.executable.
    if exe not in ("python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        if Path(exe).resolve() != Path(sys.executable).resolve():
            raise RuntimeError(
                f"Jupyter kernel {kernel_name!r} ({spec.resource_dir}) runs {exe}, not this Python "
                f"({sys.executable}); remove that kernel spec or run `{sys.executable} -m ipykernel install --sys-prefix`"
            )


_NOTARY_LOCK = threading.Lock()  # entries run in threads (--jobs); the notary's database is one SQLite file


def sign_notebook(path: Path) -> bool:
    """Sign an executed notebook with the user's Jupyter notary (``nbformat.sign``: the secret and the signature
    database in the Jupyter data folder), so that JupyterLab opens it trusted. False, with one line on stderr,
    when the notary cannot be written (the notebook is fine, it opens untrusted)."""
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        nb = nbformat.read(str(path), as_version=4)
        with _NOTARY_LOCK:
            NotebookNotary().sign(nb)
    except Exception as exc:  # noqa: BLE001 - the run is not at stake, only the notebook's trust
        print(f"note: {path} not signed ({type(exc).__name__}: {exc}); it opens untrusted", file=sys.stderr)
        return False
    return True


def _error_of(exc: BaseException) -> tuple[str, list[str]]:
    """A one-line error and the traceback lines (ANSI colours removed)."""
    import papermill.exceptions as pme

    if isinstance(exc, pme.PapermillExecutionError):
        lines = [_ANSI.sub("", line) for tb in exc.traceback for line in tb.splitlines()]
        return f"{exc.ename}: {exc.evalue}".strip(), lines
    name = type(exc).__name__
    if name == "DeadKernelError":
        return f"the kernel died ({exc}); out of memory?", []
    return f"{name}: {exc}", []


def run_entry(
    plan: EntryPlan,
    *,
    fresh: bool,
    notebooks: Path | None = None,
    echo: Callable[[str], None] = lambda s: None,
    stop: threading.Event | None = None,
    on_notebook: Callable[[str], None] = lambda name: None,
) -> dict:
    """Execute the plan's notebooks for one entry (train -> evaluate -> attention, or evaluate -> attention for a
    released checkpoint); return its final status (never raises for a notebook failure).

    ``fresh`` empties the run folder first (checkpoints included); otherwise training resumes
    from the folder's latest checkpoint, if any. The caller holds the folder (``hold_run_dir``; run_table does).
    ``stop`` set (Ctrl-C): no further notebook starts and the status says "interrupted"; ``on_notebook(name)``
    before each notebook starts. Resuming an interrupted attempt skips the notebooks it ran through
    (:func:`ran_through`).
    """
    import papermill

    if fresh and plan.run_dir.exists():
        _clear(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    previous = None if fresh else run_status.read_status(plan.run_dir)
    before = ran_through(plan, previous)
    status = {"entry": plan.entry, "state": "running", "started": run_status.now_iso(), "finished": None,
              "timings": {nb: previous["timings"][nb] for nb in before}, "error": None, "failed_notebook": None,
              "traceback": None}
    run_status.write_params(plan.run_dir, {"entry": plan.entry, "notebooks": plan.params})
    run_status.write_status(plan.run_dir, status)
    for nb in plan.params:
        output = plan.run_dir / f"{nb}.ipynb"
        if nb in before:
            echo(f" {nb} (ran through before)")
            continue
        if stop is not None and stop.is_set():
            return _interrupted(plan.run_dir, status, nb, output)
        on_notebook(nb)
        echo(f" {nb}")
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(nbp.notebook_path(nb, notebooks)), str(output), parameters=plan.params[nb],
                kernel_name=KERNEL_NAME, progress_bar=False, log_output=False, cwd=str(plan.run_dir),
                extra_arguments=KERNEL_ARGS,
            )
        except KeyboardInterrupt:
            _interrupted(plan.run_dir, status, nb, output)
            raise
        except Exception as exc:  # noqa: BLE001 - isolate any failure to this entry
            if output.is_file():
                sign_notebook(output)
            status["timings"][nb] = round(time.perf_counter() - t0, 1)
            if stop is not None and stop.is_set():  # the kernel was stopped by Ctrl-C
                return _interrupted(plan.run_dir, status, nb, output)
            error, tb = _error_of(exc)
            status.update(state="failed", error=error, failed_notebook=str(output), traceback=tb or None,
                          finished=run_status.now_iso())
            run_status.write_status(plan.run_dir, status)
            echo(f" {status['timings'][nb]:.0f}s")
            return status
        sign_notebook(output)
        status["timings"][nb] = round(time.perf_counter() - t0, 1)
        echo(f" {status['timings'][nb]:.0f}s")
        run_status.write_status(plan.run_dir, status)
    status.update(state="done", finished=run_status.now_iso())
    run_status.write_status(plan.run_dir, status)
    return status


def ran_through(plan: EntryPlan, previous: dict | None) -> list[str]:
    """The notebooks an interrupted attempt ran through: those before the one Ctrl-C stopped (its
    ``failed_notebook``), with their timings. A re-run with the same parameters starts after them."""
    if previous is None or previous["state"] != "interrupted" or not previous.get("failed_notebook"):
        return []
    names, stopped_in = list(plan.params), Path(previous["failed_notebook"]).stem
    if stopped_in not in names:
        return []
    return [nb for nb in names[:names.index(stopped_in)] if nb in (previous.get("timings") or {})]


def _interrupted(run_dir: Path, status: dict, notebook: str, output: Path) -> dict:
    """Write (and return) ``status`` as interrupted (Ctrl-C) in ``notebook`` ("": before the first); a re-run
    resumes the entry."""
    where = f"in {notebook}" if notebook else "before its first notebook"
    status.update(state="interrupted", error=f"interrupted (Ctrl-C) {where}", failed_notebook=str(output),
                  finished=run_status.now_iso())
    run_status.write_status(run_dir, status)
    return status


def _clear(run_dir: Path) -> None:
    """Empty a run folder but for its lock file (the runner holds it) and its seed<k> runs (runs of their own)."""
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE or (path.is_dir() and seed_of(path) is not None):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _same_params(plan: EntryPlan) -> bool:
    return (run_status.read_params(plan.run_dir) or {}).get("notebooks") == plan.params


def completed(plan: EntryPlan) -> tuple[bool, str]:
    """(skip?, why): done with the same parameters -> skip; done with others -> keep it, say so."""
    status = run_status.read_status(plan.run_dir)
    if status is None or status["state"] != "done":
        return False, ""
    previous = (run_status.read_params(plan.run_dir) or {}).get("notebooks")
    if previous == plan.params:
        return True, "done earlier (--force re-runs)"
    changed = sorted(
        f"{nb}.{k}" for nb in plan.params for k in set(plan.params[nb]) | set((previous or {}).get(nb, {}))
        if plan.params[nb].get(k) != (previous or {}).get(nb, {}).get(k)
    )
    return True, f"done earlier with other parameters ({', '.join(changed) or 'params.yaml unreadable'}); --force re-runs it"


def _summary(run_dir: Path) -> str:
    from gcrepro.run_metrics import read_metrics

    try:
        m = read_metrics(run_dir)
    except (OSError, ValueError):
        return "no metrics.json"
    if not m.evaluated:
        return "not evaluated"
    return f"box AP {m.box_ap or 0.0:.1f}, mask AP {m.mask_ap or 0.0:.1f} ({m.label})"


def run_table(
    plans: list[EntryPlan],
    *,
    force: bool = False,
    notebooks: Path | None = None,
    stream: TextIO | None = None,
    jobs: int = 1,
    progress: str | None = None,
) -> list[dict]:
    """Run planned entries; one summary line per entry. Returns each entry's status (in plan order); an
    entry whose folder another process holds is not touched: ``{"entry", "state": IN_USE, "error"}``.

    ``jobs`` > 1 runs that many entries at once (each in its own kernel process and run folder):
    on a CPU the toy profile trains with one compute thread, so 2-3 entries share 2 cores well.
    Entries run in worker threads; this thread shows their progress (``progress``: a mode of
    :mod:`gcrepro.progress`; None: ``$GCREPRO_PROGRESS``, else auto for ``stream``) read from each run folder's
    progress.json, which the kernels write (they show lines in their notebooks). Ctrl-C (KeyboardInterrupt
    here) stops every kernel and its children within seconds, marks each started, unfinished entry
    "interrupted" in its status.json, and raises KeyboardInterrupt.
    """
    from gcrepro.progress import progress_env, resolve_mode
    from gcrepro.progress_view import ProgressView

    stream = stream or sys.stdout
    view = ProgressView(mode=resolve_mode(progress, stream=stream), stream=stream)
    stop = threading.Event()
    statuses: list[dict | None] = [None] * len(plans)
    started: dict[int, str] = {}  # entries this run holds -> the notebook running ("" before the first)
    errors: list[BaseException] = []
    todo = iter(range(len(plans)))
    take = threading.Lock()

    def one(i: int, plan: EntryPlan) -> dict:
        key, label = str(plan.run_dir), f"[{i + 1}/{len(plans)}] {plan.label}"
        line: list[str] = [f"{label}:"]
        view.started(key, label, plan.run_dir)
        try:
            with hold_run_dir(plan.run_dir, option="--runs-dir"):
                started[i] = ""

                def on_notebook(name: str) -> None:
                    started[i] = name
                    view.notebook(key, name)

                status = _run_held(plan, force=force, notebooks=notebooks, echo=line.append, stop=stop,
                                   on_notebook=on_notebook)
        except RunDirInUse as busy:
            line.append(f" skipped: {busy}")
            status = {"entry": plan.entry, "state": IN_USE, "error": str(busy)}
        view.finished(key, "".join(line).rstrip("\n"))
        return status

    workers = max(1, min(jobs, len(plans)))
    ended: list[int] = []  # one item per worker that returned
    all_ended = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                with take:
                    i = next(todo, None)
                if i is None:
                    return
                statuses[i] = one(i, plans[i])
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            errors.append(exc)
            stop.set()
        finally:
            with take:
                ended.append(1)
                if len(ended) == workers:
                    all_ended.set()

    # Waiting on an Event, not Thread.join: a KeyboardInterrupt inside join() marks the thread stopped in
    # Python 3.11 (its state lock is released), after which is_alive() lies.
    with progress_env("lines"):  # kernels print lines into their notebooks, not a widget per step
        try:
            for k in range(workers):
                threading.Thread(target=worker, name=f"gcrepro-entry-{k}", daemon=True).start()
            while not all_ended.wait(timeout=POLL_S):
                view.poll()
        except KeyboardInterrupt:
            view.close()
            stream.write("Ctrl-C: stopping the running entries (a few seconds)...\n")
            stream.flush()
            _stop_entries(plans, started, statuses, stop, all_ended)
            raise
        finally:
            view.close()
    if errors:
        raise errors[0]
    return statuses


POLL_S = 0.5  # how often the runner reads the running entries' progress.json


def _stop_entries(plans: list[EntryPlan], started: dict[int, str], statuses: list[dict | None],
                  stop: threading.Event, all_ended: threading.Event) -> None:
    """Ctrl-C: no entry or notebook starts any more; every kernel and its children are stopped (SIGINT, SIGTERM,
    SIGKILL: :func:`gcrepro.process_tree.stop_children`); each entry started here and not finished says
    "interrupted" in its status.json. A second Ctrl-C meanwhile is ignored (the main thread only)."""
    import signal

    from gcrepro.process_tree import stop_children

    stop.set()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        stop_children(settled=all_ended.is_set)
        all_ended.wait(timeout=5.0)  # the workers write their entries' status (and notebooks)
        for i, notebook in sorted(started.items()):
            status = run_status.read_status(plans[i].run_dir)
            if statuses[i] is None and status is not None and status["state"] == "running":
                _interrupted(plans[i].run_dir, status, notebook, plans[i].run_dir / f"{notebook}.ipynb")
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _run_held(plan: EntryPlan, *, force: bool, notebooks: Path | None, echo: Callable[[str], None],
              stop: threading.Event | None = None, on_notebook: Callable[[str], None] = lambda name: None) -> dict:
    """One entry in a folder this process holds: skip it if completed, else run it (fresh or resuming)."""
    skip, why = (False, "") if force else completed(plan)
    if skip:
        echo(f" skipped, {why}\n")
        return run_status.read_status(plan.run_dir)
    # A failed or interrupted attempt with the same parameters resumes; anything else starts afresh.
    fresh = force or not (plan.run_dir / run_status.STATUS_FILE).exists() or not _same_params(plan)
    if fresh and any(p.name != LOCK_FILE and not (p.is_dir() and seed_of(p) is not None)
                     for p in plan.run_dir.iterdir()):
        echo(" (previous results cleared)")
    elif not fresh:
        echo(" (resuming)")
    t0 = time.perf_counter()
    status = run_entry(plan, fresh=fresh, notebooks=notebooks, echo=echo, stop=stop, on_notebook=on_notebook)
    took = time.perf_counter() - t0
    if status["state"] == "done":
        echo(f" -> done in {took:.0f}s: {_summary(plan.run_dir)}\n")
    elif status["state"] == "interrupted":
        echo(f" -> interrupted after {took:.0f}s\n")
    else:
        echo(f" -> FAILED in {took:.0f}s: {status['error']} (see {status['failed_notebook']})\n")
    return status


REPORT_FAILED = "report.failed.ipynb"


def run_report_notebook(runs_dir: Path, *, notebooks: Path | None = None) -> Path:
    """Execute report.ipynb over ``runs_dir`` into ``runs_dir/report.ipynb`` (it writes report.html and report.csv).
    The notebook runs under a temporary name and replaces report.ipynb only when it ran through; a failed one is
    kept as report.failed.ipynb (signed either way) and its error raised."""
    import papermill

    runs_dir = Path(runs_dir).resolve()
    path = nbp.notebook_path(nbp.REPORT_NOTEBOOK, notebooks)
    declared = nbp.declared_params(path)
    params = nbp.apply_sets({"report": {"runs_dir": str(runs_dir)}}, [], {"report": declared})["report"]
    output, running = runs_dir / "report.ipynb", runs_dir / ".report.running.ipynb"
    try:
        papermill.execute_notebook(str(path), str(running), parameters=params, kernel_name=KERNEL_NAME,
                                   progress_bar=False, log_output=False, cwd=str(runs_dir),
                                   extra_arguments=KERNEL_ARGS)
    except BaseException:
        if running.is_file():
            sign_notebook(running)
            running.replace(runs_dir / REPORT_FAILED)
        raise
    sign_notebook(running)
    running.replace(output)
    (runs_dir / REPORT_FAILED).unlink(missing_ok=True)
    return output



def _interrupted_line(plans: list[EntryPlan], prog: str) -> str:
    """One line after Ctrl-C: which entries are marked interrupted and how to go on."""
    stopped = [p.label for p in plans if (run_status.read_status(p.run_dir) or {}).get("state") == "interrupted"]
    which = f"{len(stopped)} entr{'y' if len(stopped) == 1 else 'ies'} marked interrupted ({', '.join(stopped)})" \
        if stopped else "no entry had started"
    return (f"{prog}: interrupted; {which}; the same command again resumes them (from their last checkpoint, if any) "
            "and skips the completed ones")


def select_entries(entries: str | None, rows: str | None) -> list[str]:
    """Entry names from ``--entries NAME[,NAME...]|all`` and/or ``--rows 1-3,7``, in table order."""
    from gcrepro import entries as table

    if entries is None and rows is None:
        raise nbp.ParameterError("choose entries: --entries NAME[,NAME...]|all or --rows 1-3,7 (see `gcrepro table list`)")
    if entries is not None and entries.strip() == "all":
        return [e.name for e in table.list_entries()]
    try:
        return [e.name for e in table.select_entries(names=entries or [], rows=rows or [])]
    except (LookupError, ValueError) as exc:
        option = "--rows" if rows and "row" in str(exc) else "--entries"
        raise nbp.ParameterError(f"{option}: {exc}") from None


def table_run(
    entries: list[str],
    *,
    runs_dir: Path | None = None,
    data: str | None = None,
    profile: str = "toy",
    gpus: int = 0,
    sets: list[tuple[str, str]] = (),
    force: bool = False,
    jobs: int = 1,
    prog: str = "gcrepro table run",
    checkpoints: Path | None = None,
    seeds: str | None = None,
    progress: str | None = None,
) -> int:
    """Validate everything, then run the entries and build the report. 0: all done; 1: something failed
    or was in use by another process; 2: bad input (one line on stderr); 130: interrupted. With
    ``checkpoints`` (a folder of released checkpoints), evaluate those instead of training. ``seeds``
    (``--seeds 0,1,2`` or ``0-2``): each entry once per seed, in RUNS/<entry>/seed<k>."""
    from gcrepro.paths import default_runs_dir
    from gcrepro.run_dir import RunDirError, ensure_run_dir

    runs_dir = Path(runs_dir or default_runs_dir()).expanduser().resolve()
    try:
        check_kernel()
        seed_list = None if seeds is None else parse_seeds(seeds)
        if seed_list is not None and checkpoints is not None:
            raise nbp.ParameterError(f"--seeds {seeds} and --checkpoints: a released checkpoint has no seeds to run")
        if checkpoints is not None:
            plans, notes = plan_checkpoints(entries, checkpoints=checkpoints, runs_dir=runs_dir, data=data, gpus=gpus,
                                            sets=list(sets))
        else:
            plans, notes = plan_table(entries, runs_dir=runs_dir, data=data, profile=profile, gpus=gpus,
                                      sets=list(sets), seeds=seed_list), []
        ensure_run_dir(runs_dir, option="--runs-dir")
    except (nbp.ParameterError, SeedError, RuntimeError, FileNotFoundError, RunDirError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, flush=True)
    if plans[0].spec is not None:
        spec = plans[0].spec
        print(f"data: {spec.data.root} ({spec.data.kind}); numbers labelled: {spec.label_text}", flush=True)
    else:
        print(f"evaluating {len(plans)} released checkpoint(s) from {checkpoints} on "
              f"{plans[0].params['evaluate']['data']}", flush=True)
    print(f"runs: {runs_dir}", flush=True)
    try:
        statuses = run_table(plans, force=force, jobs=jobs, progress=progress)
    except KeyboardInterrupt:
        print(_interrupted_line(plans, prog), file=sys.stderr, flush=True)
        return 130
    failed = [p.label for p, s in zip(plans, statuses) if s is None or s["state"] not in ("done", IN_USE)]
    in_use = [p.label for p, s in zip(plans, statuses) if s is not None and s["state"] == IN_USE]
    report_ok = True
    try:
        notebook = run_report_notebook(runs_dir)
        print(f"report: {runs_dir / 'report.html'}\n        {runs_dir / 'report.csv'}\n        {notebook}")
    except KeyboardInterrupt:
        from gcrepro.process_tree import stop_children

        stop_children()
        print(f"\n{prog}: interrupted while writing the report; `gcrepro table report --runs-dir {runs_dir}` writes it",
              file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the runs are kept; say what broke
        report_ok = False
        print(f"report FAILED: {type(exc).__name__}: {exc} (see {runs_dir / REPORT_FAILED})")
    if failed:
        print(f"{len(failed)} of {len(plans)} entries failed: {', '.join(failed)} "
              "(each run folder keeps status.json and the failing notebook)")
    if in_use:
        print(f"{len(in_use)} of {len(plans)} entries not run, their folders are in use by another process: "
              f"{', '.join(in_use)}")
    return 1 if failed or in_use or not report_ok else 0
