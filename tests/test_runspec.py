"""RunSpec: one resolution (paper -> profile -> overrides, one typed parser), saved whole in checkpoints
and metrics.json; evaluation rebuilds exactly the trained model; labels say what numbers are."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import pytest

import gcrepro
from gcrepro import profiles
from gcrepro.data import identity
from gcrepro.engine.config import ConfigError, TrainConfig
from gcrepro.runspec import RunSpec, label_of, parse_overrides, resolve_run, settable_keys

TINY = {"max_iters": 1, "warmup_iters": 1, "log_interval": 1, "timing_skip_iters": 0, "min_size": 64, "max_size": 96}


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory) -> Path:
    from gcrepro.data import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", seed=1, num_train=4, num_val=2, image_size=64)


def _coco_layout(root: Path, *, image_ids: list[int], category_ids: list[int]) -> Path:
    """A dataset in the COCO 2017 layout with these val image and category ids (no toy manifest)."""
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
        doc = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 8, "width": 8} for i in image_ids],
               "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in category_ids]}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return root


def test_overrides_parse_to_field_types() -> None:
    typed = parse_overrides([
        "max_iters=7", "base_lr=0.01", "deterministic=true", "amp=bf16", "lr_steps=16,22",
        "pretrained_backbone=none", "box_batch_size_per_image=64", "stage_with_gcb=false,true,true,true",
        "gc_ratio=0.25", "model.rpn_nms_thresh=0.6", "gc_impl=reference",
    ])
    assert typed == {"max_iters": 7, "base_lr": 0.01, "deterministic": True, "amp": "bf16", "lr_steps": (16.0, 22.0),
                     "pretrained_backbone": None, "box_batch_size_per_image": 64,
                     "stage_with_gcb": (False, True, True, True), "gc_ratio": 0.25, "rpn_nms_thresh": 0.6,
                     "gc_impl": "reference"}
    # A notebook's overrides dict: text or Python values, the same parser.
    assert parse_overrides({"max_iters": "50", "lr_steps": [4, 5], "base_lr": 1}) == {
        "max_iters": 50, "lr_steps": (4.0, 5.0), "base_lr": 1.0}


@pytest.mark.parametrize("item, names", [
    ("no_such_key=1", ["no_such_key", "unknown key", "max_iters", "box_batch_size_per_image"]),
    ("max_iters=ten", ["max_iters=ten", "an int"]),
    ("max_iters=-1", ["max_iters=-1", ">= 0"]),
    ("base_lr=inf", ["base_lr=inf", "finite"]),
    ("base_lr=nan", ["base_lr=nan", "finite"]),
    ("amp=fp8", ["amp=fp8", "none|bf16|fp16"]),
    ("deterministic=maybe", ["deterministic", "true|false"]),
    ("lr_steps=11,8", ["lr_steps", "increasing"]),
    ("stage_with_gcb=true,true", ["stage_with_gcb", "4 comma-separated bools"]),
    ("box_fg_iou_thresh=high", ["box_fg_iou_thresh", "a float"]),
    ("max_iters", ["max_iters", "key=value"]),
    ("num_classes=3", ["num_classes", "not settable", "dataset"]),
])
def test_bad_override_fails_with_one_line_naming_key_and_allowed(item: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_overrides([item])
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_every_settable_key_round_trips_through_text(tiny_toy: Path) -> None:
    spec = resolve_run(1, data=tiny_toy, profile="paper")
    values = {**dataclasses.asdict(spec.model), **dataclasses.asdict(spec.train)}
    for key in settable_keys():
        value = values[key]
        if isinstance(value, tuple) and value and isinstance(value[0], tuple):
            continue  # nested tuples (cascade_bbox_reg_weights) are set as list values, not text
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert parse_overrides([f"{key}={text}"])[key] == value, key


def test_resolution_order_paper_then_profile_then_user(tiny_toy: Path) -> None:
    entry = gcrepro.get_entry("mask_rcnn_r50_fpn_gc_r16_2x") if any(
        e.name == "mask_rcnn_r50_fpn_gc_r16_2x" for e in gcrepro.list_entries()) else gcrepro.get_entry(2)
    paper = resolve_run(entry.name, data=tiny_toy, profile="paper")
    # The paper's recipe is TrainConfig's defaults with the entry's schedule; the model is the row's.
    assert paper.train == TrainConfig(epochs=entry.epochs, lr_steps=tuple(float(s) for s in entry.lr_steps))
    assert (paper.train.base_lr, paper.train.momentum, paper.train.weight_decay, paper.train.warmup_iters,
            paper.train.grad_clip_norm) == (0.02, 0.9, 1e-4, 500, 35.0)
    assert paper.model.gc_ratio == entry.gc_ratio and paper.model.min_size == 800 and paper.model.num_classes == 6
    assert paper.differences_from_paper() == {}
    assert paper.label == "toy"  # the paper's profile on the toy set is still toy data

    toy = resolve_run(entry.name, data=tiny_toy, profile="toy", overrides=["box_batch_size_per_image=48"])
    table = profiles.PROFILES["toy"].overrides
    assert table["box_batch_size_per_image"] != 48  # else the override below would prove nothing
    for key, value in table.items():
        part = toy.model if hasattr(toy.model, key) else toy.train
        expected = 48 if key == "box_batch_size_per_image" else value  # the user's override wins
        assert getattr(part, key) == expected, key
    assert toy.train.epochs == entry.epochs // 6
    assert toy.train.lr_steps == pytest.approx(tuple(s * toy.train.epochs / entry.epochs for s in entry.lr_steps), abs=1e-3)
    diffs = toy.differences_from_paper()
    assert diffs["box_batch_size_per_image"] == {"paper": 512, "used": 48}
    assert "num_workers" not in diffs and "cpu_threads" not in diffs  # run options are not differences
    assert toy.overrides == {"box_batch_size_per_image": 48}

    # epochs without lr_steps keeps the steps at the same fractions of the run; with lr_steps, as given.
    six = resolve_run(1, data=tiny_toy, profile="paper", overrides=["epochs=6"])
    assert (six.train.epochs, six.train.lr_steps) == (6, (4.0, 5.5))
    assert resolve_run(1, data=tiny_toy, profile="paper", overrides=["epochs=6", "lr_steps=5"]).train.lr_steps == (5.0,)
    # A convention brings its codebase's values (CONVENTION_PRESETS); the user's own overrides still win.
    mmdet = resolve_run(1, data=tiny_toy, profile="paper", overrides=["conventions=mmdet"])
    assert (mmdet.model.conventions, mmdet.model.roi_sampling_ratio) == ("mmdet", 0)
    assert resolve_run(1, data=tiny_toy, overrides=["conventions=mmdet", "roi_sampling_ratio=2"]).model.roi_sampling_ratio == 2
    tv = resolve_run(1, data=tiny_toy, profile="paper", overrides=["conventions=torchvision"]).model
    assert (tv.box_smooth_l1_beta, tv.rpn_allowed_border, tv.rpn_min_pos_iou) == (1.0 / 9.0, None, None)
    assert paper.model.conventions == "paper"
    with pytest.raises(ConfigError, match="profile 'huge'"):
        resolve_run(1, data=tiny_toy, profile="huge")
    with pytest.raises(ConfigError, match="gc_ratio"):  # ModelConfig's own consistency check, one line
        resolve_run(2, data=tiny_toy, overrides=["gc_ratio=none"])


def test_spec_round_trip_and_bad_saved_specs(tiny_toy: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = resolve_run(3, data=tiny_toy, overrides={"max_iters": 5, "anchor_ratios": [0.5, 1, 2]})
    saved = json.loads(json.dumps(spec.to_dict()))  # what a checkpoint / metrics.json holds
    assert RunSpec.from_dict(saved, where="x") == spec
    old = json.loads(json.dumps(saved))
    del old["model"]["cascade_score_average"]  # a field an older gcrepro did not write
    with caplog.at_level(logging.WARNING, logger="gcrepro"):
        assert RunSpec.from_dict(old, where="ckpt.pth").model.cascade_score_average == "logits"
    assert "ckpt.pth" in caplog.text and "model.cascade_score_average" in caplog.text
    bad = json.loads(json.dumps(saved))
    bad["train"]["max_iters"] = "many"
    with pytest.raises(ConfigError, match=r"ckpt.pth: spec.train: TrainConfig.max_iters='many'"):
        RunSpec.from_dict(bad, where="ckpt.pth")
    schema1 = json.loads(json.dumps(saved))
    schema1["schema"] = 1
    del schema1["model"]["conventions"]
    with caplog.at_level(logging.WARNING, logger="gcrepro"):
        assert RunSpec.from_dict(schema1, where="old.pth").model == dataclasses.replace(spec.model, conventions="torchvision")
    assert "before the conventions" in caplog.text
    with pytest.raises(ConfigError, match="no field 'model'"):
        RunSpec.from_dict({k: v for k, v in saved.items() if k != "model"}, where="ckpt.pth")
    with pytest.raises(ConfigError, match="newer"):
        RunSpec.from_dict({**saved, "schema": 99}, where="ckpt.pth")


def test_data_kind_comes_from_the_annotations_not_the_layout(tmp_path: Path, tiny_toy: Path, monkeypatch) -> None:
    coco_ids = list(identity.COCO_CATEGORY_IDS)
    assert len(coco_ids) == 80 and identity.describe_data(tiny_toy).kind == "toy"
    custom = identity.describe_data(_coco_layout(tmp_path / "shapes200", image_ids=[1, 2, 3], category_ids=[1, 2]))
    assert (custom.kind, custom.name, custom.num_classes, custom.val_images) == ("custom", "shapes200", 3, 3)
    subset = identity.describe_data(_coco_layout(tmp_path / "mini", image_ids=[139, 285], category_ids=coco_ids))
    assert subset.kind == "coco-subset"
    # The whole val2017 is recognised by its image-id fingerprint (here: this folder's ids stand in for it).
    monkeypatch.setattr(identity, "COCO_VAL2017_IMAGES", 2)
    monkeypatch.setattr(identity, "COCO_VAL2017_IDS_SHA256", identity.ids_fingerprint([285, 139]))
    assert identity.describe_data(tmp_path / "mini").kind == "coco"
    assert identity.classify(is_toy=False, image_ids=[139, 285], category_ids=coco_ids[:-1]) == "custom"

    # Labels: only the paper's profile on COCO val2017 is "coco"; the user's folder of the issue is not.
    coco = dataclasses.replace(subset, kind="coco")
    assert label_of("paper", coco) == "coco" and label_of("toy", coco) == "toy"
    assert label_of("paper", custom) == "custom" and label_of("toy", custom) == "toy"
    assert label_of("paper", subset) == "coco-subset"
    spec = resolve_run(1, data=tmp_path / "shapes200")
    assert (spec.profile, spec.label) == ("paper", "custom") and "custom: shapes200" in spec.label_text


def test_evaluation_rebuilds_the_trained_model_whatever_todays_defaults(tiny_toy: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    work = tmp_path / "run"
    final = gcrepro.train(2, data=tiny_toy, work_dir=work, overrides=TINY, num_workers=0)
    first = gcrepro.evaluate(2, checkpoint=final, work_dir=work)
    assert first.label == "toy" and first.spec.model.fpn_channels == 64 and first.iterations == 1
    # Today's defaults change: the toy profile's widths and a model default.
    toy = profiles.PROFILES["toy"]
    monkeypatch.setitem(profiles.PROFILES, "toy", dataclasses.replace(
        toy, overrides={**toy.overrides, "fpn_channels": 32, "box_fc_dim": 128, "box_score_thresh": 0.5}))
    assert resolve_run(2, data=tiny_toy).model.fpn_channels == 32  # a new run would get the new values
    again = gcrepro.evaluate(2, checkpoint=final, work_dir=tmp_path / "again")
    assert again.spec == first.spec  # the checkpoint's own spec, not today's
    assert again.bbox == first.bbox and again.segm == first.segm  # the same model gives the same detections
    # metrics.json holds the spec whole, and the typed reader reads it back.
    raw = json.loads((work / "metrics.json").read_text())
    assert raw["schema"] == 2 and raw["spec"] == first.spec.to_dict() and raw["label"] == "toy"


def test_old_checkpoints_and_metrics_still_load(tiny_toy: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    from gcrepro.engine import checkpoint as ckpt
    from gcrepro.run_metrics import MetricsError, read_metrics

    work = tmp_path / "run"
    final = gcrepro.train(1, data=tiny_toy, work_dir=work, overrides=TINY, num_workers=0)
    state = ckpt.load_checkpoint(final)
    spec = RunSpec.from_dict(state.pop("spec"), where="test")
    # The pre-RunSpec layout: a flat TrainConfig dict with entry, profile, data and model overrides.
    state["config"] = {**dataclasses.asdict(spec.train), "entry": spec.entry, "profile": "toy",
                       "data": str(tiny_toy), "data_kind": "toy", "model": {"min_size": 64, "max_size": 96},
                       "gc_impl": "auto"}
    old = tmp_path / "old.pth"
    torch.save(state, old)
    metrics = gcrepro.evaluate(1, checkpoint=old, work_dir=tmp_path / "eval_old")
    # before the conventions existed, models ran torchvision's geometry: that is what it is rebuilt with
    assert metrics.spec.model == dataclasses.replace(spec.model, conventions="torchvision") and metrics.label == "toy"
    with pytest.raises(ConfigError, match=f"{old}.*trained for mask_rcnn_r50_fpn_1x, not mask_rcnn_r50_fpn_gc_r16_1x"):
        gcrepro.evaluate(2, checkpoint=old, work_dir=tmp_path / "wrong")
    # Weights alone (no run spec, no config): a checkpoint trained elsewhere, converted in memory; it records
    # no dataset, so the val set must be named (or be data/coco).
    monkeypatch.setenv("GCREPRO_DATA", str(tmp_path / "no_data_here"))
    weights_only = tmp_path / "weights.pth"
    torch.save({"model": state["model"]}, weights_only)
    with pytest.raises(ConfigError, match=f"{weights_only} records no dataset.*pass --data"):
        gcrepro.evaluate(1, checkpoint=weights_only, work_dir=tmp_path / "w", data=None)

    legacy = tmp_path / "legacy" / "metrics.json"
    legacy.parent.mkdir()
    legacy.write_text(json.dumps({"entry": "mask_rcnn_r50_fpn_1x", "data": "coco", "profile": "toy",
                                  "bbox": None, "segm": None, "mem_gb": 1.0}))
    old_metrics = read_metrics(legacy.parent)
    assert old_metrics.label == "toy" and old_metrics.spec is None and old_metrics.mem_gb == 1.0
    legacy.write_text(json.dumps({"entry": "mask_rcnn_r50_fpn_1x", "data": "coco", "profile": "paper"}))
    assert read_metrics(legacy).label == "unverified"  # "coco" from a time it meant "any folder"
    legacy.write_text(json.dumps({"data": "coco"}))
    with pytest.raises(MetricsError, match=f"{legacy}: missing field 'entry'"):
        read_metrics(legacy)
    legacy.write_text(json.dumps({"entry": "x", "schema": 2}))
    with pytest.raises(MetricsError, match=f"{legacy}: missing field 'spec'"):
        read_metrics(legacy)
    legacy.write_text(json.dumps({"entry": "x", "bbox": {"AP": 1.0}}))
    with pytest.raises(MetricsError, match="field 'bbox' has no 'AP50'"):
        read_metrics(legacy)


def test_resume_refuses_other_settings_but_not_run_options(tiny_toy: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    overrides = {**TINY, "max_iters": 1, "checkpoint_interval": 1}
    gcrepro.train(1, data=tiny_toy, work_dir=work, overrides=overrides, num_workers=0)
    with pytest.raises(ConfigError, match=r"--resume: .* other settings \(base_lr: 0.16 -> 0.05\)"):
        gcrepro.train(1, data=tiny_toy, work_dir=work, overrides={**overrides, "base_lr": 0.05}, resume=True)
    # A run option may change; a longer run continues from the checkpoint.
    final = gcrepro.train(1, data=tiny_toy, work_dir=work, overrides={**overrides, "log_interval": 5},
                          num_workers=0, resume=True)
    assert final.name == "iter_0000001.pth"
    assert math.isfinite(gcrepro.read_metrics(work).train_s_per_iter or 0.0)


def test_label_text_names_a_toy_set_other_than_the_default() -> None:
    from gcrepro.data.identity import DataSpec
    from gcrepro.runspec import label_text

    def spec(name: str) -> DataSpec:
        return DataSpec(root=f"/data/{name}", kind="toy", name=name, num_classes=4, val_images=2,
                        val_ids_sha256="0" * 64, val_sha256="0" * 64)

    assert label_text("toy", spec("toy")) == "toy: the synthetic toy set; NOT COCO numbers"
    assert label_text("toy", spec("toy_context")) == "toy: the synthetic toy set in toy_context; NOT COCO numbers"
