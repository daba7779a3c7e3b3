"""Kill and resume: a SIGKILLed deterministic CPU run, resumed, ends with the uninterrupted run's weights.

Also: checkpoints appear at their final paths only complete (atomic write), and a failed write
leaves neither a partial file nor a changed ``latest.pth``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gcrepro.engine import api
from gcrepro.engine import checkpoint as ckpt

# A small, fast run over 3 epochs (an epoch boundary and lr steps inside the resumed part).
OVERRIDES = {"min_size": 64, "max_size": 96, "rpn_post_nms_top_n_train": 200, "box_batch_size_per_image": 64}
OPTIONS = {
    "deterministic": True, "num_workers": 1, "checkpoint_interval": 2, "epochs": 3, "lr_steps": (1.5, 2.5),
    "warmup_iters": 4, "log_interval": 1, "seed": 3,
}
KILL_AFTER_CHECKPOINT = 4  # SIGKILL as soon as iter_0000004.pth exists (mid epoch 1 of 0..2)


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gcrepro.data import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", seed=0, num_train=8, num_val=2, image_size=64)


def _train_call(data: Path, work_dir: Path, resume: bool) -> str:
    return (
        "from gcrepro.engine.api import train; "
        f"train(1, data={str(data)!r}, work_dir={str(work_dir)!r}, profile='toy', overrides={OVERRIDES!r}, "
        f"resume={resume!r}, **{OPTIONS!r})"
    )


def _assert_all_checkpoints_complete(work_dir: Path) -> list[Path]:
    """Every file at a final checkpoint path loads (safe loader) and is a full training state."""
    files = sorted(ckpt.checkpoint_dir(work_dir).glob("*.pth"))
    for f in files:
        state = ckpt.load_checkpoint(f)
        assert {"model", "optimizer", "scheduler", "iteration", "rng", "spec"} <= set(state), f
    return files


def test_kill_and_resume_equals_uninterrupted(tiny_toy: Path, tmp_path: Path) -> None:
    full = Path(api.train(1, data=tiny_toy, work_dir=tmp_path / "full", profile="toy", overrides=OVERRIDES, **OPTIONS))
    total = ckpt.load_checkpoint(full)["iteration"]
    assert total > KILL_AFTER_CHECKPOINT + 4, f"run too short ({total} iterations) to kill it mid-run"

    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _train_call(tiny_toy, work, resume=False)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = ckpt.checkpoint_dir(work) / ckpt.iter_checkpoint_name(KILL_AFTER_CHECKPOINT)
    deadline = time.monotonic() + 240
    while not target.exists():
        assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        _assert_all_checkpoints_complete(work)  # never a partial file at a final path, even mid-write
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    files = _assert_all_checkpoints_complete(work)
    done = ckpt.load_checkpoint(ckpt.latest_checkpoint(work))["iteration"]
    assert KILL_AFTER_CHECKPOINT <= done < total, f"killed run reached {done} of {total} iterations"
    assert all(not f.name.endswith(".tmp") for f in files)

    resumed = Path(api.train(1, data=tiny_toy, work_dir=work, profile="toy", overrides=OVERRIDES, resume=True,
                             **OPTIONS))
    a, b = ckpt.load_checkpoint(full), ckpt.load_checkpoint(resumed)
    assert b["iteration"] == a["iteration"] == total
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"{name} differs after kill + resume"
    for key in ("scheduler", "epoch", "iter_in_epoch"):
        assert a[key] == b[key], key
    # the log of the resumed run has each iteration exactly once, like the uninterrupted one
    iters = [json.loads(line)["iteration"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert iters == list(range(1, total + 1))


def test_failed_write_leaves_no_partial_file_and_keeps_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"model": {"w": torch.ones(3)}, "iteration": 2}
    ckpt.save_checkpoint(tmp_path, good, iteration=2)

    def torch_save_dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torch_save_dies_midway)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, {"model": {"w": torch.zeros(3)}, "iteration": 4}, iteration=4)
    folder = ckpt.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["iter_0000002.pth", "latest.pth"]
    assert torch.equal(ckpt.load_checkpoint(folder / "latest.pth")["model"]["w"], torch.ones(3))


def test_checkpoint_round_trip_with_safe_loader(tmp_path: Path) -> None:
    """RNG states and a run spec survive torch.load(weights_only=True) and restore the streams."""
    import random

    import numpy as np

    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    state = {"rng": [ckpt.capture_rng_state()], "spec": {"train": {"lr_steps": [8, 11], "amp": "none"}, "x": None}}
    expected = (torch.rand(3), random.random(), np.random.rand())
    path = ckpt.save_checkpoint(tmp_path, state, iteration=7)
    loaded = ckpt.load_checkpoint(path)  # weights_only=True inside
    ckpt.restore_rng_state(loaded["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert loaded["spec"] == state["spec"]
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path) / "latest.pth"
