"""The launcher: torchrun-style environment per worker, library targets only, failures named."""
from __future__ import annotations

import pytest

from gcrepro.engine.launch import LaunchError, check_target, launch


@pytest.mark.parametrize("target", ["__main__:train", "os:system", "gcrepro.engine.api.train", "numpy:zeros"])
def test_only_library_functions_run_in_workers(target: str) -> None:
    with pytest.raises(ValueError, match="library code only"):
        check_target(target)


def test_workers_get_torchrun_environment_and_rank0_result_comes_back() -> None:
    assert launch(2, target="gcrepro.engine.dist:env_world_size") == 2


def test_a_failing_worker_raises_naming_rank_and_error(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(LaunchError, match=r"^worker rank \d of 2 exited with code 1: FileNotFoundError: checkpoint .*nope.pth"):
        launch(2, target="gcrepro.engine.checkpoint:load_checkpoint", kwargs={"path": missing})
