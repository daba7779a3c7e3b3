"""Every class of bad input the command line meets, in one table (issue 12): each case runs the real
``gcrepro`` command in this process and must end with exit code 2 and ONE line on stderr that names
the culprit (file, key or value), before anything is trained or written; a bystander run folder next
to them must come out byte for byte unchanged.

Cases that need a root-only setup (a read-only or full file system) live in tests/test_run_ownership.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

TINY = ["--set", "max_iters=1", "--set", "min_size=64", "--set", "max_size=96", "--set", "num_workers=0"]


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[["World"], list[str]]  # the command line, given the world's paths
    names: Callable[["World"], list[str]]  # what the one line must contain
    setup: Callable[["World"], None] = lambda w: None


@dataclass(frozen=True)
class World:
    root: Path  # a scratch folder for this case
    toy: Path  # a good tiny toy dataset
    checkpoint: Path  # a good row-1 gcrepro checkpoint (toy data)
    bystander: Path  # another run's folder: must not change

    def p(self, name: str) -> str:
        return str(self.root / name)


def _copy_toy(w: World, name: str) -> Path:
    out = w.root / name
    shutil.copytree(w.toy, out)
    return out


def _break_image(w: World, how: str) -> None:
    data = _copy_toy(w, "broken")
    image = sorted((data / "train2017").glob("*.png"))[1]
    if how == "missing":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 3])


def _empty_split(w: World, split: str) -> None:
    data = _copy_toy(w, "empty")
    path = data / "annotations" / f"instances_{split}2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"] = []
    if split == "val":
        doc["images"] = []
    path.write_text(json.dumps(doc))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# the same 4096 "random" bytes on every run (os.urandom made one run in ~120 hit a MemoryError that others never saw)
_NOISE = bytes(np.random.default_rng(2026).integers(0, 256, 4096, dtype=np.uint8))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


CASES = [
    # --- what to run ---
    Case("unknown entry", lambda w: ["train", "mask_rcnn_r51_fpn_1x", "--work-dir", w.p("r")],
         lambda w: ["mask_rcnn_r51_fpn_1x"]),
    Case("unknown --set key", lambda w: ["train", "1", "--work-dir", w.p("r"), "--set", "warmup_iterz=3"],
         lambda w: ["warmup_iterz", "allowed keys"]),
    Case("--set value of the wrong type", lambda w: ["train", "1", "--work-dir", w.p("r"), "--set", "max_iters=ten"],
         lambda w: ["max_iters=ten", "an int"]),
    Case("--set base_lr=inf", lambda w: ["train", "1", "--work-dir", w.p("r"), "--set", "base_lr=inf"],
         lambda w: ["base_lr=inf", "finite"]),
    Case("--set lr_steps decreasing", lambda w: ["train", "1", "--work-dir", w.p("r"), "--set", "lr_steps=11,8"],
         lambda w: ["lr_steps", "increasing"]),
    Case("--set num_classes", lambda w: ["train", "1", "--work-dir", w.p("r"), "--set", "num_classes=3"],
         lambda w: ["num_classes", "dataset"]),
    Case("--set conventions unknown", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir", w.p("r"),
                                                 "--set", "conventions=detectron"],
         lambda w: ["conventions", "paper"]),
    # --- the data ---
    Case("data folder missing", lambda w: ["train", "1", "--data", w.p("nowhere"), "--work-dir", w.p("r")],
         lambda w: [w.p("nowhere")]),
    Case("data folder without annotations", lambda w: ["train", "1", "--data", w.p("plain"), "--work-dir", w.p("r")],
         lambda w: ["instances_train2017.json"], setup=lambda w: (w.root / "plain").mkdir()),
    Case("missing image", lambda w: ["train", "1", "--data", w.p("broken"), "--work-dir", w.p("r"), *TINY],
         lambda w: ["train2017", "image id", "missing"], setup=lambda w: _break_image(w, "missing")),
    Case("truncated image", lambda w: ["train", "1", "--data", w.p("broken"), "--work-dir", w.p("r"), *TINY],
         lambda w: ["train2017", "image id", "1 of"], setup=lambda w: _break_image(w, "truncated")),
    Case("empty train split", lambda w: ["train", "1", "--data", w.p("empty"), "--work-dir", w.p("r"), *TINY],
         lambda w: ["instances_train2017.json", "no training image"], setup=lambda w: _empty_split(w, "train")),
    Case("empty val split", lambda w: ["eval", "1", "--checkpoint", str(w.checkpoint), "--data", w.p("empty"),
                                       "--work-dir", w.p("r")],
         lambda w: ["instances_val2017.json", "nothing to evaluate"], setup=lambda w: _empty_split(w, "val")),
    Case("data check: missing image", lambda w: ["data", "check", w.p("broken")],
         lambda w: ["train2017", "image id"], setup=lambda w: _break_image(w, "missing")),
    # --- checkpoints ---
    Case("checkpoint missing", lambda w: ["eval", "1", "--checkpoint", w.p("none.pth"), "--work-dir", w.p("r")],
         lambda w: [w.p("none.pth")]),
    Case("checkpoint of random bytes", lambda w: ["eval", "1", "--checkpoint", w.p("noise.pth"), "--work-dir", w.p("r")],
         lambda w: ["noise.pth"], setup=lambda w: _write(w.root / "noise.pth", _NOISE)),
    Case("checkpoint with a length field of 2**61", lambda w: ["eval", "1", "--checkpoint", w.p("huge.pth"),
                                                                 "--work-dir", w.p("r")],
         lambda w: ["huge.pth"], setup=lambda w: _write(w.root / "huge.pth", b"\x80\x04\x8d" + (2**61).to_bytes(8, "little"))),
    Case("truncated checkpoint", lambda w: ["eval", "1", "--checkpoint", w.p("cut.pth"), "--work-dir", w.p("r")],
         lambda w: ["cut.pth"], setup=lambda w: _write(w.root / "cut.pth", w.checkpoint.read_bytes()[:50_000])),
    Case("a pickle that would run code", lambda w: ["eval", "1", "--checkpoint", w.p("evil.pth"), "--work-dir", w.p("r")],
         lambda w: ["evil.pth", "system"], setup=lambda w: _write(w.root / "evil.pth", pickle.dumps(_RunsCode()))),
    Case("checkpoint of another entry", lambda w: ["eval", "2", "--checkpoint", str(w.checkpoint), "--work-dir", w.p("r")],
         lambda w: ["mask_rcnn_r50_fpn_1x", "mask_rcnn_r50_fpn_gc_r16_1x"]),
    Case("convert: random bytes", lambda w: ["convert", w.p("noise.pth"), "--out", w.p("out.pth")],
         lambda w: ["noise.pth"], setup=lambda w: _write(w.root / "noise.pth", _NOISE)),
    Case("convert: another architecture than --entry", lambda w: ["convert", str(w.checkpoint), "--out", w.p("o.pth"),
                                                                  "--entry", "24"],
         lambda w: ["layer3", "X101"]),
    # --- the run folder ---
    Case("work dir is a file", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir", w.p("afile"), *TINY],
         lambda w: [w.p("afile"), "is a file"], setup=lambda w: _write(w.root / "afile", b"x")),
    Case("--resume with nothing to resume", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir", w.p("r"),
                                                       "--resume", *TINY],
         lambda w: ["nothing to resume", w.p("r")]),
    Case("a finished run without --resume", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir", str(w.checkpoint.parent.parent), *TINY],
         lambda w: ["already holds checkpoints", "--resume"]),
    Case("--resume with other settings", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir",
                                                    str(w.checkpoint.parent.parent), "--resume", *TINY,
                                                    "--set", "base_lr=0.05"],
         lambda w: ["other settings", "base_lr"]),
    Case("--gpus 1 without CUDA", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir", w.p("r"), "--gpus", "1"],
         lambda w: ["--gpus 1", "CUDA"]),
    Case("--gpus 4 without CUDA", lambda w: ["train", "1", "--data", str(w.toy), "--work-dir", w.p("r"), "--gpus", "4"],
         lambda w: ["--gpus 4", "CUDA"]),
    # --- the table ---
    Case("table run: unknown parameter", lambda w: ["table", "run", "--rows", "1", "--runs-dir", w.p("runs"),
                                                    "--data", str(w.toy), "--set", "nonsense=1"],
         lambda w: ["nonsense"]),
    Case("table run: out-of-range parameter", lambda w: ["table", "run", "--rows", "1", "--runs-dir", w.p("runs"),
                                                         "--data", str(w.toy), "--set", "num_images=0"],
         lambda w: ["num_images"]),
    Case("table run: unknown training override", lambda w: ["table", "run", "--rows", "1", "--runs-dir", w.p("runs"),
                                                            "--data", str(w.toy), "--set", "overrides.max_iterz=5"],
         lambda w: ["max_iterz"]),
    Case("table run: row out of range", lambda w: ["table", "run", "--rows", "1-31", "--runs-dir", w.p("runs")],
         lambda w: ["1-31"]),
    Case("table run: --checkpoints not a folder", lambda w: ["table", "run", "--rows", "8", "--runs-dir", w.p("runs"),
                                                             "--data", str(w.toy), "--checkpoints", w.p("nodir")],
         lambda w: [w.p("nodir")]),
    Case("table report: runs folder missing", lambda w: ["table", "report", "--runs-dir", w.p("noruns")],
         lambda w: [w.p("noruns")]),
]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world_parts(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny toy set, one trained row-1 checkpoint (1 iteration), and a bystander run folder."""
    import gcrepro
    from gcrepro.data import make_toy_dataset

    base = tmp_path_factory.mktemp("bad_input")
    toy = make_toy_dataset(base / "toy", seed=4, num_train=4, num_val=2, image_size=64)
    final = gcrepro.train(1, data=toy, work_dir=base / "trained", overrides={
        "max_iters": 1, "min_size": 64, "max_size": 96, "num_workers": 0})
    bystander = base / "bystander"
    shutil.copytree(base / "trained", bystander)
    return toy, Path(final), bystander


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, world_parts, tmp_path: Path, capsys) -> None:
    from gcrepro.cli import main

    toy, checkpoint, bystander = world_parts
    world = World(root=tmp_path, toy=toy, checkpoint=checkpoint, bystander=bystander)
    case.setup(world)
    before = {"bystander": _digest(bystander), "trained": _digest(checkpoint.parent.parent), "toy": _digest(toy)}
    capsys.readouterr()
    try:
        code = main(case.argv(world))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{case.name}: exit code {code}; stderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"{case.name}: {len(lines)} lines on stderr:\n{err}"
    for name in case.names(world):
        assert name in lines[0], f"{case.name}: {name!r} not named in: {lines[0]}"
    assert "weights_only=False" not in err
    after = {"bystander": _digest(bystander), "trained": _digest(checkpoint.parent.parent), "toy": _digest(toy)}
    assert after == before, f"{case.name}: another run's files changed"
    assert not (tmp_path / "r" / "checkpoints").exists(), f"{case.name}: something was trained"


def test_the_good_checkpoint_of_the_table_is_good(world_parts, tmp_path: Path) -> None:
    """The cases above fail because of what each breaks, not because the shared pieces are bad."""
    import gcrepro

    toy, checkpoint, _ = world_parts
    assert gcrepro.evaluate(1, checkpoint=checkpoint, data=toy, work_dir=tmp_path / "ok").evaluated
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 1
