"""Test-session settings shared by every test file."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_check_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The image-check cache (gcrepro.data.check_cache) goes to a folder of this session, not ~/.cache:
    tests leave nothing behind and never skip a check because an earlier session passed it. Set in
    os.environ so the notebook kernels and worker processes the tests start see it too."""
    before = os.environ.get("GCREPRO_CACHE")
    os.environ["GCREPRO_CACHE"] = str(tmp_path_factory.mktemp("gcrepro_cache"))
    yield
    if before is None:
        os.environ.pop("GCREPRO_CACHE", None)
    else:
        os.environ["GCREPRO_CACHE"] = before
