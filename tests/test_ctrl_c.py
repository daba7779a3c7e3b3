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
def _default_sigint(monkeypatch):
    monkeypatch.setattr(ctrl_c, "_state", ctrl_c._State())  # no Ctrl-C remembered from an earlier test
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


# --- the training loop itself, as a notebook kernel runs it: no CLI around it, Python's default SIGINT handler ---

def _kernel_like_trainer(tmp_path, extra_hooks=()):
    from gcrepro.data import CocoInstances, build_loader, make_toy_dataset
    from gcrepro.engine.epoch_data import EpochBatches
    from gcrepro.engine.recipe import WarmupStepSchedule, build_optimizer
    from gcrepro.engine.trainer import Checkpointer, ProgressHook, Trainer
    from gcrepro.runspec import resolve_run
    from test_engine_nan import TwoTermModel  # a stand-in detector with two loss terms

    root = make_toy_dataset(tmp_path / "toy", seed=0, num_train=8, num_val=1, image_size=64)
    loader = build_loader(CocoInstances(root, "train", train=True), batch_size=2, train=True, num_workers=0, seed=0,
                          distributed=False)
    spec = resolve_run(1, data=root, overrides={"checkpoint_interval": 1, "warmup_iters": 0, "max_iters": 6})
    model = TwoTermModel(nan_at=0)  # never NaN
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    schedule = WarmupStepSchedule(optimizer, base_lr=0.1, warmup_iters=0, warmup_ratio=1 / 3, milestones=(), gamma=0.1)
    work = tmp_path / "run"
    hooks = [ProgressHook(entry="tiny", work_dir=work, every=1, mode="none"), Checkpointer(work, interval=1, keep=0),
             *extra_hooks]
    return Trainer(model=model, optimizer=optimizer, schedule=schedule, data=EpochBatches(loader, seed=0), spec=spec,
                   device=torch.device("cpu"), max_iter=6, hooks=hooks), work


def test_ctrl_c_during_a_checkpoint_write_in_a_kernel_keeps_the_checkpoint_whole(tmp_path, monkeypatch) -> None:
    """The CI failure of 19368fc: a kernel's training stopped inside ``torch.save`` turned the KeyboardInterrupt into
    "unexpected pos" (progress "failed", the checkpoint lost). The trainer defers it past the write itself."""
    from gcrepro.engine import checkpoint as ckpt
    from gcrepro.progress import read_progress

    real_save = ckpt.atomic_torch_save

    def save_with_ctrl_c(obj, path):
        if "0000003" in str(path):
            os.kill(os.getpid(), signal.SIGINT)  # arrives as the third checkpoint is being written
            time.sleep(0.2)
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "atomic_torch_save", save_with_ctrl_c)
    trainer, work = _kernel_like_trainer(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert trainer.iteration == 3
    assert ckpt.load_checkpoint(work / "checkpoints" / "iter_0000003.pth")["iteration"] == 3  # written whole
    assert ckpt.load_checkpoint(work / "checkpoints" / "latest.pth")["iteration"] == 3
    assert read_progress(work)["state"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the kernel's handler is back


def test_an_error_after_ctrl_c_in_a_kernel_leaves_the_run_interrupted(tmp_path) -> None:
    """A loader worker that died of the same Ctrl-C makes the loop raise something else: still "interrupted"."""
    from gcrepro.engine.trainer import Hook
    from gcrepro.progress import read_progress

    class WorkerDiesOfCtrlC(Hook):
        def after_step(self, trainer, record) -> None:
            if trainer.iteration == 2:
                _sigint_then(RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly"))()

    trainer, work = _kernel_like_trainer(tmp_path, [WorkerDiesOfCtrlC()])
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        trainer.run()
    assert read_progress(work)["state"] == "interrupted"
    assert ctrl_c.caused(None)
