"""The recipe's schedule values, lr scaling, and one-line CLI errors (RunSpec resolution: test_runspec.py)."""
from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch

from gcrepro.engine.recipe import WarmupStepSchedule, build_optimizer, clip_grad_norm, milestone_iters, scale_lr


def test_schedule_warmup_from_one_third_and_steps() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD(params, lr=1.0)
    milestones = milestone_iters((8, 11), iters_per_epoch=100)
    assert milestones == (800, 1100)
    s = WarmupStepSchedule(opt, base_lr=0.02, warmup_iters=500, warmup_ratio=1 / 3, milestones=milestones, gamma=0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 / 3)  # first iteration: 1/3 of the lr
    assert s.lr_at(250) == pytest.approx(0.02 * (1 - 0.5 * (2 / 3)))  # halfway: linear
    assert s.lr_at(500) == pytest.approx(0.02)
    assert s.lr_at(799) == pytest.approx(0.02) and s.lr_at(800) == pytest.approx(0.002)
    assert s.lr_at(1100) == pytest.approx(0.0002)
    for _ in range(3):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(3))
    s2 = WarmupStepSchedule(opt, base_lr=0.02, warmup_iters=500, warmup_ratio=1 / 3, milestones=milestones, gamma=0.1)
    s2.load_state_dict(s.state_dict())
    assert s2.iteration == 3


def test_lr_scaling_and_optimizer() -> None:
    # SPEC §4: lr = 0.02 * total_batch / 16
    assert scale_lr(base_lr=0.02, base_batch_size=16, total_batch=16) == 0.02
    assert scale_lr(base_lr=0.02, base_batch_size=16, total_batch=4) == pytest.approx(0.005)
    assert scale_lr(base_lr=0.02, base_batch_size=16, total_batch=64) == pytest.approx(0.08)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    group = opt.param_groups[0]
    assert (group["momentum"], group["weight_decay"], len(group["params"])) == (0.9, 1e-4, 3)


def test_fused_sgd_makes_the_for_loop_sgds_update() -> None:
    """build_optimizer uses torch's fused SGD on the CPU; its steps (momentum, weight decay, a changing lr) stay
    with those of torch's for-loop SGD, the oracle, to float32 rounding relative to each parameter's scale."""
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 4, 1))
    loop_model, start = copy.deepcopy(fused_model), copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, lr=0.02, momentum=0.9, weight_decay=1e-4)
    loop = torch.optim.SGD(loop_model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4, foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for step in range(6):
        x = torch.randn(2, 3, 9, 9)
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            for group in opt.param_groups:
                group["lr"] = 0.02 * (step + 1) / 6  # a warmup, as the schedule sets it
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for (name, a), b, a0 in zip(fused_model.named_parameters(), loop_model.parameters(), start.parameters()):
        a, b, a0 = a.detach(), b.detach(), a0.detach()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()), msg=name)
        assert float((b - a0).abs().max()) > 1e3 * 1e-6 * float(b.abs().max()), name  # the steps moved it, far more
    moments = [fused.state[p]["momentum_buffer"] for p in fused_model.parameters()]
    assert all(m is not None and float(m.abs().max()) > 0 for m in moments)  # the same state keys as the loop's


def _cli(argv: list[str]) -> int:
    from gcrepro.engine import cli

    parser = argparse.ArgumentParser(prog="gcrepro")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_bad_set_is_one_line_and_exit_2(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = _cli(["train", "1", "--work-dir", str(tmp_path / "w"), "--set", "warmup_iterz=10"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("gcrepro train: error: --set warmup_iterz: unknown key; allowed keys:")
    assert "warmup_iters" in err
    assert not (tmp_path / "w").exists()  # failed before anything was made


def test_cli_unknown_entry_is_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = _cli(["train", "mask_rcnn_r51_fpn_1x", "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "mask_rcnn_r51_fpn_1x" in err


@pytest.mark.parametrize("scale,what", [(1.0, "under max_norm"), (1e3, "clipped"), (float("inf"), "inf")])
def test_clip_grad_norm_gives_torchs_numbers(scale: float, what: str) -> None:
    """The trainer's clip (SPEC §4: max_norm 35, L2) against torch.nn.utils.clip_grad_norm_, the oracle: the same
    norm and the same gradients after it, bit for bit (the same per-tensor norm kernels, the same coefficient)."""
    torch.manual_seed(0)
    shapes = [(64, 3, 3, 3), (64,), (256, 64), (1,), (5, 7, 2, 2)]
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    theirs = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape) * 0.3 * scale
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.zeros(3)))  # a parameter without a gradient (unused this step)
    norm = clip_grad_norm(ours, max_norm=35.0)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm=35.0, norm_type=2.0)
    assert norm == float(want) or (math.isnan(norm) and math.isnan(float(want))), what
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad) or (torch.isnan(a.grad).all() and torch.isnan(b.grad).all()), what
    if what == "clipped":
        assert float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in theirs]))) < 35.01
