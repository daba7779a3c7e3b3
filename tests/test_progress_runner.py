"""Progress (issue 14 item 1), the table runner's side: what ``gcrepro table run`` / ``gcrepro demo`` show from
their kernels' progress.json files, and a bad ``--progress`` there."""
from __future__ import annotations

import io
import re
from pathlib import Path

import nbformat
import pytest

from gcrepro import progress
from gcrepro.progress_view import ProgressView


@pytest.mark.parametrize("argv, env, named", [
    (["table", "run", "--rows", "1", "--progress", "fancy"], None, "--progress 'fancy'"),
    (["demo", "--progress", "fancy"], None, "--progress 'fancy'"),
    (["demo"], "rainbow", "$GCREPRO_PROGRESS 'rainbow'"),
])
def test_bad_mode_is_one_line_and_exit_2(argv: list[str], env: str | None, named: str, tmp_path: Path, capsys,
                                         monkeypatch) -> None:
    from test_progress import one_line_exit_2

    monkeypatch.setenv("GCREPRO_RUNS", str(tmp_path / "runs"))
    if env is not None:
        monkeypatch.setenv(progress.ENV, env)
    line = one_line_exit_2(argv, capsys)
    assert named in line and "auto|bar|lines|none" in line
    assert not (tmp_path / "runs").exists()  # nothing ran


def _view(tmp_path: Path, mode: str, *, label: str, notebook: str) -> tuple[ProgressView, io.StringIO, Path]:
    """A view on a StringIO with one running entry "e" (run folder tmp_path/e) in ``notebook``."""
    out = io.StringIO()
    view = ProgressView(mode=mode, stream=out)
    run = tmp_path / "e"
    run.mkdir()
    view.started("e", label, run)
    view.notebook("e", notebook)
    return view, out, run


def test_view_reads_progress_files(tmp_path: Path, monkeypatch) -> None:
    """The runner's view shows what a kernel's Progress wrote: lines at multiples of `every` and at the end,
    nothing from an earlier stage's file, summary lines as they come."""
    monkeypatch.setattr(progress, "WRITE_EVERY_S", 0.0)  # every update written: the test steps by hand
    view, out, run = _view(tmp_path, "lines", label="[1/2] e", notebook="evaluate")
    reporter = progress.Progress(stage="train", total=5, entry="e", run_dir=run, mode="none", every=2)
    view.poll()
    assert out.getvalue() == ""  # train's file while evaluate runs: not this notebook's progress
    view.notebook("e", "train")
    for done in range(1, 6):
        reporter.update(done, loss=1.0)
        view.poll()
    reporter.close()
    view.finished("e", "[1/2] e: train 3s -> done")
    view.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" loss")[0] for line in lines[:3]] == ["[1/2] e train 1/5", "[1/2] e train 2/5",
                                                             "[1/2] e train 4/5"]
    assert lines[3].startswith("[1/2] e train 5/5") and lines[-1] == "[1/2] e: train 3s -> done"


def test_bar_view_on_a_plain_terminal_keeps_summary_lines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    view, out, run = _view(tmp_path, "bar", label="[1/1] e", notebook="train")
    progress.Progress(stage="train", total=4, entry="e", run_dir=run, mode="none").update(2, loss=0.5)
    view.poll()
    view.finished("e", "[1/1] e: train 3s -> done")
    view.close()
    assert "[1/1] e: train 3s -> done" in out.getvalue() and "\x1b[3" not in out.getvalue()  # no colour codes


def test_progress_flows_from_a_papermill_kernel(tmp_path: Path, toy_spec) -> None:
    """A table run whose fake train notebook reports progress like the engine: the kernel is told to print
    lines ($GCREPRO_PROGRESS=lines), and the runner, reading progress.json, prints the entry's progress while
    the notebook runs and its summary line after."""
    from test_table_runner import FAKES, GOOD, _write_fake

    from gcrepro.analysis import table_runner

    folder = tmp_path / "notebooks"
    folder.mkdir()
    params, _ = FAKES["train"]
    body = ('import os, time\nfrom gcrepro.progress import Progress\n'
            'assert os.environ["GCREPRO_PROGRESS"] == "lines"\n'
            'p = Progress(stage="train", total=4, entry=entry, run_dir=work_dir, every=1)\n'
            'assert p.mode == "lines"\n'
            'for k in range(1, 5):\n    time.sleep(0.8)\n    p.update(k, loss=1.0 / k)\np.close()')
    _write_fake(folder, "train", params, body)
    for name in ("evaluate", "attention"):
        _write_fake(folder, name, *FAKES[name])
    plans = table_runner.plan_table([GOOD], runs_dir=tmp_path / "runs", notebooks=folder, data=toy_spec)
    out = io.StringIO()
    statuses = table_runner.run_table(plans, notebooks=folder, stream=out, progress="lines")
    assert statuses[0]["state"] == "done"
    lines = out.getvalue().splitlines()
    shown = [line for line in lines if line.startswith(f"[1/1] {GOOD} train ")]
    assert any(re.search(r"train [123]/4 loss .* ETA", line) for line in shown), lines  # while it ran
    assert any(line.startswith(f"[1/1] {GOOD} train 4/4 loss 0.250") for line in shown), lines
    assert lines[-1].startswith(f"[1/1] {GOOD}:") and "-> done" in lines[-1]
    kept = nbformat.read(tmp_path / "runs" / GOOD / "train.ipynb", as_version=4)
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for c in kept.cells for o in c.get("outputs", []))  # no bar widget saved in the notebook


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory):
    from gcrepro.data import describe_data, make_toy_dataset

    return describe_data(make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", num_train=2, num_val=1,
                                          image_size=64))


def test_an_interrupted_entry_resumes_after_the_notebooks_it_ran_through(tmp_path: Path, toy_spec) -> None:
    """Stopped by Ctrl-C in evaluate: the same run again starts at evaluate (train ran through, its timing kept);
    an entry that failed is retried from its first notebook, as before."""
    from test_table_runner import FAKES, GOOD, _calls, _write_fake

    from gcrepro.analysis import run_status, table_runner

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in FAKES:
        _write_fake(folder, name, *FAKES[name])
    plan = table_runner.plan_table([GOOD], runs_dir=tmp_path / "runs", notebooks=folder, data=toy_spec)[0]
    plan.run_dir.mkdir(parents=True)
    run_status.write_params(plan.run_dir, {"entry": GOOD, "notebooks": plan.params})  # as the first attempt left it
    status = {"entry": GOOD, "state": "running", "timings": {"train": 12.5, "evaluate": 0.4}}
    table_runner._interrupted(plan.run_dir, status, "evaluate", plan.run_dir / "evaluate.ipynb")
    assert table_runner.ran_through(plan, run_status.read_status(plan.run_dir)) == ["train"]
    out = io.StringIO()
    assert table_runner.run_table([plan], notebooks=folder, stream=out, progress="none")[0]["state"] == "done"
    assert _calls(plan.run_dir) == ["evaluate", "attention"]
    assert "(resuming) train (ran through before) evaluate" in out.getvalue()
    assert run_status.read_status(plan.run_dir)["timings"]["train"] == 12.5
    failed = {**status, "state": "failed"}
    assert table_runner.ran_through(plan, failed) == []
