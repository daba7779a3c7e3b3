"""The table runner: parameter validation, failure isolation, skip-completed (fast fake notebooks).

The fake notebooks declare the same runner parameters as the real ones and run in a real
papermill kernel; "train" raises for the entry BAD (row 3), "evaluate" writes a metrics.json,
and each appends its name to calls.txt so re-runs are observable. Entries are real table rows:
the runner resolves each entry's RunSpec (on a tiny toy set) before anything runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import run_status, table_runner

GOOD, BAD, OTHER = "mask_rcnn_r50_fpn_1x", "mask_rcnn_r50_fpn_gc_r4_1x", "mask_rcnn_r50_fpn_gc_r16_1x"
COMMON = '''entry: str = "x"  # entry name
data: str = ""  # data root
work_dir: str = ""  # run folder
'''
FAKES = {
    "train": (COMMON + 'profile: str = "toy"  # profile\ngpus: int = 0  # gpus\noverrides: dict = {}  # engine overrides\n'
              'resume: str = "no"  # no | yes | auto\nspec: dict = {}  # resolved run\n',
              f'assert spec["entry"] == entry\nif entry == "{BAD}":\n    raise RuntimeError("boom in " + entry)'),
    "evaluate": (COMMON + 'gpus: int = 0  # gpus\ncheckpoint: str = ""  # checkpoint\n',
                 'import json, pathlib\n'
                 'pathlib.Path(work_dir, "metrics.json").write_text(json.dumps('
                 '{"entry": entry, "bbox": None, "segm": None, "data": "toy"}))'),
    "attention": (COMMON + 'num_images: int = 2  # images\nnonlocal_panel: bool = True  # panel\ninteractive: bool = True  # widgets\n',
                  'assert interactive is True and isinstance(num_images, int)'),  # the view is saved with it
}


def _write_fake(folder: Path, name: str, params: str, body: str) -> None:
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    log = f'import pathlib\nwith open(pathlib.Path(work_dir, "calls.txt"), "a") as f:\n    f.write("{name}\\n")'
    nb = new_notebook(cells=[cell, new_code_cell(log), new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory):
    from gcrepro.data import describe_data, make_toy_dataset

    return describe_data(make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", num_train=2, num_val=1, image_size=64))


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


def test_validation_rejects_bad_parameters_before_anything_runs(tmp_path: Path, fake_notebooks: Path, toy_spec) -> None:
    runs = tmp_path / "runs"
    plan = dict(runs_dir=runs, notebooks=fake_notebooks, data=toy_spec)
    cases = {
        ("nonexistent", "1"): "no notebook declares parameter 'nonexistent'",
        ("attention.num_images", "two"): "'num_images' is int",
        ("attention.nonlocal_panel", "3"): "'nonlocal_panel' is bool",
        ("runs_dir", "elsewhere"): "set by --runs-dir",
        ("gpus", "2"): "set by --gpus",
        ("evaluate.num_images", "1"): "no notebook declares parameter 'num_images'",
        ("num_images.x", "1"): "is int, not a dict",
    }
    for (key, value), expected in cases.items():
        with pytest.raises(nbp.ParameterError, match=expected):
            table_runner.plan_table([GOOD, BAD], sets=[(key, value)], **plan)
    with pytest.raises(nbp.ParameterError, match="profile"):
        table_runner.plan_table([GOOD], profile="huge", **plan)
    with pytest.raises(nbp.ParameterError, match="'spec' is set by the runner"):
        table_runner.plan_table([GOOD], sets=[("spec", "{}")], **plan)
    with pytest.raises(nbp.ParameterError, match="--data: data folder not found"):
        table_runner.plan_table([GOOD], runs_dir=runs, notebooks=fake_notebooks, data=str(tmp_path / "nowhere"))
    with pytest.raises(nbp.ParameterError, match="expected key=value"):
        nbp.parse_set_args(["novalue"])
    assert not runs.exists()  # nothing ran, nothing was written

    plans = table_runner.plan_table([GOOD], sets=[("num_images", "3"), ("overrides.max_iters", "5")], **plan)
    assert plans[0].params["attention"]["num_images"] == 3
    # The overrides are resolved into the spec train.ipynb receives (the notebook resolves nothing).
    assert plans[0].spec.train.max_iters == 5 and plans[0].spec.overrides == {"max_iters": 5}
    assert plans[0].params["train"]["spec"] == plans[0].spec.to_dict() and "overrides" not in plans[0].params["train"]
    assert "interactive" not in plans[0].params["attention"]  # its default: the view is saved with the notebook
    assert plans[0].params["train"]["work_dir"] == str(runs.resolve() / GOOD)


def test_training_overrides_are_checked_by_the_one_parser(tmp_path: Path, toy_spec) -> None:
    # The real notebooks: overrides keys and values go through gcrepro.runspec's parser, once.
    for bad, named in (("overrides.max_iterz", "max_iterz"), ("overrides.max_iters", "max_iters=-1"),
                       ("overrides.base_lr", "base_lr=inf")):
        value = "inf" if bad.endswith("base_lr") else ("-1" if named.endswith("-1") else "5")
        with pytest.raises(nbp.ParameterError, match=named):
            table_runner.plan_table([GOOD], runs_dir=tmp_path, data=toy_spec, sets=[(bad, value)])
    plans = table_runner.plan_table([GOOD], runs_dir=tmp_path, data=toy_spec,
                                    sets=[("overrides.max_iters", "5"), ("num_images", "1")])
    assert plans[0].spec.train.max_iters == 5


def test_failure_isolation_and_skip_completed(tmp_path: Path, fake_notebooks: Path, toy_spec) -> None:
    runs = tmp_path / "runs"
    plans = table_runner.plan_table([GOOD, BAD], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec)
    statuses = table_runner.run_table(plans, notebooks=fake_notebooks)
    good, bad = runs / GOOD, runs / BAD

    assert [s["state"] for s in statuses] == ["done", "failed"]
    assert _calls(good) == ["train", "evaluate", "attention"]
    assert json.loads((good / "metrics.json").read_text())["entry"] == GOOD
    assert set(run_status.read_status(good)["timings"]) == {"train", "evaluate", "attention"}
    assert run_status.read_params(good)["notebooks"]["train"]["entry"] == GOOD
    for nb in ("train", "evaluate", "attention"):
        assert (good / f"{nb}.ipynb").is_file()

    failed = run_status.read_status(bad)
    assert failed["state"] == "failed"
    assert failed["error"] == f"RuntimeError: boom in {BAD}"
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
    assert plans[1].params["train"]["resume"] == "auto"

    # Other parameters for a completed entry: kept, not silently overwritten.
    changed = table_runner.plan_table([GOOD], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec,
                                      sets=[("num_images", "1")])
    skip, why = table_runner.completed(changed[0])
    assert skip and "attention.num_images" in why

    # --force re-runs it from scratch.
    (good / "stale.txt").write_text("from the earlier run")
    statuses = table_runner.run_table(plans[:1], force=True, notebooks=fake_notebooks)
    assert statuses[0]["state"] == "done"
    assert _calls(good) == ["train", "evaluate", "attention"]
    assert not (good / "stale.txt").exists()


def test_interrupted_run_is_not_completed(tmp_path: Path, fake_notebooks: Path, toy_spec) -> None:
    plan = table_runner.plan_table([GOOD], runs_dir=tmp_path, notebooks=fake_notebooks, data=toy_spec)[0]
    run_status.write_params(plan.run_dir, {"entry": GOOD, "notebooks": plan.params})
    run_status.write_status(plan.run_dir, {"entry": GOOD, "state": "running"})  # a killed run
    assert table_runner.completed(plan) == (False, "")


def test_kernel_check(monkeypatch) -> None:
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    table_runner.check_kernel()  # this venv: "python3" runs this interpreter
    foreign = KernelSpec(argv=["/opt/other/bin/python", "-m", "ipykernel_launcher"], resource_dir="/x/kernels/python3")
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", lambda self, name: foreign)
    with pytest.raises(RuntimeError, match="runs /opt/other/bin/python, not this Python"):
        table_runner.check_kernel()


def test_concurrent_entries_keep_isolation_and_order(tmp_path: Path, fake_notebooks: Path, toy_spec) -> None:
    """jobs=2: entries run at once, each in its own folder; statuses and progress lines stay per entry."""
    import io

    runs = tmp_path / "runs"
    plans = table_runner.plan_table([GOOD, BAD, OTHER], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec)
    out = io.StringIO()
    statuses = table_runner.run_table(plans, notebooks=fake_notebooks, jobs=2, stream=out)
    assert [s["state"] for s in statuses] == ["done", "failed", "done"]  # plan order, whatever finished first
    for name in (GOOD, OTHER):
        assert _calls(runs / name) == ["train", "evaluate", "attention"]
        assert json.loads((runs / name / "metrics.json").read_text())["entry"] == name
    assert _calls(runs / BAD) == ["train"]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("[") for line in lines)  # one whole line per entry
    assert any(f"{BAD}:" in line and "FAILED" in line for line in lines)
