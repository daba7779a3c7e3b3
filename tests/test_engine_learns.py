"""Training learns: toy-profile runs of rows 1 (baseline) and 2 (GC r16) reach a box AP on the toy
val split far above chance.

Both rows train at the same time in two processes (one compute thread each: the toy profile's
setting, so the two cores are used), for ONE toy epoch (248 iterations of 2 images; the toy
profile's default is 2 epochs, ``make demo``), then evaluate on the 64 toy val images.

Chance: the untrained model (same seed, one step at lr 1e-12) scores box AP 0.0 (AP50 0.1).
Measured with these settings (seed 0, 2-core AMD EPYC, ~110 s for the whole test; 2026-11-30, the
`paper` conventions, i.e. mmdetection v1 geometry): box AP 4.3 (row 1) and 5.2 (row 2), mask AP 4.3
and 4.8. The threshold, 2.0, is ~45% of the lower one: margin for other CPUs' float rounding, still
20x the untrained AP50.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gcrepro.run_metrics import read_metrics

MEASURED = {1: 4.3, 2: 5.2}  # box AP (percent) after 1 toy epoch, seed 0 (2026-11-30)
BOX_AP_THRESHOLD = 2.0
SETS = ["epochs=1"]


def _run(row: int, work_dir: Path) -> subprocess.Popen:
    code = (
        "from gcrepro.engine.api import train, evaluate; "
        f"ck = train({row}, work_dir={str(work_dir)!r}, overrides={SETS!r}); "
        f"evaluate({row}, checkpoint=ck, work_dir={str(work_dir)!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_toy_rows_1_and_2_learn(tmp_path: Path) -> None:
    from gcrepro.data import ensure_toy

    ensure_toy()  # made once here, not by both processes at the same time
    procs = {row: _run(row, tmp_path / f"row{row}") for row in (1, 2)}
    for row, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"row {row} failed: {err.decode()[-3000:]}"
    for row in (1, 2):
        metrics = read_metrics(tmp_path / f"row{row}")
        assert metrics.label == "toy" and metrics.profile == "toy"
        assert metrics.iterations == 248
        box_ap = metrics.box_ap
        assert box_ap > BOX_AP_THRESHOLD, f"row {row}: box AP {box_ap:.1f} (measured {MEASURED[row]})"
        assert metrics.mask_ap > BOX_AP_THRESHOLD, f"row {row}: mask AP {metrics.mask_ap:.1f}"
