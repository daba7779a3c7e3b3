"""Small helpers the notebooks share: run folders, checkpoints, the COCO numbers as a table.

Everything a script would need lives here (or deeper in gcrepro), not in a notebook.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from gcrepro.run_metrics import COCO_KEYS, RunMetrics


def run_dir_for(entry: str, work_dir: str, *, runs_dir: str = "", existing: bool = False, seed: int = -1) -> Path:
    """The run folder: ``work_dir`` when given; else, for a new run, ``RUNS/<entry name>`` (``seed`` >= 0:
    ``RUNS/<entry name>/seed<k>``); for an ``existing`` one, the entry's run (of that seed) found under RUNS,
    ``RUNS/<entry>`` or a table run's ``RUNS/<table>/<entry>``, or their ``seed<k>`` runs
    (:func:`gcrepro.analysis.runs_dir.find_run`: printed which one when there are several; RunNotFound naming
    where it looked). RUNS: ``runs_dir``, else ``$GCREPRO_RUNS``, else ``runs/``."""
    if work_dir:
        return Path(work_dir).expanduser().resolve()
    import gcrepro
    from gcrepro.analysis import runs_dir as runs

    name = gcrepro.get_entry(entry).name
    if not existing:
        root = Path(runs_dir).expanduser().resolve() if runs_dir else None
        if root is not None and root.is_file():
            raise runs.RunsDirError(f"runs_dir {root} is a file, expected a folder of runs")
        from gcrepro.paths import default_runs_dir

        from gcrepro.analysis.seeds import folder_name

        return (root or default_runs_dir()) / name / (folder_name(seed) if seed >= 0 else "")
    found, note = runs.find_run(name, runs_dir or None, seed=seed if seed >= 0 else None)
    if note:
        print(note)
    return found


def checkpoint_for(run_dir: Path, checkpoint: str) -> Path:
    """``checkpoint`` when given, else the latest checkpoint train.ipynb (gcrepro.train) wrote in ``run_dir``."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path}: no such file")
        return path.resolve()
    from gcrepro.engine.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        from gcrepro.analysis.run_status import read_status

        status = read_status(run_dir) or {}
        why = f" (its status.json: {status['state']}{', ' + status['error'] if status.get('error') else ''})" \
            if status.get("state") else ""
        raise FileNotFoundError(
            f"no checkpoint in {run_dir}/checkpoints{why}: train this entry there (train.ipynb with this work_dir, "
            "or `gcrepro train --work-dir`), or set the checkpoint parameter"
        )
    return found


def stored_evaluation(run_dir: Path, *, checkpoint: str = "", data: str = "") -> tuple[RunMetrics | None, str]:
    """(the run's metrics.json when it already holds the evaluation asked for, why not otherwise).

    Asked for: the run's own final checkpoint (or ``checkpoint``, when given) on its own val set (or the one at
    ``data``). The evaluation of an earlier checkpoint of a training that went on is not it."""
    from gcrepro.run_metrics import METRICS_JSON, read_metrics

    if not (Path(run_dir) / METRICS_JSON).is_file():
        return None, f"no {METRICS_JSON} in {run_dir} yet"
    metrics = read_metrics(run_dir)
    if not metrics.evaluated:
        return None, f"{metrics.path}: trained, not evaluated yet"
    evaluated = str(metrics.eval.get("checkpoint") or "")
    if checkpoint and (not evaluated or Path(evaluated).resolve() != Path(checkpoint).expanduser().resolve()):
        return None, f"{metrics.path} holds the evaluation of {evaluated or 'another checkpoint'}, not {checkpoint}"
    if data and (metrics.eval_data is None or Path(metrics.eval_data.root).resolve() != Path(data).expanduser().resolve()):
        on = metrics.eval_data.root if metrics.eval_data else "another val set"
        return None, f"{metrics.path} holds an evaluation on {on}, not on {data}"
    at = metrics.eval.get("checkpoint_iteration")
    if not checkpoint and metrics.iterations is not None and at is not None and at != metrics.iterations:
        return None, f"{metrics.path} holds the evaluation at iteration {at}; the training went on to {metrics.iterations}"
    return metrics, f"stored evaluation ({metrics.path}) of {evaluated or 'the checkpoint'}" + (
        f", iteration {at}" if at is not None else "")


def evaluation(entry: str, run_dir: Path, *, checkpoint: str, data: str, gpus: int,
               reevaluate: bool) -> RunMetrics:
    """What evaluate.ipynb shows: the run's stored evaluation when it has the one asked for and ``reevaluate`` is
    False (looking writes nothing); else ``gcrepro.evaluate``, which writes metrics.json, and coco_table.csv beside
    it. Prints which."""
    if not reevaluate:
        stored, why = stored_evaluation(run_dir, checkpoint=checkpoint, data=data)
        if stored is not None:
            print(f"{why}: shown as stored, nothing re-run (reevaluate=True evaluates again)")
            return stored
        print(f"evaluating: {why}")
    import gcrepro

    path = checkpoint_for(run_dir, checkpoint)
    print(f"checkpoint {path}")
    metrics = gcrepro.evaluate(entry, checkpoint=path, data=data or None, work_dir=run_dir, gpus=gpus)
    save_coco_table(run_dir, coco_table(metrics))
    return metrics


def styled(frame: pd.DataFrame, *, caption: str, precision: int,
           na_rep: str = "—") -> pd.io.formats.style.Styler:
    """``frame`` as a Styler whose cells, labels and caption are HTML-escaped: the one way a table becomes HTML
    here (folder names, metrics.json and status.json are user input: ``<script>`` must stay text)."""
    return (frame.style.format(precision=precision, na_rep=na_rep, escape="html")
            .format_index(escape="html", axis=0).format_index(escape="html", axis=1)
            .set_caption(html.escape(caption)))


def coco_table(metrics: RunMetrics) -> pd.DataFrame:
    """The 12 COCO numbers of bbox and segm as a 2 x 12 table (percent; NaN where COCOeval has no ground truth,
    shown as '—' by :func:`styled`)."""
    if not metrics.evaluated:
        raise ValueError(f"{metrics.path}: not evaluated yet (no 'bbox' / 'segm'); run evaluate.ipynb or gcrepro eval")
    rows = {task: [math.nan if numbers[k] is None else float(numbers[k]) for k in COCO_KEYS]
            for task, numbers in (("bbox", metrics.bbox), ("segm", metrics.segm))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(COCO_KEYS))


def save_coco_table(run_dir: Path, frame: pd.DataFrame) -> Path:
    """``run_dir/coco_table.csv``: the COCO table as numbers (empty where there is none)."""
    from gcrepro.atomic import write_text_atomic

    return write_text_atomic(Path(run_dir) / "coco_table.csv", frame.to_csv(float_format="%.2f"))


def coco_caption(entry: str, metrics: RunMetrics, frame: pd.DataFrame) -> str:
    """The COCO table's caption: the entry, the label, and what a '—' means when there is one."""
    text = f"{entry}: {metrics.label_text}"
    if frame.isna().to_numpy().any():
        text += " (—: no ground-truth object of that size in the val set)"
    return text


def cost_table(metrics: RunMetrics, entry) -> pd.DataFrame:
    """Mem, s/iter and fps: ours (and how measured) beside the paper's where the paper has them. One header row:
    the row labels are the index, unnamed."""
    rows = [
        ("Mem (GB)", metrics.mem_gb, entry.paper_mem_gb, metrics.mem_kind or ""),
        ("train s/iter", metrics.train_s_per_iter, entry.paper_train_s_per_iter, "mean, first iterations excluded"),
        ("inference fps", metrics.inf_fps, entry.paper_inf_fps, "batch 1, whole pipeline"),
    ]
    frame = pd.DataFrame([r[1:] for r in rows], index=[r[0] for r in rows],
                         columns=["ours", "paper (V100)", "ours measured as"])
    frame["ours"] = pd.to_numeric(frame["ours"], errors="coerce")
    frame["paper (V100)"] = pd.to_numeric(frame["paper (V100)"], errors="coerce")
    return frame


def hardware_text(hardware) -> str:
    """metrics.json's ``hardware`` (a dict from the engine, or a string) in a few words."""
    if not isinstance(hardware, dict):
        return str(hardware or "")
    device = str(hardware.get("device", "?"))
    name = hardware.get("gpu") or hardware.get("gpu_name") or hardware.get("cpu") or ""
    count = hardware.get("world_size") or 1
    cores = f", {hardware['cpu_count']} cores" if device == "cpu" and hardware.get("cpu_count") else ""
    return f"{count} x {device} {name}{cores}".replace("  ", " ").strip()
