"""From `make demo` to JupyterLab: one idea of where runs are, clear messages for missing runs and bad runs
folders, a report of nothing that is an error and keeps the last report, tables without `nan`, `make lab`."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

import gcrepro
from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import notebook_support as ns
from gcrepro.analysis import report, run_status
from gcrepro.analysis.demo import default_demo_dir
from gcrepro.analysis.runs_dir import RunNotFound, RunsDirError, find_run, report_folder
from gcrepro.paths import default_runs_dir, project_root

sys.path.insert(0, str(Path(__file__).parent))
from test_report import _run as metrics_run  # noqa: E402 - a run folder with status.json and metrics.json

E1, E2, E3 = (gcrepro.get_entry(r).name for r in (1, 2, 3))


def _run(folder: Path, entry: str, *, mtime: float | None = None) -> Path:
    run_status.write_status(folder / entry, {"entry": entry, "state": "done"})
    if mtime is not None:
        os.utime(folder / entry / run_status.STATUS_FILE, (mtime, mtime))
    return folder / entry


def test_the_runs_folder_is_GCREPRO_RUNS_else_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GCREPRO_RUNS", raising=False)
    assert default_runs_dir() == project_root() / "runs" and default_demo_dir() == project_root() / "runs" / "demo"
    monkeypatch.setenv("GCREPRO_RUNS", str(tmp_path / "elsewhere"))
    assert default_runs_dir() == tmp_path / "elsewhere" and default_demo_dir() == tmp_path / "elsewhere" / "demo"
    assert ns.run_dir_for(E2, "") == tmp_path / "elsewhere" / E2  # a new run (train.ipynb)
    assert ns.run_dir_for(E2, "", runs_dir=str(tmp_path / "mine")) == tmp_path / "mine" / E2
    assert ns.run_dir_for(E2, str(tmp_path / "exact")) == tmp_path / "exact"  # work_dir wins


def test_an_entry_is_found_in_runs_or_in_a_table_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("GCREPRO_RUNS", str(runs))
    _run(runs / "demo", E2, mtime=1_000_000)
    assert find_run(E2) == (runs / "demo" / E2, "")  # make demo's runs/demo/<entry>
    assert ns.run_dir_for(E2, "", existing=True) == runs / "demo" / E2 and capsys.readouterr().out == ""
    _run(runs / "big", E2, mtime=2_000_000)
    assert find_run(E2)[0] == runs / "big" / E2  # the newest table folder's
    _run(runs, E2)
    found, note = find_run(E2)
    assert found == runs / E2  # RUNS/<entry> first
    assert note.startswith(f"{E2} has 3 runs under {runs}: using {E2}") and f"big/{E2}, demo/{E2}" in note
    assert "work_dir" in note and "\n" not in note
    assert ns.run_dir_for(E2, "", existing=True) == runs / E2 and capsys.readouterr().out.strip() == note
    (runs / "notes").mkdir()  # folders that are not runs or table folders are not looked into further
    (runs / E3).mkdir()  # an entry's folder without run files is not a run
    assert find_run(E2)[0] == runs / E2


def test_a_missing_run_names_where_it_looked_and_what_exists(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs / "demo", E1)
    with pytest.raises(RunNotFound) as info:
        find_run(E3, runs)
    message = str(info.value)
    assert f"looked in {runs / E3} and {runs}/*/{E3}" in message and f"runs of other entries: demo/{E1}" in message
    assert "\n" not in message
    run_status.write_status(runs / "demo" / E1, {"entry": E1, "state": "failed", "error": "RuntimeError: boom"})
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints \(its status.json: failed, "
                                                r"RuntimeError: boom\)"):
        ns.checkpoint_for(runs / "demo" / E1, "")


def test_a_bad_runs_folder_gets_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(RunsDirError, match=r"runs_dir .*nope does not exist: run `make demo`"):
        find_run(E1, tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunsDirError, match=r"runs_dir .*file is a file, expected a folder of runs"):
        find_run(E1, tmp_path / "file")
    with pytest.raises(RunsDirError, match="is a file"):
        ns.run_dir_for(E1, "", runs_dir=str(tmp_path / "file"))
    empty = tmp_path / "empty"
    (empty / "something").mkdir(parents=True)
    with pytest.raises(RunNotFound, match=f"{empty} holds no runs"):
        find_run(E1, empty)
    with pytest.raises(RunsDirError, match=f"{empty} holds no runs: no {empty}/<entry>/ or {empty}/<table>/<entry>/"):
        report_folder(empty)
    # the notebooks' parameter: a file is refused before anything runs (a folder still to be made is fine)
    param = nbp.declared_params(nbp.notebook_path("evaluate"))["runs_dir"]
    with pytest.raises(nbp.ParameterError, match="parameter 'runs_dir': expected '' .* got the file"):
        nbp.check_value(param, str(tmp_path / "file"), where="evaluate.ipynb")
    assert nbp.check_value(param, str(tmp_path / "later"), where="evaluate.ipynb") == str(tmp_path / "later")


def test_a_report_of_nothing_is_an_error_and_keeps_the_last_report(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    metrics_run(runs / "demo", E1, box=12.9, mask=12.7)
    metrics_run(runs / "demo", E2, box=14.0, mask=14.3)
    (runs / "report.html").write_text("the last report")
    (runs / "report.csv").write_text("row,entry\n")
    assert report_folder(runs) == (runs / "demo", f"{runs} holds no entry folders itself; reporting its table "
                                                  "folder demo")
    with pytest.raises(RunsDirError) as info:
        report.write_report(runs)
    assert str(info.value) == (f"no runs to report in {runs}: searched {runs}/<entry>/ for the 30 table entries "
                               f"(status.json or metrics.json); runs are in {runs / 'demo'}: report that folder "
                               "(runs_dir / --runs-dir). Nothing was written")
    assert (runs / "report.html").read_text() == "the last report" and (runs / "report.csv").read_text() == "row,entry\n"
    assert not (runs / "report_ap.png").exists()
    frame, _, html_path = report.write_report(runs / "demo")
    assert list(frame["entry"]) == [E1, E2] and (runs / "demo" / "report_ap.png").is_file()
    assert "data:image/png;base64," in html_path.read_text()  # the AP chart, inline: the page stands alone


def test_a_failed_report_notebook_never_replaces_the_last_one(tmp_path: Path) -> None:
    from gcrepro.analysis.table_runner import REPORT_FAILED, run_report_notebook

    (tmp_path / "report.ipynb").write_text("the last report notebook")
    with pytest.raises(papermill.PapermillExecutionError) as info:
        run_report_notebook(tmp_path)
    assert info.value.ename == "RunsDirError" and f"{tmp_path} holds no runs" in info.value.evalue
    assert (tmp_path / "report.ipynb").read_text() == "the last report notebook"
    assert (tmp_path / REPORT_FAILED).is_file() and not (tmp_path / "report.html").exists()


def test_tables_have_no_nan_and_one_header_row(tmp_path: Path) -> None:
    from gcrepro.run_metrics import COCO_KEYS, read_metrics, write_eval_metrics
    from gcrepro.runspec import resolve_run
    from test_report import DATA

    spec = resolve_run(2, data=DATA["toy"])
    numbers = {t: {k: (None if k in ("APl", "ARl") else 10.0) for k in COCO_KEYS} for t in ("bbox", "segm")}
    write_eval_metrics(tmp_path, spec, eval_data=DATA["toy"], inf_fps=None, eval={}, **numbers)
    metrics = read_metrics(tmp_path)
    coco = ns.coco_table(metrics)
    tables = [ns.styled(coco, caption=ns.coco_caption(E2, metrics, coco), precision=1).to_html(),
              ns.styled(ns.cost_table(metrics, gcrepro.get_entry(2)), caption="ours", precision=3).to_html()]
    for html in tables:
        assert "nan" not in html.lower() and html.split("</thead>")[0].count("<tr>") == 1
    assert tables[0].count(">—<") == 4 and "no ground-truth object of that size" in tables[0]
    assert ">—<" in tables[1]  # fps not measured


def test_the_report_table_is_narrow_and_says_the_rest_below(tmp_path: Path) -> None:
    metrics_run(tmp_path, E1, box=12.9, mask=12.7)
    metrics_run(tmp_path, E2, box=14.0, mask=14.3)
    _, _, html_path = report.write_report(tmp_path)
    page = html_path.read_text()
    table = page[page.index("<table"):page.index("</table>")]
    headers = table.split("</thead>")[0]
    for gone in ("hardware", "measured as", "dataset", "state"):  # state: shown only when a run is not done
        assert f">{gone}<" not in headers
    assert "Hardware: rows 1, 2: 1 x cpu Test CPU, 2 cores." in page and "Mem measured as: rows 1, 2: cpu_peak_rss." in page
    assert "14.0\u00a0toy" in table and "white-space: nowrap" in page  # the mark stays on the number's line
    assert "td.col1 {" in page and "overflow-wrap: anywhere" in page  # long entry names wrap in their column


def test_make_lab_starts_at_the_repository_root_headless_and_as_root() -> None:
    root = project_root()
    dry = subprocess.run(["make", "-n", "lab"], cwd=root, capture_output=True, text=True, check=True).stdout
    line = next(x for x in dry.replace("\\\n", " ").splitlines() if "jupyter lab" in x)
    args = shlex.split(line)
    assert args[0].endswith("/bin/jupyter") and args[1] == "lab"
    assert f"--ServerApp.root_dir={root}" in args and "--LabApp.default_url=/lab/tree/notebooks" in args
    assert {"--allow-root", "--no-browser", "--ip=127.0.0.1", "--port=8888"} <= set(args)
    assert not [a for a in args[2:] if not a.startswith("--")]  # no folder argument: that would become the root
