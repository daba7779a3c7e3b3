"""The table runner: parameter validation, failure isolation, skip-completed (fast fake notebooks).

The fake notebooks declare the same runner parameters as the real ones and run in a real
papermill kernel; "train" raises for the entry named "bad", "evaluate" writes a metrics.json,
and each appends its name to calls.txt so re-runs are observable.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import run_status, table_runner

COMMON = '''entry: str = "x"  # entry name
data: str = ""  # data root
work_dir: str = ""  # run folder
profile: str = "toy"  # profile
'''
FAKES = {
    "train": (COMMON + 'gpus: int = 0  # gpus\noverrides: dict = {}  # engine overrides\nresume: bool = False  # resume\n',
              'if entry == "bad":\n    raise RuntimeError("boom in " + entry)'),
    "evaluate": (COMMON + 'gpus: int = 0  # gpus\ncheckpoint: str = ""  # checkpoint\n',
                 'import json, pathlib\n'
                 'pathlib.Path(work_dir, "metrics.json").write_text(json.dumps('
                 '{"entry": entry, "bbox": {"AP": 12.5}, "segm": {"AP": 10.0}, "data": "toy"}))'),
    "attention": (COMMON + 'num_images: int = 2  # images\nnonlocal_panel: bool = True  # panel\ninteractive: bool = True  # widgets\n',
                  'assert interactive is False and isinstance(num_images, int)'),
}


def _write_fake(folder: Path, name: str, params: str, body: str) -> None:
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    log = f'import pathlib\nwith open(pathlib.Path(work_dir, "calls.txt"), "a") as f:\n    f.write("{name}\\n")'
    nb = new_notebook(cells=[cell, new_code_cell(log), new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture
def fake_notebooks(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name, (params, body) in FAKES.items():
        _write_fake(folder, name, params, body)
    return folder


def _calls(run_dir: Path) -> list[str]:
    path = run_dir / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_validation_rejects_bad_parameters_before_anything_runs(tmp_path: Path, fake_notebooks: Path) -> None:
    runs = tmp_path / "runs"
    plan = dict(runs_dir=runs, notebooks=fake_notebooks)
    cases = {
        ("nonexistent", "1"): "no notebook declares parameter 'nonexistent'",
        ("attention.num_images", "two"): "'num_images' is int",
        ("attention.nonlocal_panel", "3"): "'nonlocal_panel' is bool",
        ("attention.interactive", "true"): "set by the runner",
        ("gpus", "2"): "set by --gpus",
        ("evaluate.num_images", "1"): "no notebook declares parameter 'num_images'",
        ("num_images.x", "1"): "is int, not a dict",
    }
    for (key, value), expected in cases.items():
        with pytest.raises(nbp.ParameterError, match=expected):
            table_runner.plan_table(["a", "b"], sets=[(key, value)], **plan)
    with pytest.raises(nbp.ParameterError, match="profile"):
        table_runner.plan_table(["a"], profile="huge", **plan)
    with pytest.raises(nbp.ParameterError, match="expected key=value"):
        nbp.parse_set_args(["novalue"])
    assert not runs.exists()  # nothing ran, nothing was written

    plans = table_runner.plan_table(["a"], sets=[("num_images", "3"), ("overrides.max_iters", "5")], **plan)
    assert plans[0].params["attention"]["num_images"] == 3
    assert plans[0].params["train"]["overrides"] == {"max_iters": 5}
    assert plans[0].params["attention"]["interactive"] is False
    assert plans[0].params["train"]["work_dir"] == str(runs.resolve() / "a")


def test_training_overrides_are_checked_by_the_engine(tmp_path: Path) -> None:
    # The real notebooks: overrides keys go through gcrepro.engine.config's parser.
    with pytest.raises(nbp.ParameterError, match="max_iterz"):
        table_runner.plan_table(["a"], runs_dir=tmp_path, sets=[("overrides.max_iterz", "5")])
    with pytest.raises(nbp.ParameterError, match="max_iters"):
        table_runner.plan_table(["a"], runs_dir=tmp_path, sets=[("overrides.max_iters", "-1")])
    plans = table_runner.plan_table(["a"], runs_dir=tmp_path, sets=[("overrides.max_iters", "5"), ("num_images", "1")])
    assert plans[0].params["train"]["overrides"] == {"max_iters": 5}


def test_failure_isolation_and_skip_completed(tmp_path: Path, fake_notebooks: Path) -> None:
    runs = tmp_path / "runs"
    plans = table_runner.plan_table(["good", "bad"], runs_dir=runs, notebooks=fake_notebooks)
    statuses = table_runner.run_table(plans, notebooks=fake_notebooks)
    good, bad = runs / "good", runs / "bad"

    assert [s["state"] for s in statuses] == ["done", "failed"]
    assert _calls(good) == ["train", "evaluate", "attention"]
    assert json.loads((good / "metrics.json").read_text())["bbox"]["AP"] == 12.5
    assert set(run_status.read_status(good)["timings"]) == {"train", "evaluate", "attention"}
    assert run_status.read_params(good)["notebooks"]["train"]["entry"] == "good"
    for nb in ("train", "evaluate", "attention"):
        assert (good / f"{nb}.ipynb").is_file()

    failed = run_status.read_status(bad)
    assert failed["state"] == "failed"
    assert failed["error"] == "RuntimeError: boom in bad"
    assert failed["failed_notebook"] == str(bad / "train.ipynb")
    kept = nbformat.read(bad / "train.ipynb", as_version=4)  # the failing notebook keeps the error
    assert any(o.get("ename") == "RuntimeError" for c in kept.cells for o in c.get("outputs", []))
    assert _calls(bad) == ["train"]  # evaluate/attention never ran for it

    # Re-run: the completed entry is skipped, the failed one runs again, resuming in its folder.
    (bad / "checkpoints").mkdir()
    (bad / "checkpoints" / "latest.pth").write_text("partial training")
    statuses = table_runner.run_table(plans, notebooks=fake_notebooks)
    assert [s["state"] for s in statuses] == ["done", "failed"]
    assert _calls(good) == ["train", "evaluate", "attention"]
    assert _calls(bad) == ["train", "train"]
    assert (bad / "checkpoints" / "latest.pth").is_file()
    assert plans[1].params["train"]["resume"] is True

    # Other parameters for a completed entry: kept, not silently overwritten.
    changed = table_runner.plan_table(["good"], runs_dir=runs, notebooks=fake_notebooks, sets=[("num_images", "1")])
    skip, why = table_runner.completed(changed[0])
    assert skip and "attention.num_images" in why

    # --force re-runs it from scratch.
    (good / "stale.txt").write_text("from the earlier run")
    statuses = table_runner.run_table(plans[:1], force=True, notebooks=fake_notebooks)
    assert statuses[0]["state"] == "done"
    assert _calls(good) == ["train", "evaluate", "attention"]
    assert not (good / "stale.txt").exists()


def test_interrupted_run_is_not_completed(tmp_path: Path, fake_notebooks: Path) -> None:
    plan = table_runner.plan_table(["x"], runs_dir=tmp_path, notebooks=fake_notebooks)[0]
    run_status.write_params(plan.run_dir, {"entry": "x", "notebooks": plan.params})
    run_status.write_status(plan.run_dir, {"entry": "x", "state": "running"})  # a killed run
    assert table_runner.completed(plan) == (False, "")


def test_kernel_check(monkeypatch) -> None:
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    table_runner.check_kernel()  # this venv: "python3" runs this interpreter
    foreign = KernelSpec(argv=["/opt/other/bin/python", "-m", "ipykernel_launcher"], resource_dir="/x/kernels/python3")
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", lambda self, name: foreign)
    with pytest.raises(RuntimeError, match="runs /opt/other/bin/python, not this Python"):
        table_runner.check_kernel()


def test_concurrent_entries_keep_isolation_and_order(tmp_path: Path, fake_notebooks: Path) -> None:
    """jobs=2: entries run at once, each in its own folder; statuses and progress lines stay per entry."""
    import io

    runs = tmp_path / "runs"
    plans = table_runner.plan_table(["good", "bad", "other"], runs_dir=runs, notebooks=fake_notebooks)
    out = io.StringIO()
    statuses = table_runner.run_table(plans, notebooks=fake_notebooks, jobs=2, stream=out)
    assert [s["state"] for s in statuses] == ["done", "failed", "done"]  # plan order, whatever finished first
    for name in ("good", "other"):
        assert _calls(runs / name) == ["train", "evaluate", "attention"]
        assert json.loads((runs / name / "metrics.json").read_text())["entry"] == name
    assert _calls(runs / "bad") == ["train"]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("[") for line in lines)  # one whole line per entry
    assert any("bad:" in line and "FAILED" in line for line in lines)
