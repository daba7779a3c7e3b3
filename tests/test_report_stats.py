"""Seed statistics (gcrepro.analysis.stats) and the report over seed runs: mean ± std and n per entry, the GC
gain's 95% interval (paired by seed when both entries ran the same seeds, else Welch), "not significant",
different n per entry, n = 1. Report tests run over hand-written metrics.json files (gcrepro.run_metrics' writer)."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

import gcrepro
from gcrepro.analysis import report, run_status
from gcrepro.analysis.stats import StatsError, gain, mean_std, paired_ci, t_quantile, welch_ci
from gcrepro.run_metrics import COCO_KEYS, write_eval_metrics, write_train_metrics
from gcrepro.runspec import resolve_run

sys.path.insert(0, str(Path(__file__).parent))
from test_report import DATA  # noqa: E402 - the DataSpecs of the report tests

E1, E2, E3 = (gcrepro.get_entry(r).name for r in (1, 2, 3))  # baseline, GC r16, GC r4 (one group)


def _seed_run(runs: Path, entry: str, seed: int | None, box: float | None, mask: float | None = None, *,
              state: str = "done", recorded_seed: int | None = None, data: str = "toy") -> Path:
    """RUNS/<entry>/seed<k> (``seed`` None: RUNS/<entry>) with status.json and, when ``box`` is given, a
    metrics.json of a run trained with seed ``recorded_seed`` (default: ``seed``, else 0)."""
    run_dir = runs / entry / ("" if seed is None else f"seed{seed}")
    run_status.write_status(run_dir, {"entry": entry, "state": state})
    if box is not None:
        trained = recorded_seed if recorded_seed is not None else (seed or 0)
        spec = resolve_run(entry, data=DATA[data], overrides={"seed": trained})
        write_train_metrics(run_dir, spec, iterations=10, mem_gb=1.0 + trained, mem_kind="cpu_peak_rss",
                            train_s_per_iter=0.25, train_images_per_s=8.0, train={},
                            provenance={"hardware": {"device": "cpu", "world_size": 1, "cpu": "Test CPU"}})
        numbers = {t: {k: (ap if k == "AP" else 1.0) for k in COCO_KEYS}
                   for t, ap in (("bbox", box), ("segm", box - 1.0 if mask is None else mask))}
        write_eval_metrics(run_dir, spec, eval_data=DATA[data], inf_fps=4.0, eval={}, **numbers)
    return run_dir


# --- the statistics, against hand-computed values and scipy ---

def test_mean_and_sample_std_by_hand() -> None:
    s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4)
    assert s.std == pytest.approx(math.sqrt(5.0 / 3.0), rel=1e-12)  # squares 2.25+0.25+0.25+2.25 over n - 1 = 3
    one = mean_std([7.5])
    assert (one.mean, one.n) == (7.5, 1) and math.isnan(one.std)  # n = 1: no std
    with pytest.raises(StatsError, match="no values"):
        mean_std([])
    with pytest.raises(StatsError, match="finite"):
        mean_std([1.0, math.nan])


def test_paired_interval_by_hand() -> None:
    # differences 2, 3, 2: mean 7/3, sd sqrt(1/3), se 1/3; df 2, whose t quantile has a closed form:
    # t_p = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975.
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert t_quantile(2) == pytest.approx(t2, rel=1e-9)
    ci = paired_ci([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])
    assert ci.method == "paired" and ci.df == 2
    assert ci.estimate == pytest.approx(7 / 3, rel=1e-12)
    assert (ci.low, ci.high) == pytest.approx((7 / 3 - t2 / 3, 7 / 3 + t2 / 3), rel=1e-9)
    assert ci.significant  # [0.90, 3.77]
    assert not paired_ci([3.0, 1.0, 2.0], [1.0, 2.0, 2.5]).significant  # differences 2, -1, -0.5: contains 0
    # the pairing matters: the same values unpaired (Welch) give a wider interval here
    assert welch_ci([3.0, 5.0, 4.0], [1.0, 2.0, 2.0]).low < ci.low
    with pytest.raises(StatsError, match="one pair per seed"):
        paired_ci([1.0, 2.0], [1.0])
    with pytest.raises(StatsError, match="at least 2"):
        paired_ci([1.0], [0.0])


def test_welch_interval_by_hand_and_against_scipy() -> None:
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]  # variances 1 and 20/3: squared standard errors 1/3 and 5/3
    ci = welch_ci(a, b)
    assert ci.method == "welch"
    assert ci.df == pytest.approx(216 / 53, rel=1e-12)  # (1/3 + 5/3)^2 / ((1/3)^2 / 2 + (5/3)^2 / 3)
    half = t_quantile(216 / 53) * math.sqrt(2.0)
    assert (ci.low, ci.high) == pytest.approx((-3.0 - half, -3.0 + half), rel=1e-12)
    for x, y in ((a, b), ([12.9, 14.0, 13.8, 11.1], [13.3, 12.4]), ([0.5, 0.7], [0.1, 0.2, 0.25, 0.4, 0.3])):
        ref = scipy_stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
        got = welch_ci(x, y)
        scale = max(abs(ref.low), abs(ref.high))
        assert got.low == pytest.approx(ref.low, abs=1e-9 * scale) and got.high == pytest.approx(ref.high, abs=1e-9 * scale)
    with pytest.raises(StatsError, match="at least 2 on each side"):
        welch_ci([1.0], [1.0, 2.0])


def test_gain_pairs_by_seed_only_with_the_same_seeds() -> None:
    base = {0: 12.0, 1: 13.0, 2: 12.5}
    same = gain({2: 14.0, 0: 13.1, 1: 14.4}, base)  # same seeds, any order: paired by seed
    assert same.interval.method == "paired"
    assert same.interval.estimate == pytest.approx(paired_ci([13.1, 14.4, 14.0], [12.0, 13.0, 12.5]).estimate)
    assert same.mean == pytest.approx((13.1 + 14.4 + 14.0) / 3 - 12.5)
    subset = gain({0: 13.1, 1: 14.4}, base)  # GC ran seeds 0, 1 only: not the same seeds -> Welch
    assert subset.interval.method == "welch"
    assert subset.interval.low == pytest.approx(welch_ci([13.1, 14.4], [12.0, 13.0, 12.5]).low)
    single = gain({0: 14.0}, base)  # n = 1 on one side: the mean gain, no interval, and why
    assert single.interval is None and single.significant is None
    assert single.mean == pytest.approx(1.5) and single.why == "no interval: n = 1 vs 3"
    flat = gain({0: 13.0, 1: 13.0}, {0: 12.0, 1: 12.0})  # no spread at all: the interval is the point
    assert (flat.interval.low, flat.interval.high) == (1.0, 1.0) and flat.significant
    with pytest.raises(StatsError, match="at least one run each"):
        gain({}, base)


# --- the report over seed runs ---

BASE = {0: 12.9, 1: 11.1, 2: 12.4}
GC16 = {0: 14.0, 1: 13.0, 2: 13.6}  # paired gains 1.1, 1.9, 1.2: significant
GC4 = {3: 13.8, 4: 11.0}  # other seeds: Welch; spread large: not significant


def _table(runs: Path) -> None:
    for seed, box in BASE.items():
        _seed_run(runs, E1, seed, box)
    for seed, box in GC16.items():
        _seed_run(runs, E2, seed, box)
    for seed, box in GC4.items():
        _seed_run(runs, E3, seed, box)
    _seed_run(runs, E3, 5, None, state="failed")  # a failed seed run: in the state, not in n


def test_report_mean_std_n_paired_and_welch(tmp_path: Path) -> None:
    _table(tmp_path)
    frame, csv_path, html_path = report.write_report(tmp_path)
    by_row = frame.set_index("row")
    for row, values in ((1, BASE), (2, GC16), (3, GC4)):
        s = mean_std(list(values.values()))
        assert by_row.loc[row, "n"] == len(values) and by_row.loc[row, "seeds"] == ",".join(map(str, values))
        assert by_row.loc[row, "box_ap"] == pytest.approx(s.mean) and by_row.loc[row, "box_ap_std"] == pytest.approx(s.std)
        assert by_row.loc[row, "mask_ap"] == pytest.approx(s.mean - 1.0)
    assert by_row.loc[3, "state"] == "2 done, 1 failed" and by_row.loc[1, "state"] == "done"
    assert by_row.loc[1, "mem_gb"] == pytest.approx(2.0)  # costs: the mean over the runs (1, 2, 3 GB)

    paired = paired_ci(list(GC16.values()), list(BASE.values()))
    assert by_row.loc[2, "gc_gain_box_ap"] == pytest.approx(paired.estimate)
    assert (by_row.loc[2, "gc_gain_box_ci_low"], by_row.loc[2, "gc_gain_box_ci_high"]) == pytest.approx((paired.low, paired.high))
    assert by_row.loc[2, "gc_gain_box_significant"] is True and by_row.loc[2, "gc_gain_box_test"] == "paired, df 2"
    welch = welch_ci(list(GC4.values()), list(BASE.values()))
    assert (by_row.loc[3, "gc_gain_box_ci_low"], by_row.loc[3, "gc_gain_box_ci_high"]) == pytest.approx((welch.low, welch.high))
    assert by_row.loc[3, "gc_gain_box_significant"] is False and by_row.loc[3, "gc_gain_box_test"].startswith("Welch, df ")
    assert by_row.loc[1, "gc_gain_box_test"] == "" and math.isnan(by_row.loc[1, "gc_gain_box_ap"])  # a baseline

    csv = pd.read_csv(csv_path)
    for column in ("n", "box_ap", "box_ap_std", "gc_gain_box_ap", "gc_gain_box_ci_low", "gc_gain_box_ci_high",
                   "gc_gain_box_significant", "gc_gain_mask_ci_low", "mask_ap_std"):
        assert column in csv.columns
    assert list(csv["n"]) == [3, 3, 2] and list(csv["gc_gain_box_significant"].fillna("")) == ["", True, False]

    page = html_path.read_text()
    table = page[page.index("<table"):page.index("</table>")]
    assert f"{mean_std(list(GC16.values())).mean:.1f}\u00a0toy" in table and "±\u00a00.5" in table  # mean, label, std
    assert f"[{paired.low:+.1f}, {paired.high:+.1f}] paired" in table
    assert f"[{welch.low:+.1f}, {welch.high:+.1f}] Welch" in table and table.count("not significant") == 2  # box, mask
    assert "single published numbers with no seed spread" in page and "mean ± std over n seeds" in page
    markdown = report.to_markdown(frame)
    assert f"| {mean_std(list(BASE.values())).mean:.1f} ± {mean_std(list(BASE.values())).std:.1f} toy |" in markdown
    assert "Welch, not significant |" in markdown


def test_report_with_one_run_or_different_seeds_computes_only_what_it_can(tmp_path: Path) -> None:
    for seed, box in BASE.items():
        _seed_run(tmp_path, E1, seed, box)
    _seed_run(tmp_path, E2, None, 14.0)  # one plain run (RUNS/<entry>): n = 1, its seed from metrics.json (0)
    frame, _, html_path = report.write_report(tmp_path)
    gc = frame.set_index("row").loc[2]
    assert gc["n"] == 1 and gc["box_ap"] == 14.0 and math.isnan(gc["box_ap_std"]) and gc["seeds"] == "0"
    assert gc["gc_gain_box_ap"] == pytest.approx(14.0 - mean_std(list(BASE.values())).mean)
    assert math.isnan(gc["gc_gain_box_ci_low"]) and gc["gc_gain_box_significant"] is None
    assert gc["gc_gain_box_test"] == "no interval: n = 1 vs 3"
    table = html_path.read_text().split("<table")[1]
    assert "no interval: n = 1 vs 3" in table and "14.0\u00a0toy<" in table  # n = 1: the value, no ±


def test_report_skips_seed_runs_it_cannot_trust(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _seed_run(tmp_path, E1, 0, 12.0)
    _seed_run(tmp_path, E1, 1, 13.0, recorded_seed=7)  # seed1/ holding a seed-7 run: not seed 1's number
    _seed_run(tmp_path, E1, None, 30.0)  # RUNS/<entry> holds a run of its own beside its seed runs
    _seed_run(tmp_path, E2, 0, 14.0, data="custom")  # another val set: not comparable with its seed-1 run
    _seed_run(tmp_path, E2, 1, 15.0)
    _seed_run(tmp_path, E3, 0, 13.0)
    _seed_run(tmp_path, E3, 1, math.inf)  # a metrics.json with an infinite AP (JSON Infinity): not averaged
    with caplog.at_level(logging.WARNING, logger="gcrepro"):
        frame = report.write_report(tmp_path)[0].set_index("row")
    assert frame.loc[1, "n"] == 1 and frame.loc[1, "box_ap"] == 12.0
    assert "records seed 7, not the folder's 1" in caplog.text
    assert "holds a run of its own beside its seed runs (seed0, seed1)" in caplog.text
    assert frame.loc[2, "n"] == 1 and frame.loc[2, "data"] == "custom" and "left out of" in caplog.text
    assert math.isnan(frame.loc[2, "gc_gain_box_ap"])  # a custom GC run against a toy baseline: no gain
    assert frame.loc[3, "n"] == 1 and frame.loc[3, "box_ap"] == 13.0 and "not a finite number (box inf" in caplog.text


def test_the_chart_draws_std_and_interval_error_bars_only_where_they_exist(tmp_path: Path) -> None:
    from matplotlib.container import ErrorbarContainer

    from gcrepro.analysis.report_chart import ap_chart

    _table(tmp_path)
    _seed_run(tmp_path, gcrepro.get_entry(7).name, None, 36.0, data="coco")  # n = 1: a bar without error bar
    frame = report.report_frame(report.load_runs(tmp_path), gcrepro.list_entries())
    ap_axes, gain_axes = ap_chart(frame).axes
    bars = [c for c in ap_axes.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3  # rows 1-3 (n > 1); not row 7 nor any paper bar
    low, high = (float(cap.get_ydata()[0]) for cap in bars[0].lines[1])  # row 1's caps: mean -+ std
    base = mean_std(list(BASE.values()))
    assert (low, high) == pytest.approx((base.mean - base.std, base.mean + base.std))
    assert "mean ± std over n seeds" in ap_axes.get_title()
    gains = [c for c in gain_axes.containers if isinstance(c, ErrorbarContainer)]
    assert len(gains) == 2 and "95% CI" in gain_axes.get_title()  # rows 2 and 3: their intervals
