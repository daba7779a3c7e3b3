"""Small helpers the notebooks share: run folders, checkpoints, the COCO numbers as a table.

Everything a script would need lives here (or deeper in gcrepro), not in a notebook.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from gcrepro.run_metrics import COCO_KEYS, RunMetrics


def run_dir_for(entry: str, work_dir: str) -> Path:
    """The run folder: ``work_dir`` when given, else ``runs/<entry name>`` (gcrepro.paths.default_runs_dir())."""
    if work_dir:
        return Path(work_dir).expanduser().resolve()
    import gcrepro
    from gcrepro.paths import default_runs_dir

    return default_runs_dir() / gcrepro.get_entry(entry).name


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
        raise FileNotFoundError(
            f"no checkpoint in {run_dir}/checkpoints: run train.ipynb (or `gcrepro train`) for this entry "
            "first, with the same work_dir, or set the checkpoint parameter"
        )
    return found


def styled(frame: pd.DataFrame, *, caption: str, precision: int,
           na_rep: str = "—") -> pd.io.formats.style.Styler:
    """``frame`` as a Styler whose cells, labels and caption are HTML-escaped: the one way a table becomes HTML
    here (folder names, metrics.json and status.json are user input: ``<script>`` must stay text)."""
    return (frame.style.format(precision=precision, na_rep=na_rep, escape="html")
            .format_index(escape="html", axis=0).format_index(escape="html", axis=1)
            .set_caption(html.escape(caption)))


def coco_table(metrics: RunMetrics) -> pd.DataFrame:
    """The 12 COCO numbers of bbox and segm as a 2 x 12 table (percent; NaN where COCOeval has no ground truth)."""
    if not metrics.evaluated:
        raise ValueError(f"{metrics.path}: not evaluated yet (no 'bbox' / 'segm'); run evaluate.ipynb or gcrepro eval")
    rows = {task: [math.nan if numbers[k] is None else float(numbers[k]) for k in COCO_KEYS]
            for task, numbers in (("bbox", metrics.bbox), ("segm", metrics.segm))}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(COCO_KEYS))


def cost_table(metrics: RunMetrics, entry) -> pd.DataFrame:
    """Mem, s/iter and fps: ours (and how measured) beside the paper's where the paper has them."""
    rows = [
        ("Mem (GB)", metrics.mem_gb, entry.paper_mem_gb, metrics.mem_kind or ""),
        ("train s/iter", metrics.train_s_per_iter, entry.paper_train_s_per_iter, "mean, first iterations excluded"),
        ("inference fps", metrics.inf_fps, entry.paper_inf_fps, "batch 1, whole pipeline"),
    ]
    frame = pd.DataFrame(rows, columns=["", "ours", "paper (V100)", "ours measured as"]).set_index("")
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
