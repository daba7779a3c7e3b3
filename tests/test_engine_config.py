"""TrainConfig / --set parsing, the recipe's schedule values, and one-line CLI errors."""
from __future__ import annotations

import argparse
import logging

import pytest
import torch

from gcrepro.engine.config import ConfigError, TrainConfig, make_config, parse_overrides, settable_keys
from gcrepro.engine.recipe import WarmupStepSchedule, build_optimizer, milestone_iters, scale_lr


def test_set_parses_to_field_types() -> None:
    train, model = parse_overrides([
        "max_iters=7", "base_lr=0.01", "deterministic=true", "amp=bf16", "lr_steps=16,22",
        "pretrained_backbone=none", "box_batch_size_per_image=64", "stage_with_gcb=false,true,true,true",
        "gc_ratio=0.25", "model.rpn_nms_thresh=0.6",
    ])
    assert train == {"max_iters": 7, "base_lr": 0.01, "deterministic": True, "amp": "bf16",
                     "lr_steps": (16.0, 22.0), "pretrained_backbone": None}
    assert model == {"box_batch_size_per_image": 64, "stage_with_gcb": (False, True, True, True), "gc_ratio": 0.25,
                     "rpn_nms_thresh": 0.6}


@pytest.mark.parametrize("item, names", [
    ("no_such_key=1", ["no_such_key", "unknown key", "max_iters", "box_batch_size_per_image"]),
    ("max_iters=ten", ["max_iters=ten", "an int"]),
    ("max_iters=-1", ["max_iters=-1", ">= 0"]),
    ("amp=fp8", ["amp=fp8", "none|bf16|fp16"]),
    ("deterministic=maybe", ["deterministic", "true|false"]),
    ("lr_steps=11,8", ["lr_steps", "increasing"]),
    ("stage_with_gcb=true,true", ["stage_with_gcb", "4 comma-separated"]),
    ("box_fg_iou_thresh=high", ["box_fg_iou_thresh", "a float"]),
    ("max_iters", ["max_iters", "key=value"]),
    ("num_classes=3", ["num_classes", "unknown key"]),  # from the dataset, never set by hand
])
def test_bad_set_fails_with_one_line_naming_key_and_allowed(item: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_overrides([item])
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_toy_profile_records_what_differs_from_paper() -> None:
    from gcrepro.engine.config import TOY_MODEL, TOY_PROFILE, differences_from_paper

    paper = make_config(entry="e", epochs=12, lr_steps=(8, 11), profile="paper", data="d", data_kind="coco")
    assert paper == TrainConfig(entry="e", profile="paper", data="d", data_kind="coco")
    assert (paper.base_lr, paper.momentum, paper.weight_decay, paper.warmup_iters, paper.grad_clip_norm) == (
        0.02, 0.9, 1e-4, 500, 35.0)
    assert differences_from_paper(paper, epochs=12, lr_steps=(8, 11)) == {}
    toy = make_config(entry="e", epochs=24, lr_steps=(16, 22), profile="toy", data="d", data_kind="toy",
                      overrides=["box_batch_size_per_image=32"])
    diffs = differences_from_paper(toy, epochs=24, lr_steps=(16, 22))
    assert toy.epochs == 24 // 6 and toy.lr_steps == pytest.approx((16 * 4 / 24, 22 * 4 / 24), abs=1e-3)
    assert set(TOY_PROFILE) - {"num_workers", "log_interval", "cpu_threads"} <= set(diffs)  # run options aside
    assert diffs["model"]["used"] == {**TOY_MODEL, "box_batch_size_per_image": 32}


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


def test_lr_scaling_and_optimizer(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gcrepro.engine.recipe"):
        assert scale_lr(base_lr=0.02, base_batch_size=16, total_batch=16) == 0.02
        assert not caplog.records  # no line when the batch is the paper's
        assert scale_lr(base_lr=0.02, base_batch_size=16, total_batch=4) == pytest.approx(0.005)
    assert len(caplog.records) == 1 and "0.02 * 4 / 16 = 0.005" in caplog.records[0].getMessage()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
    group = opt.param_groups[0]
    assert (group["momentum"], group["weight_decay"], len(group["params"])) == (0.9, 1e-4, 3)


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


def test_every_settable_key_has_a_type_and_default() -> None:
    cfg = TrainConfig()
    for key in settable_keys():
        text = ",".join(map(str, v)) if isinstance(v := getattr(cfg, key), tuple) else str(v)
        train, _ = parse_overrides([f"{key}={text}"])  # the default round-trips through --set
        assert train[key] == getattr(cfg, key), key


def test_setting_epochs_keeps_lr_steps_at_the_same_fractions() -> None:
    cfg = make_config(entry="e", epochs=12, lr_steps=(8, 11), profile="paper", data="d", data_kind="coco",
                      overrides=["epochs=6"])
    assert cfg.epochs == 6 and cfg.lr_steps == (4.0, 5.5)
    cfg = make_config(entry="e", epochs=12, lr_steps=(8, 11), profile="paper", data="d", data_kind="coco",
                      overrides=["epochs=6", "lr_steps=5"])
    assert cfg.lr_steps == (5.0,)
