"""Seeds as an axis of a table run: the ``--seeds`` list and the ``seed<k>`` run folders.

``gcrepro table run --seeds 0,1,2`` (or ``0-2``, or ``0-2,5``) runs every entry once per seed, in
``RUNS/<entry>/seed<k>/`` (``RUNS/<table>/<entry>/seed<k>/`` in a table folder); the seed reaches the
run as its run option ``seed`` (TrainConfig.seed). Without ``--seeds`` an entry runs once, in
``RUNS/<entry>/``, with the seed of its options (``overrides.seed``, else 0).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PREFIX = "seed"
_FOLDER = re.compile(rf"{PREFIX}(0|[1-9][0-9]*)")
_ITEM = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")
MAX_SEEDS = 100  # a seed list longer than this is a typo (0-1000), not an experiment


class SeedError(ValueError):
    """A bad seed list or seed value (one line naming the value)."""


def folder_name(seed: int) -> str:
    """``seed<k>``: the run folder of seed ``k`` inside an entry's folder."""
    return f"{PREFIX}{seed}"


def seed_of(folder: str | Path) -> int | None:
    """The seed of a ``seed<k>`` folder (by name), else None."""
    match = _FOLDER.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else None


def parse_seeds(text: str, *, option: str = "--seeds") -> list[int]:
    """``"0,1,2"``, ``"0-2"`` or ``"0-2,5"`` -> ``[0, 1, 2(, 5)]``, in the order given. SeedError, naming the
    value, for an empty list, a negative number, a non-integer, a descending range or a seed listed twice."""
    if not str(text).strip():
        raise SeedError(f"{option} {text!r}: expected seeds such as 0,1,2 or 0-2")
    seeds: list[int] = []
    for item in str(text).split(","):
        item = item.strip()
        match = _ITEM.fullmatch(item)
        if match is None:
            what = "a negative seed" if re.fullmatch(r"-\s*\d+(\.\d*)?", item) else "not a seed"
            raise SeedError(f"{option} {text}: {item!r} is {what}; expected integers >= 0 (0,1,2) or ranges (0-2)")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise SeedError(f"{option} {text}: range {item!r} runs backwards; write {high}-{low}")
        for seed in range(low, high + 1):
            if seed in seeds:
                raise SeedError(f"{option} {text}: seed {seed} is listed twice")
            seeds.append(seed)
            if len(seeds) > MAX_SEEDS:
                raise SeedError(f"{option} {text}: more than {MAX_SEEDS} seeds")
    return seeds


def seeds_text(seeds: list[int]) -> str:
    return ",".join(str(s) for s in seeds)


def with_seed(overrides: dict[str, Any], seed: int, *, where: str) -> dict[str, Any]:
    """``overrides`` with the run option ``seed`` set; SeedError when ``overrides`` already sets one (naming both)."""
    if seed < 0:
        raise SeedError(f"{where}: seed {seed} is negative; expected an integer >= 0")
    if "seed" in overrides:
        raise SeedError(f"{where}: seed {seed} and overrides.seed={overrides['seed']} both set the seed; choose one")
    return {**overrides, "seed": seed}
