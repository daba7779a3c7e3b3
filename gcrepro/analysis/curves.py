"""Training curves from the engine's ``WORK_DIR/metrics.jsonl`` (one JSON object per logging step)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def read_metrics_jsonl(path: Path) -> pd.DataFrame:
    """One row per logged iteration (a resumed run's repeated iterations keep their last line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (metrics.jsonl is written by gcrepro.train)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: empty training log")
    frame = pd.DataFrame(rows)
    if "iteration" not in frame:
        raise ValueError(f"{path}: lines have no 'iteration' key (keys: {sorted(frame.columns)})")
    return frame.drop_duplicates("iteration", keep="last").sort_values("iteration").reset_index(drop=True)


def loss_curve(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Total loss and each loss term against the iteration; the learning rate below."""
    fig = Figure(figsize=(8, 5), dpi=100)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    terms = [c for c in frame.columns if c.startswith("loss_")]
    for col in terms:
        ax_loss.plot(frame["iteration"], frame[col], linewidth=1, label=col)
    if "loss" in frame:
        ax_loss.plot(frame["iteration"], frame["loss"], color="black", linewidth=2, label="loss (total)")
    ax_loss.set_ylabel("loss (log scale)")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=7, ncol=2)
    ax_loss.grid(alpha=0.3)
    if "lr" in frame:
        ax_lr.plot(frame["iteration"], frame["lr"], color="tab:purple")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(title or "training loss", fontsize=10)
    fig.tight_layout()
    return fig
