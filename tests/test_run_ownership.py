"""One owner per run folder (gcrepro.run_lock), resume modes, and one line + exit code 2 for each bad
input of ``gcrepro train`` / ``gcrepro eval`` (issue 12).

Real runs are 1-2 iterations on a 2-image toy set at 64 px; everything else fails before a model is built.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from gcrepro.engine import api
from gcrepro.engine import checkpoint as ckpt
from gcrepro.engine.config import ConfigError
from gcrepro.run_lock import LOCK_FILE, Holder, RunDirInUse, hold_run_dir

TINY = {"max_iters": 1, "min_size": 64, "max_size": 96, "num_workers": 0, "log_interval": 1}
TINY_SETS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
GOOD, OTHER = "mask_rcnn_r50_fpn_1x", "mask_rcnn_r50_fpn_gc_r16_1x"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gcrepro.data import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", seed=0, num_train=2, num_val=1, image_size=64)


@pytest.fixture(scope="module")
def finished_run(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-iteration run of row 1, started by resume="auto" in a new folder."""
    work = tmp_path_factory.mktemp("finished") / "w"
    api.train(1, data=toy, work_dir=work, resume="auto", overrides=TINY)
    return work


def _cli(argv: list[str]) -> int:
    from gcrepro.engine import cli

    parser = argparse.ArgumentParser(prog="gcrepro")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _one_error_line(capsys: pytest.CaptureFixture, command: str = "train") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"gcrepro {command}: error: "), err[0]
    return err[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_for_holder(lock: Path, proc: subprocess.Popen, timeout_s: float = 240.0) -> Holder:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            holder = Holder.parse(lock.read_text())
        except FileNotFoundError:
            holder = None
        if holder is not None:
            return holder
        assert proc.poll() is None, f"the holder exited early (code {proc.returncode})"
        assert time.monotonic() < deadline, f"no lock record in {lock} within {timeout_s} s"
        time.sleep(0.05)


# --- the lock ---------------------------------------------------------------------------------------

def test_second_train_into_a_busy_folder_is_refused_and_the_first_finishes_untouched(
        toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "w"
    argv = ["train", "1", "--data", str(toy), "--work-dir", str(work), *TINY_SETS, "--set", "max_iters=2"]
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "gcrepro.cli", *argv], stdout=log, stderr=log)
    try:
        holder = _wait_for_holder(work / LOCK_FILE, first)
        assert holder.pid == first.pid and "gcrepro train 1" in holder.command
        assert _cli(argv) == 2
        line = _one_error_line(capsys)
        assert line == (f"gcrepro train: error: {work} is in use by {holder.describe()}; wait for it or choose "
                        "another --work-dir")
        assert f"PID {first.pid} on host " in line
    finally:
        code = first.wait(timeout=300)
    assert code == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(work))["iteration"] == 2
    iterations = [json.loads(line)["iteration"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2]  # the first run's log alone
    assert (work / "log.txt").read_text().count("train mask_rcnn_r50_fpn_1x (row 1)") == 1
    assert not (work / LOCK_FILE).exists()  # released


_HOLD_AND_SLEEP = "import sys, time\nfrom gcrepro.run_lock import hold_run_dir\nwith hold_run_dir(sys.argv[1]):\n" \
                  "    print('held', flush=True)\n    time.sleep(120)\n"


def test_lock_of_a_killed_holder_is_taken_over_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_AND_SLEEP, str(folder)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(RunDirInUse, match=f"in use by PID {holder.pid} on host "):
            with hold_run_dir(folder):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert Holder.parse((folder / LOCK_FILE).read_text()).pid == holder.pid  # a record without its holder
    with caplog.at_level(logging.WARNING, logger="gcrepro.run_lock"):
        with hold_run_dir(folder) as me:
            assert me.pid == os.getpid()
            assert Holder.parse((folder / LOCK_FILE).read_text()) == me
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(taken) == 1 and f"PID {holder.pid} on host " in taken[0]
    assert not (folder / LOCK_FILE).exists()


_ENTER = "import sys\nfrom gcrepro.run_lock import hold_run_dir\nwith hold_run_dir(sys.argv[1]) as held:\n" \
         "    print('entered', held)\n"


def test_children_enter_their_ancestors_folder_the_holder_cannot_twice(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with hold_run_dir(folder):
        child = subprocess.run([sys.executable, "-c", _ENTER, str(folder)], capture_output=True, text=True)
        assert child.returncode == 0 and child.stdout.strip() == "entered None", child.stderr
        # a grandchild too (the table runner's notebook kernel calling gcrepro.train, a launched worker, ...)
        spawn = f"import subprocess, sys\nsys.exit(subprocess.call([sys.executable, '-c', {_ENTER!r}, sys.argv[1]]))"
        grandchild = subprocess.run([sys.executable, "-c", spawn, str(folder)], capture_output=True, text=True)
        assert grandchild.returncode == 0 and grandchild.stdout.strip() == "entered None", grandchild.stderr
        with pytest.raises(RunDirInUse, match=f"in use by PID {os.getpid()} "):
            with hold_run_dir(folder):
                pass
    assert not folder.exists()  # made by the hold, empty again: removed


def test_orphan_tmp_files_are_removed_by_the_new_holder_only(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    kept = [folder / "checkpoints" / "iter_0000001.pth", folder / "notes.tmp", folder / ".hidden"]
    orphans = [folder / ".metrics.json.k2j4h1x9.tmp", folder / "checkpoints" / ".latest.pth.4321.tmp"]
    with hold_run_dir(folder):
        for path in kept + orphans:  # as if a write of this holder were under way
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        entered = subprocess.run([sys.executable, "-c", _ENTER, str(folder)], capture_output=True, text=True)
        assert entered.stdout.strip() == "entered None", entered.stderr
        assert all(p.exists() for p in orphans)  # a nested process cleans nothing
    with hold_run_dir(folder):  # the next holder: a kill interrupted those writes
        assert not any(p.exists() for p in orphans)
        assert all(p.exists() for p in kept)


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path: Path, monkeypatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import fcntl

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING, logger="gcrepro.run_lock"):
        with hold_run_dir(tmp_path / "run") as held:
            assert held is None
    assert [r.getMessage() for r in caplog.records] == \
        [f"{tmp_path / 'run'}: cannot be locked (No locks available); nothing stops a second process from using it"]
    assert not (tmp_path / "run").exists()


# --- the table runner ---------------------------------------------------------------------------------

_FAKE_PARAMS = {
    "train": 'entry: str = "x"  # entry\nwork_dir: str = ""  # folder\ngpus: int = 0  # gpus\n'
             'resume: str = "no"  # no | yes | auto\nspec: dict = {}  # resolved run\n',
    "evaluate": 'entry: str = "x"  # entry\nwork_dir: str = ""  # folder\ngpus: int = 0  # gpus\n',
    "attention": 'entry: str = "x"  # entry\nwork_dir: str = ""  # folder\ninteractive: bool = True  # widgets\n',
}
# The kernel (a child of the runner) enters the folder the runner holds, as gcrepro.train would.
_FAKE_BODY = ('import pathlib\nfrom gcrepro.run_lock import hold_run_dir\nwith hold_run_dir(work_dir) as held:\n'
              '    assert held is None\n    with open(pathlib.Path(work_dir, "calls.txt"), "a") as f:\n'
              '        f.write(NAME + " " + str(resume if NAME == "train" else "") + "\\n")\n')


def _fake_notebooks(folder: Path) -> Path:
    folder.mkdir()
    for name, params in _FAKE_PARAMS.items():
        cell = new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb = new_notebook(cells=[cell, new_code_cell(f"NAME = {name!r}\n" + _FAKE_BODY)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def test_table_runner_never_touches_a_folder_another_process_holds(toy: Path, tmp_path: Path) -> None:
    from gcrepro.analysis import run_status, table_runner
    from gcrepro.data import describe_data

    notebooks = _fake_notebooks(tmp_path / "notebooks")
    runs = tmp_path / "runs"
    plans = table_runner.plan_table([GOOD, OTHER], runs_dir=runs, notebooks=notebooks, data=describe_data(toy))
    busy = runs / OTHER  # another runner's entry, mid-training
    run_status.write_status(busy, {"entry": OTHER, "state": "running"})
    (busy / "checkpoints").mkdir()
    (busy / "checkpoints" / "latest.pth").write_bytes(b"the other run's weights")
    before = _snapshot(busy)
    out = io.StringIO()
    with hold_run_dir(busy, option="--runs-dir") as other:
        statuses = table_runner.run_table(plans, force=True, notebooks=notebooks, stream=out)  # even with --force
    assert [s["state"] for s in statuses] == ["done", table_runner.IN_USE]
    assert _snapshot(busy) == before  # not cleared, not resumed, status.json untouched
    lines = out.getvalue().splitlines()
    assert lines[1] == (f"[2/2] {OTHER}: skipped: {busy.resolve()} is in use by {other.describe()}; wait for it or "
                        "choose another --runs-dir")
    # the runner's own entry: its kernels entered the folder it held; training continues if it can ("auto")
    assert (runs / GOOD / "calls.txt").read_text().split("\n")[:3] == ["train auto", "evaluate ", "attention "]
    assert not (runs / GOOD / LOCK_FILE).exists()


# --- resume -----------------------------------------------------------------------------------------

def test_resume_modes(toy: Path, finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "new"
    assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(work), "--resume", *TINY_SETS]) == 2
    assert _one_error_line(capsys) == (f"gcrepro train: error: nothing to resume in {work}: no checkpoints; drop "
                                       "--resume to start a new run")
    assert not work.exists()  # nothing made
    with pytest.raises(ConfigError, match=r"^resume='maybe': expected False, True or 'auto'"):
        api.train(1, data=toy, work_dir=work, resume="maybe", overrides=TINY)
    before = _snapshot(finished_run)
    with pytest.raises(FileExistsError, match="already holds checkpoints .* pass --resume"):
        api.train(1, data=toy, work_dir=finished_run, resume="no", overrides=TINY)
    # "auto" (the table runner's) and True continue: the run finished, so they return its last checkpoint
    for mode in ("auto", True):
        final = api.train(1, data=toy, work_dir=finished_run, resume=mode, overrides=TINY)
        assert final == ckpt.checkpoint_dir(finished_run) / ckpt.iter_checkpoint_name(1)
    assert {k: v for k, v in _snapshot(finished_run).items() if k != "log.txt"} == \
        {k: v for k, v in before.items() if k != "log.txt"}


def _bad_checkpoint(kind: str, finished_run: Path) -> bytes:
    good = ckpt.latest_checkpoint(finished_run).read_bytes()
    if kind == "random bytes":
        return torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy() \
            .tobytes()
    if kind == "truncated":
        return good[: len(good) // 2]
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}}, buffer)  # weights only, e.g. a converted checkpoint
    return buffer.getvalue()


@pytest.mark.parametrize("kind, expected", [
    ("random bytes", "not a readable checkpoint"),
    ("truncated", "not a readable checkpoint"),
    ("weights only", "not a gcrepro training checkpoint (no 'optimizer'); it cannot be resumed"),
])
def test_cli_resume_from_a_bad_checkpoint_is_one_line(kind: str, expected: str, toy: Path, finished_run: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "w"
    latest = work / "checkpoints" / "latest.pth"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(_bad_checkpoint(kind, finished_run))
    before = _snapshot(work)
    assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(work), "--resume", *TINY_SETS]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"gcrepro train: error: checkpoint {latest}: ") and expected in line, line
    assert "weights_only" not in line and "Traceback" not in line
    assert _snapshot(work) == before
    if kind == "random bytes":  # gcrepro eval reads checkpoints with the same loader
        assert _cli(["eval", "1", "--data", str(toy), "--work-dir", str(tmp_path / "e"), "--checkpoint",
                     str(latest)]) == 2
        assert f"{latest}: not a readable checkpoint" in _one_error_line(capsys, "eval")
        assert not (tmp_path / "e").exists()


def test_cli_resume_with_another_entrys_checkpoint(toy: Path, finished_run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "w"
    (work / "checkpoints").mkdir(parents=True)
    latest = work / "checkpoints" / "latest.pth"
    latest.write_bytes(ckpt.latest_checkpoint(finished_run).read_bytes())
    before = _snapshot(work)
    assert _cli(["train", "2", "--data", str(toy), "--work-dir", str(work), "--resume", *TINY_SETS]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"gcrepro train: error: --resume: {latest} was trained with other settings "
                           f"(entry/profile: {GOOD}/toy -> {OTHER}/toy")
    assert _snapshot(work) == before


# --- other bad input of gcrepro train / eval ------------------------------------------------------------

def test_cli_gpus_without_the_cuda_devices(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    have = torch.cuda.device_count()
    for gpus in (have + 1, have + 4):  # --gpus 1 / --gpus 4 on a machine without CUDA
        for command in ("train", "eval"):
            argv = [command, "1", "--data", str(toy), "--work-dir", str(tmp_path / "w"), "--gpus", str(gpus)]
            extra = ["--checkpoint", str(tmp_path / "any.pth")] if command == "eval" else TINY_SETS
            assert _cli(argv + extra) == 2
            assert _one_error_line(capsys, command).endswith(
                f"error: --gpus {gpus}: this machine has {have} CUDA device{'' if have == 1 else 's'} "
                "(--gpus 0 runs on the CPU)")
    assert not (tmp_path / "w").exists()


def test_cli_work_dir_that_is_a_file(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(a_file), *TINY_SETS]) == 2
    assert _one_error_line(capsys) == (f"gcrepro train: error: {a_file} is a file; expected a folder (choose "
                                       "another --work-dir)")
    assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(a_file / "w"), *TINY_SETS]) == 2
    assert f"{a_file / 'w'}: cannot create it, {a_file} is a file" in _one_error_line(capsys)
    assert a_file.read_text() == "mine"


def _mount_tmpfs(folder: Path, options: str) -> None:
    """A tmpfs at ``folder`` (root only); skips the test where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for folder in mounted:  # lazily: the run's log handler may still hold log.txt open
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_cli_read_only_work_dir(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture, mounts) -> None:
    folder = tmp_path / "ro"
    if os.geteuid() == 0:  # root ignores permission bits: a read-only file system instead
        _mount_tmpfs(folder, "ro,size=64k")
        mounts.append(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip(f"{folder} stays writable for this user")
    try:
        assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(folder), *TINY_SETS]) == 2
        assert _one_error_line(capsys) == f"gcrepro train: error: {folder} is not writable; choose another --work-dir"
        assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(folder / "w"), *TINY_SETS]) == 2
        assert _one_error_line(capsys).startswith(f"gcrepro train: error: {folder / 'w'} is not writable: cannot "
                                                  "create it (")
    finally:
        if os.geteuid() != 0:
            folder.chmod(0o755)


def test_cli_full_disk_is_one_line_naming_the_folder(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     mounts) -> None:
    small = tmp_path / "small"
    _mount_tmpfs(small, "size=2m")  # room for the log and metrics, not for a 22 MB toy checkpoint
    mounts.append(small)
    work = small / "w"
    assert _cli(["train", "1", "--data", str(toy), "--work-dir", str(work), *TINY_SETS]) == 2
    err = capsys.readouterr().err  # the run's log lines, then the error
    assert err.strip().splitlines()[-1] == (f"gcrepro train: error: no space left on {work} (writing "
                                            "checkpoints/iter_0000001.pth)")
    assert "Traceback" not in err and "unexpected pos" not in err
    assert list((work / "checkpoints").iterdir()) == []  # no partial file, no orphan .tmp
    assert not (work / LOCK_FILE).exists()


def test_unexpected_error_goes_to_the_log_and_debug_raises_it(toy: Path, tmp_path: Path, monkeypatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(api, "_train_here", broken)
    work = tmp_path / "w"
    work.mkdir()
    argv = ["train", "1", "--data", str(toy), "--work-dir", str(work), *TINY_SETS]
    assert _cli(argv) == 1
    assert _one_error_line(capsys) == (f"gcrepro train: error: KeyError: 'boom' (traceback in {work / 'log.txt'}; "
                                       "--debug prints it here)")
    log = (work / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "in broken" in log and "KeyError: 'boom'" in log
    with pytest.raises(KeyError, match="boom"):
        _cli(argv + ["--debug"])


def test_failed_write_names_the_folder_also_inside_torch_errors(tmp_path: Path) -> None:
    from gcrepro.run_dir import RunDirError, as_run_dir_error

    try:  # torch.save on a full disk: RuntimeError("... unexpected pos ...") raised while handling the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
    except RuntimeError as err:
        wrapped = err
    translated = as_run_dir_error(wrapped, tmp_path / "w")
    assert isinstance(translated, RunDirError) and str(translated) == f"no space left on {tmp_path / 'w'}"
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "w" / "metrics.json"))
    assert str(as_run_dir_error(denied, tmp_path / "w")) == \
        f"{tmp_path / 'w'} is not writable (writing metrics.json): Permission denied"
    elsewhere = PermissionError(errno.EACCES, "Permission denied", "/data/coco/annotations/x.json")
    assert as_run_dir_error(elsewhere, tmp_path / "w") is None  # not the run folder's: reported as it is
    assert as_run_dir_error(ValueError("bad"), tmp_path / "w") is None
