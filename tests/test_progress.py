"""Progress (issue 14 item 1), the engine's side: modes and their one-line error, lines from a real tiny training
and evaluation on a non-TTY, progress.json. The runner's side: tests/test_progress_runner.py."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from gcrepro import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_modes_resolve_for_where_output_goes(monkeypatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert progress.resolve_mode(None, stream=io.StringIO()) == "lines"  # a pipe or a log file
    assert progress.resolve_mode(None, stream=_Tty()) == "bar"
    assert progress.resolve_mode("lines", stream=_Tty()) == "lines"
    monkeypatch.setenv(progress.ENV, "none")
    assert progress.resolve_mode(None, stream=_Tty()) == "none"
    assert progress.resolve_mode("bar", stream=io.StringIO()) == "bar"  # the option wins over the variable
    monkeypatch.delenv(progress.ENV)
    monkeypatch.setenv("TERM", "dumb")  # no cursor movement: lines, not a bar redrawn in place
    assert progress.resolve_mode("auto", stream=_Tty()) == "lines"
    assert progress.plain_text()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    assert progress.plain_text()


def test_format_and_describe() -> None:
    assert [progress.format_eta(s) for s in (None, 0.4, 59, 151, 3725)] == ["?", "0s", "59s", "2m31s", "1h02m"]
    state = {"stage": "train", "done": 20, "total": 300, "unit": "it", "loss": 1.2345, "s_per_step": 0.52,
             "eta_s": 151.0, "state": "running"}
    assert progress.describe(state) == "train 20/300 loss 1.234 0.52 s/it ETA 2m31s"
    assert progress.describe({**state, "state": "interrupted"}) == "train 20/300 loss 1.234 0.52 s/it interrupted"


def one_line_exit_2(argv: list[str], capsys) -> str:
    """Run the command line in this process; it must end with exit code 2 and one line on stderr: that line."""
    from gcrepro.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_unknown_mode_is_one_line_and_exit_2(command: str, tmp_path: Path, capsys) -> None:
    line = one_line_exit_2([command, "1", "--work-dir", str(tmp_path / "r"), "--progress", "fancy"], capsys)
    assert line.startswith(f"gcrepro {command}: error: --progress 'fancy'") and "auto|bar|lines|none" in line
    assert not (tmp_path / "r").exists()  # nothing ran


def test_lines_from_a_tiny_training_and_evaluation(tmp_path: Path, capsys, monkeypatch) -> None:
    """A non-TTY (pytest's captured stderr) in auto mode: one line every log_interval steps and at the end, with
    entry, stage, done/total, loss, s/step and ETA; no carriage returns or escape codes; progress.json says done."""
    import gcrepro
    from gcrepro.data import make_toy_dataset

    monkeypatch.delenv(progress.ENV, raising=False)
    data = make_toy_dataset(tmp_path / "toy", num_train=4, num_val=2, image_size=64)
    work = tmp_path / "run"
    final = gcrepro.train(2, data=data, work_dir=work, overrides={
        "max_iters": 3, "min_size": 64, "max_size": 96, "num_workers": 0, "log_interval": 2})
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "gcrepro.progress" in line]
    entry = "mask_rcnn_r50_fpn_gc_r16_1x"
    assert len(lines) == 2, err  # iteration 2 (every 2) and 3 (the end)
    assert re.search(rf"{entry} train 2/3 loss \d+\.\d{{3}} \d+\.\d\d s/it ETA \d+s$", lines[0]), lines[0]
    assert re.search(rf"{entry} train 3/3 loss \d+\.\d{{3}} .* ETA 0s$", lines[1]), lines[1]
    assert "\r" not in err and "\x1b[" not in err
    state = json.loads((work / progress.PROGRESS_FILE).read_text())
    assert (state["stage"], state["done"], state["total"], state["state"]) == ("train", 3, 3, "done")

    gcrepro.evaluate(2, checkpoint=final, work_dir=work)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "gcrepro.progress" in line]
    assert len(lines) == 1 and re.search(rf"{entry} evaluate 2/2 \d+\.\d\d s/img ETA 0s$", lines[0]), err
    state = progress.read_progress(work)
    assert (state["stage"], state["done"], state["unit"], state["state"]) == ("evaluate", 2, "img", "done")
