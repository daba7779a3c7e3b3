"""NaN guard: a non-finite loss stops the run naming iteration and loss term; the last good
checkpoint stays the newest one, and a non-finite state is never written."""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from gcrepro.engine import checkpoint as ckpt
from gcrepro.engine.epoch_data import EpochBatches
from gcrepro.engine.recipe import WarmupStepSchedule, build_optimizer
from gcrepro.engine.trainer import Checkpointer, MetricsLogger, NonFiniteLossError, Trainer
from gcrepro.runspec import resolve_run


class TwoTermModel(nn.Module):
    """A stand-in detector: two loss terms from the images; ``loss_mask`` is NaN on call ``nan_at``."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -0.3, 0.2]))
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        means = torch.stack([img.mean(dim=(1, 2)) for img in images])  # [N, 3]
        loss_cls = ((means * self.scale).sum(1) - 1).pow(2).mean()
        loss_mask = self.scale.pow(2).sum() * len(targets)
        if self.calls == self.nan_at:
            loss_mask = loss_mask * float("nan")
        return {"loss_classifier": loss_cls, "loss_mask": loss_mask}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    from gcrepro.data import CocoInstances, build_loader, make_toy_dataset

    root = make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", seed=0, num_train=12, num_val=1, image_size=64)
    dataset = CocoInstances(root, "train", train=True)
    return build_loader(dataset, batch_size=2, train=True, num_workers=0, seed=0, distributed=False)


def _trainer(model: nn.Module, loader, work_dir: Path) -> Trainer:
    spec = resolve_run(1, data=loader.dataset.root, overrides={
        "checkpoint_interval": 1, "log_interval": 1, "warmup_iters": 0, "max_iters": 10})
    cfg = spec.train
    optimizer = build_optimizer(model, lr=0.1, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = WarmupStepSchedule(optimizer, base_lr=0.1, warmup_iters=0, warmup_ratio=1 / 3, milestones=(), gamma=0.1)
    return Trainer(
        model=model, optimizer=optimizer, schedule=schedule, data=EpochBatches(loader, seed=0), spec=spec,
        device=torch.device("cpu"), max_iter=10,
        hooks=[MetricsLogger(work_dir / "metrics.jsonl", interval=1), Checkpointer(work_dir, interval=1, keep=0)],
    )


def test_nan_loss_stops_naming_iteration_and_term(tiny_data, tmp_path: Path) -> None:
    model = TwoTermModel(nan_at=4)
    trainer = _trainer(model, tiny_data, tmp_path)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.run()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("iteration 4: loss term loss_mask is nan")
    assert "iter_0000003.pth" in message  # names the last good checkpoint
    folder = ckpt.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.glob("iter_*.pth")) == [f"iter_000000{i}.pth" for i in (1, 2, 3)]
    last_good = ckpt.load_checkpoint(folder / "latest.pth")
    assert last_good["iteration"] == 3
    # the bad iteration changed nothing: the weights in memory are the checkpoint's, and finite
    assert torch.equal(last_good["model"]["scale"], model.scale.detach())
    assert torch.isfinite(model.scale).all()


def test_non_finite_state_is_never_checkpointed(tiny_data, tmp_path: Path) -> None:
    model = TwoTermModel(nan_at=-1)
    trainer = _trainer(model, tiny_data, tmp_path)
    trainer.max_iter = 2
    trainer.run()  # iterations 1-2 are fine and saved
    with torch.no_grad():
        model.scale[1] = math.inf  # e.g. an update that overflowed after a finite loss
    trainer.iteration = 3
    checkpointer = next(h for h in trainer.hooks if isinstance(h, Checkpointer))
    with pytest.raises(NonFiniteLossError, match=r"^iteration 3: parameter scale is not finite"):
        checkpointer.after_step(trainer, record=None)
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["iteration"] == 2


def test_cli_reports_nan_in_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """End to end: an absurd learning rate blows the detector up; the CLI says where, in one line."""
    from gcrepro.data import make_toy_dataset
    from gcrepro.engine import cli

    root = make_toy_dataset(tmp_path / "toy", seed=0, num_train=6, num_val=1, image_size=64)
    parser = argparse.ArgumentParser(prog="gcrepro")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "train", "1", "--data", str(root), "--work-dir", str(tmp_path / "w"), "--set", "base_lr=1e30",
        "--set", "warmup_iters=0", "--set", "max_iters=4", "--set", "checkpoint_interval=1",
        "--set", "min_size=64", "--set", "max_size=64",
    ])
    code = args.func(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    # iteration 1 (finite loss) moves the weights to ~1e29; iteration 2's losses overflow
    found = re.fullmatch(r"gcrepro train: error: iteration (\d+): loss term (loss_\w+) is (nan|inf|-inf) .*", err[-1])
    assert found, err[-1]
    bad_iteration = int(found.group(1))
    latest = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "w"))
    assert latest["iteration"] == bad_iteration - 1  # the last good state is the newest checkpoint
    assert all(torch.isfinite(v).all() for v in latest["model"].values() if v.is_floating_point())
