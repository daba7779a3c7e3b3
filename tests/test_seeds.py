"""Seeds as an axis of a table run: the --seeds list and its refusals, RUNS/<entry>/seed<k> folders (the
runner's plans, fast fake notebooks in a real papermill kernel, a plain re-run that keeps the seed runs),
finding seed runs (runs_dir, the notebooks' seed parameter) and the command line's one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gcrepro
from gcrepro.analysis import notebook_params as nbp
from gcrepro.analysis import notebook_support as ns
from gcrepro.analysis import run_status, table_runner
from gcrepro.analysis.runs_dir import RunNotFound, all_runs, find_run, report_folder
from gcrepro.analysis.seeds import SeedError, folder_name, parse_seeds, seed_of

sys.path.insert(0, str(Path(__file__).parent))
from test_table_runner import fake_notebooks, toy_spec  # noqa: E402,F401 - fixtures: fake notebooks, a tiny toy set

E1, E2 = (gcrepro.get_entry(r).name for r in (1, 2))


def test_seed_lists_and_their_refusals() -> None:
    assert parse_seeds("0,1,2") == parse_seeds("0-2") == parse_seeds(" 0 - 2 ") == [0, 1, 2]
    assert parse_seeds("3,0-1,7") == [3, 0, 1, 7] and parse_seeds("5") == [5]
    refused = {
        "0,1,1": "seed 1 is listed twice",
        "0-2,2": "seed 2 is listed twice",
        "0,-1": "'-1' is a negative seed",
        "-2": "'-2' is a negative seed",
        "1.5": "'1.5' is not a seed",
        "0,a": "'a' is not a seed",
        "0,,1": "'' is not a seed",
        "3-1": "range '3-1' runs backwards",
        "": "expected seeds such as 0,1,2",
        "0-500": "more than 100 seeds",
    }
    for text, expected in refused.items():
        with pytest.raises(SeedError, match=expected) as err:
            parse_seeds(text)
        assert "\n" not in str(err.value) and str(err.value).startswith(f"--seeds {text}".rstrip())
    assert folder_name(3) == "seed3" and seed_of("x/seed3") == 3 and seed_of("seedling") is None and seed_of("seed") is None


def test_plans_one_run_per_entry_and_seed(tmp_path: Path, fake_notebooks: Path, toy_spec) -> None:
    runs = tmp_path / "runs"
    plans = table_runner.plan_table([E1, E2], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec, seeds=[0, 2],
                                    sets=[("overrides.max_iters", "1")])
    assert [(p.entry, p.seed) for p in plans] == [(E1, 0), (E1, 2), (E2, 0), (E2, 2)]
    assert [p.run_dir for p in plans] == [runs.resolve() / e / f"seed{k}" for e in (E1, E2) for k in (0, 2)]
    assert [p.spec.train.seed for p in plans] == [0, 2, 0, 2]  # the seed reaches the run as its run option
    assert all(p.spec.train.max_iters == 1 for p in plans) and plans[1].label == f"{E1}/seed2"
    assert plans[1].params["evaluate"]["work_dir"] == str(runs.resolve() / E1 / "seed2")
    plain = table_runner.plan_table([E1], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec)  # no --seeds: as before
    assert plain[0].run_dir == runs.resolve() / E1 and plain[0].seed is None and plain[0].label == E1
    with pytest.raises(nbp.ParameterError, match=r"--seeds 0,1 and --set overrides.seed=3 both set the seed"):
        table_runner.plan_table([E1], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec, seeds=[0, 1],
                                sets=[("overrides.seed", "3")])
    for key in ("seed", "train.seed"):
        with pytest.raises(nbp.ParameterError, match=rf"--set {key}: 'seed' is set by --seeds"):
            table_runner.plan_table([E1], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec, sets=[(key, "3")])
    assert not runs.exists()


def test_seed_runs_go_to_their_folders_and_a_plain_run_keeps_them(tmp_path: Path, fake_notebooks: Path, toy_spec,
                                                                   capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    plans = table_runner.plan_table([E1], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec, seeds=[0, 1])
    statuses = table_runner.run_table(plans, notebooks=fake_notebooks)
    assert [s["state"] for s in statuses] == ["done", "done"]
    for k in (0, 1):
        run = runs / E1 / f"seed{k}"
        assert (run / "calls.txt").read_text().split() == ["train", "evaluate", "attention"]
        assert run_status.read_params(run)["notebooks"]["train"]["spec"]["train"]["seed"] == k
    out = capsys.readouterr().out
    assert f"{E1}/seed0" in out and f"{E1}/seed1" in out  # progress lines name the seed run
    # One plain run of the entry afterwards (RUNS/<entry>, fresh): it clears its own files, never the seed runs.
    (runs / E1 / "stale.txt").write_text("from an earlier plain run")
    plain = table_runner.plan_table([E1], runs_dir=runs, notebooks=fake_notebooks, data=toy_spec)
    assert table_runner.run_table(plain, notebooks=fake_notebooks)[0]["state"] == "done"
    assert not (runs / E1 / "stale.txt").exists()
    assert all((runs / E1 / f"seed{k}" / "calls.txt").is_file() for k in (0, 1))
    # Seed runs are skipped when completed with the same parameters, like any entry's run.
    table_runner.run_table(plans, notebooks=fake_notebooks)
    assert (runs / E1 / "seed0" / "calls.txt").read_text().split() == ["train", "evaluate", "attention"]


def _run(folder: Path, entry: str) -> Path:
    run_status.write_status(folder / entry, {"entry": entry, "state": "done"})
    return folder / entry


def test_seed_runs_are_found_and_chosen(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    for k in (2, 0, 1):
        _run(runs / "demo" / E1, f"seed{k}")
    assert report_folder(runs)[0] == runs / "demo"  # a table folder holding only seed runs
    assert sorted(all_runs(runs)) == [runs / "demo" / E1 / f"seed{k}" for k in (0, 1, 2)]
    found, note = find_run(E1, runs)
    assert found == runs / "demo" / E1 / "seed0"  # no seed chosen: the lowest, the others named
    assert f"demo/{E1}/seed1, demo/{E1}/seed2" in note and "Set seed or work_dir" in note
    assert find_run(E1, runs, seed=2) == (runs / "demo" / E1 / "seed2", "")
    with pytest.raises(RunNotFound, match=rf"no run of {E1} with seed 5: .*its seed runs are demo/{E1}/seed0"):
        find_run(E1, runs, seed=5)
    with pytest.raises(RunNotFound, match=rf"no run of {E2}: .*\(seed 1\); .* holds runs of other entries"):
        find_run(E2, runs, seed=1)
    # The notebooks' seed parameter: evaluate/attention find that seed's run; train.ipynb starts it in seed<k>.
    assert ns.run_dir_for(E1, "", runs_dir=str(runs), existing=True, seed=1) == runs / "demo" / E1 / "seed1"
    assert ns.run_dir_for(E1, "", runs_dir=str(runs), existing=True) == runs / "demo" / E1 / "seed0"
    assert "seed1" in capsys.readouterr().out  # which one is used, and the others, printed
    assert ns.run_dir_for(E2, "", runs_dir=str(runs), seed=3) == runs / E2 / "seed3"
    assert ns.run_dir_for(E2, "", runs_dir=str(runs)) == runs / E2


def test_the_notebooks_declare_seed_with_its_rule() -> None:
    for notebook in ("train", "evaluate", "attention"):
        param = nbp.declared_params(nbp.notebook_path(notebook))["seed"]
        assert param.type_name == "int" and param.default == "-1"
        assert nbp.check_value(param, 3, where=notebook) == 3
        with pytest.raises(nbp.ParameterError, match=r"'seed': expected -1 \(no seed chosen\) or a seed >= 0, got -2"):
            nbp.check_value(param, -2, where=notebook)


def test_the_command_refuses_bad_seeds_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gcrepro.cli import main

    runs = tmp_path / "runs"
    cases = {
        ("--seeds", "0,1,1"): "gcrepro table run: error: --seeds 0,1,1: seed 1 is listed twice",
        ("--seeds=-1,0",): "gcrepro table run: error: --seeds -1,0: '-1' is a negative seed",
        ("--seeds", "0,x"): "gcrepro table run: error: --seeds 0,x: 'x' is not a seed",
        ("--seeds", "0,1", "--set", "overrides.seed=4"):
            "gcrepro table run: error: --seeds 0,1 and --set overrides.seed=4 both set the seed: choose one",
    }
    for args, expected in cases.items():
        assert main(["table", "run", "--rows", "1", "--runs-dir", str(runs), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(expected) and "\n" not in err
    assert not runs.exists()  # nothing ran, nothing was written
