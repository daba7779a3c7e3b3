"""The notebooks check their own parameters (the validator `gcrepro table run` uses), and nothing a user
feeds them (folder names, metrics.json, status.json) reaches their HTML or report.html unescaped."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import run_status

ENTRY = "mask_rcnn_r50_fpn_1x"  # row 1: no GC blocks, the smallest model to evaluate
MARKUP = {  # one payload per user-controlled field
    "dataset": "<svg onload=alert(1)>",
    "mem_kind": "<script>alert(2)</script>",
    "hardware": "<img src=x onerror=alert(3)>",
    "folder": "<b onmouseover=alert(4)>folder",  # no '/': a folder name
    "status_entry": "<i>entry</i>",  # in status.json
}


def _defaults(notebook: str) -> dict:
    """The notebook's parameters as its parameters cell sets them."""
    return {n: ast.literal_eval(p.default) for n, p in nbp.declared_params(nbp.notebook_path(notebook)).items()}


def _namespace(notebook: str, injected: dict) -> dict:
    """A kernel's globals after the parameters cell and papermill's injected cell (IPython's ``In`` too)."""
    source = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in injected.items())
    return {**_defaults(notebook), **injected, "In": ["", "entry: str = ...", source, "check cell"]}


def _refused(call) -> str:
    with pytest.raises(nbp.ParameterError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# (notebook, parameter, value in the kernel, the same value as `--set` text, what the message says)
BAD = [
    ("train", "gpus", "abc", "abc", "'gpus' is int"),
    ("train", "gpus", -1, "-1", "expected an integer >= 0, got -1"),
    ("train", "profile", "huge", "huge", "expected one of paper|toy, got 'huge'"),
    ("train", "entry", "mask_rcnn_r50", "mask_rcnn_r50", "unknown entry 'mask_rcnn_r50'"),
    ("train", "overrides", {"max_iterz": 5}, "{max_iterz: 5}", "overrides max_iterz: unknown key"),
    ("train", "spec", {"entry": ENTRY}, f"{{entry: {ENTRY}}}", "the run spec has no field 'profile'"),
    ("evaluate", "gpus", 1.5, "1.5", "'gpus' is int"),
    ("attention", "num_images", 0, "0", "expected an integer >= 1, got 0"),
    ("attention", "device", "gpu", "gpu", "expected '' (cuda when available) or a torch device"),
]


@pytest.mark.parametrize("notebook, name, value, text, says", BAD, ids=[f"{b[0]}.{b[1]}={b[3]}" for b in BAD])
def test_check_parameters_refuses_what_table_run_refuses(notebook: str, name: str, value, text: str,
                                                         says: str) -> None:
    in_kernel = _refused(lambda: nbp.check_parameters(_namespace(notebook, {name: value}), notebook))
    declared = {notebook: nbp.declared_params(nbp.notebook_path(notebook))}
    with_set = _refused(lambda: nbp.apply_sets({notebook: {}}, [(f"{notebook}.{name}", text)], declared))
    assert in_kernel.startswith(f"{notebook}.ipynb: parameter {name!r}") and says in in_kernel
    assert in_kernel.split(": ", 1)[1] == with_set.split(": ", 1)[1]  # the same check, only the place differs


def test_undeclared_names_are_the_injected_ones() -> None:
    for notebook in (*nbp.ENTRY_NOTEBOOKS, nbp.REPORT_NOTEBOOK):
        nbp.check_parameters(_defaults(notebook), notebook)  # the defaults pass, with or without ``In``
    # `papermill -p checkpoint 3` injects an int (`--set checkpoint=3` keeps a str parameter's text).
    for notebook, name, value in (("evaluate", "checkpoint", 3), ("report", "runs_dir", ["a"])):
        with pytest.raises(nbp.ParameterError, match=f"{notebook}.ipynb: parameter {name!r} is str"):
            nbp.check_parameters(_namespace(notebook, {name: value}), notebook)
    # ... but `papermill -p entry 2` is a row number, as the parameter's help says; a row that does not exist, a
    # bool or a float is still refused, naming the value.
    for notebook in nbp.ENTRY_NOTEBOOKS:
        nbp.check_parameters(_namespace(notebook, {"entry": 2}), notebook)
        assert "no row 31 in the GCNet table" in _refused(
            lambda: nbp.check_parameters(_namespace(notebook, {"entry": 31}), notebook))
        for value in (True, 2.0):
            assert "parameter 'entry' is str" in _refused(
                lambda: nbp.check_parameters(_namespace(notebook, {"entry": value}), notebook))
    message = _refused(lambda: nbp.check_parameters(_namespace("train", {"gpus": 1, "nonsense": 1}), "train"))
    assert message.startswith("train.ipynb declares no parameter 'nonsense' (declared: data, entry, gpus")
    # Run again interactively after later cells defined more names: still fine; papermill's own names too.
    later = {**_namespace("train", {"gpus": 1, "PAPERMILL_INPUT_PATH": "in.ipynb"}), "run": object(), "ns": None}
    later["In"] += ["run = ...", "# a cell of the user's\nx = 1"]
    nbp.check_parameters(later, "train")
    assert nbp.injected_names(["", "# Parameters\na = 1\nb: int = 2\na = 3\n", "c = 1"]) == ["a", "b"]
    assert nbp.injected_names(["", "a = 1"]) == []


def test_a_rule_applies_to_the_type_it_was_written_for() -> None:
    resume_str = nbp.Param(name="resume", type_name="str", default='"no"', help="no|yes|auto")
    assert nbp.check_value(resume_str, "auto", where="train.ipynb") == "auto"
    assert "expected one of no|yes|auto, got 'later'" in _refused(
        lambda: nbp.check_value(resume_str, "later", where="train.ipynb"))
    resume_bool = nbp.Param(name="resume", type_name="bool", default="False", help="continue")
    assert nbp.check_value(resume_bool, True, where="train.ipynb") is True


@pytest.mark.parametrize("notebook, parameters, says", [
    ("train", {"gpus": "abc"}, "train.ipynb: parameter 'gpus' is int"),
    ("train", {"nonsense": 1}, "train.ipynb declares no parameter 'nonsense'"),
    ("attention", {"num_images": 0}, "attention.ipynb: parameter 'num_images': expected an integer >= 1, got 0"),
], ids=["train-gpus-abc", "train-nonsense", "attention-num_images-0"])
def test_papermill_run_directly_stops_in_the_check_cell(tmp_path: Path, notebook: str, parameters: dict,
                                                        says: str) -> None:
    out = tmp_path / f"{notebook}.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(nbp.notebook_path(notebook)), str(out), parameters=parameters,
                                   kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert info.value.ename == "ParameterError" and info.value.evalue.startswith(says)
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    assert "parameters" in cells[injected - 1].metadata.get("tags", [])
    check, after = cells[injected + 1], cells[injected + 2:]
    assert [o.get("ename") for o in check.outputs if o.output_type == "error"] == ["ParameterError"]
    assert all(c.execution_count is None for c in after)  # nothing after the check ran
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing was written


def _checkpoint_on_markup_data(tmp_path: Path) -> tuple[Path, Path]:
    """runs/ENTRY with an untrained toy-profile checkpoint of ENTRY on a dataset folder named with markup,
    a training part of metrics.json whose mem_kind and hardware carry markup; and a run folder named with
    markup, whose status.json names another entry in markup."""
    from gcrepro.data import make_toy_dataset
    from gcrepro.data.toy import MANIFEST_NAME
    from gcrepro.engine.checkpoint import save_checkpoint
    from gcrepro.modeling.build import build_detector
    from gcrepro.run_metrics import write_train_metrics
    from gcrepro.runspec import resolve_run

    data = make_toy_dataset(tmp_path / MARKUP["dataset"], seed=1, num_train=1, num_val=1, image_size=64)
    (data / MANIFEST_NAME).unlink()  # not the built-in toy set: labelled with its folder name
    spec = resolve_run(ENTRY, data=data, profile="toy")
    run_dir = tmp_path / "runs" / ENTRY
    checkpoint = save_checkpoint(run_dir, {"model": build_detector(spec.model).state_dict(), "spec": spec.to_dict(),
                                           "iteration": 0}, iteration=0)
    write_train_metrics(run_dir, spec, iterations=0, mem_gb=1.0, mem_kind=MARKUP["mem_kind"], train_s_per_iter=None,
                        train_images_per_s=None, train={}, provenance={
                            "hardware": {"device": "cpu", "world_size": 1, "cpu": MARKUP["hardware"]}})
    run_status.write_status(run_dir, {"entry": ENTRY, "state": "done"})
    run_status.write_status(tmp_path / "runs" / MARKUP["folder"], {"entry": MARKUP["status_entry"], "state": "done"})
    return run_dir, checkpoint


def _html_outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", [])
                     if "text/html" in o.get("data", {}))


def test_markup_from_user_input_never_reaches_html(tmp_path: Path) -> None:
    run_dir, checkpoint = _checkpoint_on_markup_data(tmp_path)
    runs = run_dir.parent
    kw = {"kernel_name": "python3", "progress_bar": False, "cwd": str(tmp_path)}
    evaluate = {"entry": ENTRY, "work_dir": str(run_dir), "checkpoint": str(checkpoint)}
    papermill.execute_notebook(str(nbp.notebook_path("evaluate")), str(tmp_path / "evaluate.ipynb"),
                               parameters=evaluate, **kw)
    report_nb = papermill.execute_notebook(str(nbp.notebook_path("report")), str(tmp_path / "report.ipynb"),
                                           parameters={"runs_dir": str(runs)}, **kw)

    evaluate_html = _html_outputs(tmp_path / "evaluate.ipynb")
    report_html = _html_outputs(tmp_path / "report.ipynb")
    page = (runs / "report.html").read_text()
    for where, text in (("evaluate.ipynb", evaluate_html), ("report.ipynb", report_html), ("report.html", page)):
        tags = set(re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)", text))
        assert tags <= {"style", "table", "thead", "tbody", "tr", "th", "td", "caption", "html", "head", "meta",
                        "title", "body", "h1", "div", "p", "ul", "li", "img"}, f"{where}: markup from user input: {tags}"
        # the one image is the report's own AP chart, inline
        assert all(src.startswith("data:image/png;base64,") for src in re.findall(r"<img [^>]*src='([^']*)'", text))
        assert text.count("<img") == len(re.findall(r"<img [^>]*src='data:image/png;base64,", text))
        for payload in MARKUP.values():
            assert payload not in text, f"{where}: {payload} unescaped"
    # Escaped, they are shown as text: the dataset's folder name in the COCO table's caption, mem_kind in the
    # cost table, the hardware in its caption; in the report, dataset, mem_kind and hardware columns.
    escaped = {k: v.replace("<", "&lt;").replace(">", "&gt;") for k, v in MARKUP.items()}
    for key in ("dataset", "mem_kind", "hardware"):
        assert escaped[key] in evaluate_html and escaped[key] in report_html and escaped[key] in page, key
    # The folder named with markup is skipped, with a warning naming it; its status.json's entry is never shown.
    stderr = "".join(o.get("text", "") for c in report_nb.cells for o in c.get("outputs", [])
                     if o.get("name") == "stderr")
    assert f"'{MARKUP['folder']}' is not an entry name" in stderr
    assert escaped["folder"] not in page and escaped["status_entry"] not in page
    assert json.loads((run_dir / "metrics.json").read_text())["bbox"] is not None  # evaluate.ipynb really ran
