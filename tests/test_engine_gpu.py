"""GPU smoke tests of the engine (skip without CUDA): train + evaluate on one GPU, and 2 GPUs via NCCL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gcrepro.engine import api
from gcrepro.run_metrics import read_metrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
OPTIONS = {"max_iters": 4, "log_interval": 2, "channels_last": True}


def test_one_gpu_train_and_evaluate(tmp_path: Path) -> None:
    checkpoint = api.train(1, work_dir=tmp_path, gpus=1, **OPTIONS)
    metrics = api.evaluate(1, checkpoint=checkpoint, work_dir=tmp_path, gpus=1)
    assert metrics.mem_kind == "cuda_max_allocated" and metrics.mem_gb > 0
    assert metrics.hardware["device"] == "cuda" and "gpu" in metrics.hardware
    assert metrics.inf_fps > 0 and metrics.evaluated and metrics.label == "toy"
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_nccl(tmp_path: Path) -> None:
    checkpoint = api.train(2, work_dir=tmp_path, gpus=2, **OPTIONS)  # GC r16 row: SyncBN-free, 2 workers
    metrics = read_metrics(tmp_path)
    assert Path(checkpoint).is_file()
    assert metrics.train["world_size"] == 2 and metrics.train["total_batch"] == 4
