"""gcrepro.ctrl_c: an error that a Ctrl-C caused still ends as "interrupted" (exit 130), and nothing changes outside
the watch or without a Ctrl-C."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from gcrepro import ctrl_c
from gcrepro.cli import run_command


@pytest.fixture(autouse=True)
def _default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal starts Python
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_then(error: Exception):
    def body() -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            raise error from None  # what a loader whose worker died of the same Ctrl-C raises instead
        return 0
    return body


def test_an_error_after_ctrl_c_is_reported_as_interrupted(tmp_path, capsys) -> None:
    code = run_command("gcrepro train", _sigint_then(RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly")),
                       debug=False, folder=tmp_path)
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "gcrepro train: interrupted"
    assert "exited unexpectedly" in (tmp_path / "log.txt").read_text()  # the secondary error is kept for a reader
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_the_same_error_without_ctrl_c_is_a_failure(tmp_path, capsys) -> None:
    def body() -> int:
        raise RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly")

    assert run_command("gcrepro train", body, debug=False, folder=tmp_path) == 1
    assert "RuntimeError: DataLoader worker" in capsys.readouterr().err
    assert not ctrl_c.received()


def test_a_handler_installed_by_someone_else_is_left_alone() -> None:
    def mine(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, mine)
    with ctrl_c.watch():
        assert signal.getsignal(signal.SIGINT) is mine
    assert signal.getsignal(signal.SIGINT) is mine


def test_ctrl_c_while_a_checkpoint_is_written_waits_for_the_write(tmp_path) -> None:
    from gcrepro.engine.checkpoint import load_checkpoint, save_checkpoint

    state = {"iteration": 4, "weights": {"w": torch.arange(1000.0)}}
    with ctrl_c.watch():
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c.deferred():
                os.kill(os.getpid(), signal.SIGINT)  # arrives inside the block: nothing raised yet
                time.sleep(0.2)
                path = save_checkpoint(tmp_path, state, iteration=4)
    assert ctrl_c.received()
    assert torch.equal(load_checkpoint(path)["weights"]["w"], state["weights"]["w"])
    assert (tmp_path / "checkpoints" / "latest.pth").is_file()
