"""gcrepro.convert: safe loading, layouts, class rows, entry inference and preflight, output, CLI.

Source checkpoints are made from toy-size gcrepro models (the paper's structure, narrow widths)
with random weights, turned into each layout by the converter's own inverse mappings; the numbers
of the class rows are checked against the source, not only shapes.
"""
from __future__ import annotations

import argparse
import functools
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import gcrepro
from gcrepro.cli import main
from gcrepro.convert import (
    ConvertError, convert_checkpoint, load_checkpoint_any, mmdet_to_v1, save_converted, to_gcnet_v1_layout,
    to_mmdet_layout,
)
from gcrepro.convert.infer import infer_entry, read_hints
from gcrepro.convert.keymap import Rule, apply_rules
from gcrepro.convert.safe_load import Dropped
from gcrepro.convert.structure import read_structure
from gcrepro.data.identity import COCO_CATEGORY_IDS
from gcrepro.entries import list_entries
from gcrepro.fields import from_plain
from gcrepro.modeling.build import build_detector
from gcrepro.modeling.config import ModelConfig

K = 5  # toy class count, background included


@functools.cache
def _toy(row: int, num_classes: int) -> dict[str, torch.Tensor]:
    """A toy-size gcrepro state dict of ``row`` with seeded random values in every float tensor."""
    state = gcrepro.build_model(row, profile="toy", num_classes=num_classes).state_dict()
    g = torch.Generator().manual_seed(row)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


def toy_state(row: int, num_classes: int = K) -> dict[str, torch.Tensor]:
    return dict(_toy(row, num_classes))


def save(path, obj):
    torch.save(obj, path)
    return path


def mmdet_file(tmp_path, row: int, name: str = "mmdet.pth", meta: dict | None = None, **kwargs):
    return save(tmp_path / name, {"meta": {"mmdet_version": "3.3.0", **(meta or {})},
                                  "state_dict": to_mmdet_layout(toy_state(row, **kwargs)), "optimizer": {}})


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- safe loading

def test_plain_checkpoint_loads_through_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded = load_checkpoint_any(save(tmp_path / "a.pth", {"state_dict": {"w": torch.arange(3.0)}, "meta": {"n": 1}}))
    assert calls == [True]
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0)) and loaded["meta"] == {"n": 1}


def _module(name: str, **attrs) -> types.ModuleType:
    """A module ``name`` whose classes and functions ``attrs`` pickle as ``name.<key>``."""
    module = types.ModuleType(name)
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = name, key
        setattr(module, key, value)
    return module


def _install(monkeypatch, module: types.ModuleType) -> None:
    parts = module.__name__.split(".")
    for i in range(1, len(parts)):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    monkeypatch.setitem(sys.modules, module.__name__, module)


def test_mmengine_checkpoint_loads_with_inert_stand_ins(tmp_path, monkeypatch):
    # SAVING: a stand-in mmengine HistoryBuffer (numpy arrays inside; its statistics methods pickled
    # as getattr(HistoryBuffer, name), as mmengine's are), numpy scalars in the metadata.
    class HistoryBuffer:
        def __init__(self):
            self.log = np.arange(4.0)
            self.count = np.ones(4)
            self.statistics_methods = {"mean": HistoryBuffer.mean}

        def mean(self):
            return self.log.mean()

    HistoryBuffer.mean.__module__ = "mmengine.logging.history_buffer"
    HistoryBuffer.mean.__qualname__ = "HistoryBuffer.mean"
    with monkeypatch.context() as m:
        _install(m, _module("mmengine.logging.history_buffer", HistoryBuffer=HistoryBuffer))
        path = save(tmp_path / "mmengine.pth", {
            "meta": {"epoch": 12, "best": np.float64(0.5), "dataset_meta": {"classes": ("a", "b")}},
            "state_dict": {"w": torch.arange(3.0)},
            "message_hub": {"log_scalars": {"loss": HistoryBuffer()}},
            "args": argparse.Namespace(lr=0.02),  # torchvision's reference scripts
        })
    # LOADING: a tripwire under the same name; the loader must not touch it (nor import mmengine).
    touched = []

    class Tripwire:
        def __new__(cls, *args, **kwargs):
            touched.append(cls)
            raise AssertionError("the loader built a foreign class")

    _install(monkeypatch, _module("mmengine.logging.history_buffer", HistoryBuffer=Tripwire))
    loaded = load_checkpoint_any(path)
    assert not touched
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))
    buffer = loaded["message_hub"]["log_scalars"]["loss"]
    assert isinstance(buffer, Dropped) and buffer.origin == "mmengine HistoryBuffer" and not hasattr(buffer, "log")
    assert isinstance(loaded["meta"]["best"], Dropped) and loaded["meta"]["best"].origin == "numpy scalar"
    assert loaded["meta"]["epoch"] == 12 and loaded["args"].origin == "command-line arguments"


def test_pickle_that_would_run_code_is_refused_by_name(tmp_path, monkeypatch):
    ran = []

    def payload(*args):
        ran.append(args)

    class Exploit:
        def __reduce__(self):
            return payload, ("x",)

    _install(monkeypatch, _module("payload_module", payload=payload))
    torch.save({"state_dict": {}, "x": Exploit()}, tmp_path / "torch.pth")
    with open(tmp_path / "raw.pkl", "wb") as f:  # a bare pickle, default protocol (STACK_GLOBAL)
        pickle.dump(Exploit(), f)

    class SystemCall:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    torch.save({"x": SystemCall()}, tmp_path / "system.pth")
    for name, refused in (("torch.pth", "payload_module.payload"), ("raw.pkl", "payload_module.payload"),
                          ("system.pth", f"{os.system.__module__}.system")):
        with pytest.raises(ConvertError, match=rf"refused to load {refused} ") as err:
            load_checkpoint_any(tmp_path / name)
        assert "\n" not in str(err.value)
    assert not ran


def test_unreadable_files_get_one_line(tmp_path):
    good = save(tmp_path / "good.pth", {"state_dict": {"w": torch.randn(300)}})
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.randn(300)}}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "truncated.pth": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_legacy.pth": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "random.bin": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "notes.txt": b"not a checkpoint\n" * 20,
        "empty.pth": b"",
        # a length field of 2**61 (what random bytes read as BINUNICODE8, BINBYTES8 or BYTEARRAY8 can say): the
        # opcode scan asked the file for that many bytes and died of MemoryError (CI, 2026-11-30)
        **{f"huge_length_{op.hex()}.pth": b"\x80\x04" + op + (2**61).to_bytes(8, "little") + bytes(64)
           for op in (b"\x8d", b"\x8e", b"\x96")},
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConvertError) as err:
            load_checkpoint_any(tmp_path / name)
        text = str(err.value)
        assert text.startswith(str(tmp_path / name)) and "\n" not in text and "weights_only" not in text, text
    with pytest.raises(ConvertError, match="no such file"):
        load_checkpoint_any(tmp_path / "missing.pth")
    with pytest.raises(ConvertError, match="holds a list"):
        load_checkpoint_any(save(tmp_path / "list.pth", [torch.zeros(1)]))


# ---------------------------------------------------------------- layouts and class rows

def test_each_layout_is_detected(tmp_path):
    state = toy_state(2)
    files = {
        "mmdet": mmdet_file(tmp_path, 2),
        "gcnet_v1": save(tmp_path / "v1.pth", {"meta": {"mmdet_version": "0.6.0"},
                                              "state_dict": to_gcnet_v1_layout(state)}),
        "gcrepro": save(tmp_path / "bare.pth", state),
    }
    for layout, path in files.items():
        converted = convert_checkpoint(path)
        assert (converted.layout, converted.entry) == (layout, "mask_rcnn_r50_fpn_gc_r16_1x")
    ddp = save(tmp_path / "ddp.pth", {"state_dict": {f"module.{k}": v for k, v in to_mmdet_layout(state).items()}})
    converted = convert_checkpoint(ddp)
    assert converted.layout == "mmdet" and any("module." in n for n in converted.notes)
    with pytest.raises(ConvertError, match="unknown layout"):
        convert_checkpoint(save(tmp_path / "other.pth", {"encoder.weight": torch.zeros(2)}))


def test_mmdet_class_rows_move_background_first_and_gain_zero_background_rows(tmp_path):
    state = toy_state(2)
    source = to_mmdet_layout(state)
    fc_cls, fc_reg = source["roi_head.bbox_head.fc_cls.weight"], source["roi_head.bbox_head.fc_reg.weight"]
    logits = source["roi_head.mask_head.conv_logits.weight"]
    assert (fc_cls.shape[0], fc_reg.shape[0], logits.shape[0]) == (K, 4 * (K - 1), K - 1)
    converted = convert_checkpoint(save(tmp_path / "m.pth", {"state_dict": source}))
    out = converted.state_dict
    cls = out["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(cls[0], fc_cls[-1]) and torch.equal(cls[1:], fc_cls[:-1])
    assert torch.equal(cls, state["roi_heads.box_predictor.cls_score.weight"])
    reg = out["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(reg[:4], torch.zeros_like(reg[:4])) and torch.equal(reg[4:], fc_reg)
    assert torch.equal(out["roi_heads.box_predictor.bbox_pred.bias"][:4], torch.zeros(4))
    mask = out["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(mask[0], torch.zeros_like(mask[0])) and torch.equal(mask[1:], logits)
    for key in state:
        if "predictor" not in key:
            assert torch.equal(out[key], state[key]), key
    assert converted.counts["reordered"] == 2 and converted.counts["background_rows"] == 4
    assert converted.conventions == "mmdet" and converted.model_config.num_classes == K


def test_v1_keeps_class_rows_and_round_trips(tmp_path):
    for row in (2, 30):
        state = toy_state(row)
        converted = convert_checkpoint(save(tmp_path / f"v1_{row}.pth", {"state_dict": to_gcnet_v1_layout(state)}))
        assert_same(converted.state_dict, state)  # background rows included, untouched
        # mmdet -> v1 (the inverse of mmdetection's upgrade rules) -> gcrepro == mmdet -> gcrepro, exactly
        mmdet = to_mmdet_layout(state)
        via_mmdet = convert_checkpoint(save(tmp_path / f"mm_{row}.pth", {"state_dict": mmdet}))
        via_v1 = convert_checkpoint(save(tmp_path / f"mm_v1_{row}.pth", {"state_dict": mmdet_to_v1(mmdet)}))
        assert (via_mmdet.layout, via_v1.layout) == ("mmdet", "gcnet_v1")
        assert_same(via_v1.state_dict, via_mmdet.state_dict)


def test_dcn_offsets_and_cascade_heads(tmp_path):
    state = toy_state(28)
    mmdet, v1 = to_mmdet_layout(state), to_gcnet_v1_layout(state)
    offset = "backbone.body.layer3.5.conv2_offset.weight"
    assert torch.equal(mmdet["backbone.layer3.5.conv2.conv_offset.weight"], state[offset])
    assert torch.equal(v1["backbone.layer3.5.conv2_offset.weight"], state[offset])
    for s in range(3):
        assert mmdet[f"roi_head.bbox_head.{s}.fc_reg.weight"].shape[0] == 4  # class-agnostic: no class rows
        assert mmdet[f"roi_head.mask_head.{s}.conv_logits.weight"].shape[0] == K - 1
        assert v1[f"mask_head.{s}.conv_logits.weight"].shape[0] == K
    converted = convert_checkpoint(save(tmp_path / "c.pth", {"state_dict": mmdet}))
    assert converted.entry == "cascade_mask_rcnn_x101_32x4d_fpn_dcn_syncbn_1x"
    assert converted.counts["reordered"] == 6 and converted.counts["background_rows"] == 6
    out = converted.state_dict
    for key in state:
        if "mask_fcn_logits" in key:
            assert torch.equal(out[key][1:], state[key][1:]) and not out[key][0].any(), key
        else:
            assert torch.equal(out[key], state[key]), key


def test_4conv1fc_syncbn_head(tmp_path):
    state = toy_state(14)
    mmdet = to_mmdet_layout(state)
    assert torch.equal(mmdet["roi_head.bbox_head.shared_convs.3.bn.running_var"],
                       state["roi_heads.box_head.3.1.running_var"])
    assert torch.equal(mmdet["roi_head.bbox_head.shared_fcs.0.weight"], state["roi_heads.box_head.5.weight"])
    assert torch.equal(mmdet["neck.fpn_convs.2.bn.weight"], state["backbone.fpn.layer_blocks.2.1.weight"])
    assert torch.equal(mmdet["roi_head.mask_head.convs.1.bn.bias"], state["roi_heads.mask_head.1.1.bias"])
    converted = convert_checkpoint(save(tmp_path / "h.pth", {"state_dict": to_gcnet_v1_layout(state)}))
    assert converted.entry == "mask_rcnn_r50_fpn_syncbn_4conv1fc_gc_r16_1x"
    assert_same(converted.state_dict, state)


def test_torchvision_layouts(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    # torchvision's own model (>= 0.13 names); released weights have frozen BN: no num_batches_tracked
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    tv = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    converted = convert_checkpoint(save(tmp_path / "tv.pth", tv))
    assert (converted.layout, converted.entry) == ("torchvision", "mask_rcnn_r50_fpn_1x")
    config = converted.model_config  # torchvision's conventions preset: row 1 = maskrcnn_resnet50_fpn
    assert (config.conventions, config.box_smooth_l1_beta, config.rpn_min_pos_iou) == ("torchvision", 1 / 9, None)
    keep = [0, *COCO_CATEGORY_IDS]  # COCO category-id rows -> gcrepro's contiguous labels
    out = converted.state_dict
    cls = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(out[cls], tv[cls][keep])
    deltas = tv["roi_heads.box_predictor.bbox_pred.bias"].reshape(91, 4)[keep].reshape(-1)
    assert torch.equal(out["roi_heads.box_predictor.bbox_pred.bias"], deltas)
    assert torch.equal(out["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                       tv["roi_heads.mask_predictor.mask_fcn_logits.weight"][keep])
    assert converted.counts["filled"] == sum(k.endswith("num_batches_tracked") for k in out) > 0
    build_detector(config).load_state_dict(out, strict=True)
    # torchvision < 0.13 names (no Conv2dNormActivation wrappers), on a toy-size row 1
    state = toy_state(1)
    old = {}
    for key, value in state.items():
        for new, legacy in (("inner_blocks.{}.0.", "inner_blocks.{}."), ("layer_blocks.{}.0.", "layer_blocks.{}."),
                            ("mask_head.{}.0.", "mask_head.mask_fcn{}."), ("rpn.head.conv.0.0.", "rpn.head.conv.")):
            for i in range(4):
                i_legacy = i + 1 if "mask_fcn" in legacy else i
                key = key.replace(new.format(i), legacy.format(i_legacy))
        old[key] = value
    assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn4.weight" in old
    converted = convert_checkpoint(save(tmp_path / "tv_old.pth", {"model": old}))
    assert converted.layout == "torchvision" and converted.counts["renamed"] == 8 + 8 + 8 + 2
    assert_same(converted.state_dict, state)


# ---------------------------------------------------------------- entry inference and preflight

def _structure(row: int):
    mapped = apply_rules(toy_state(row), [Rule("{rest}", "{rest}")], where="test")
    return read_structure(mapped, "test"), mapped.source_key


def test_every_entry_is_inferred_from_its_state_dict():
    same_keys: dict[tuple, list] = {}
    for e in list_entries():
        same_keys.setdefault((e.depth, e.groups, e.gc_ratio, e.dcn, e.cascade, e.head), []).append(e)
    for entry in list_entries():
        structure, name = _structure(entry.row)
        # metadata naming the run (mmengine's experiment_name = our entry name: "syncbn", "2x" tokens)
        hints = read_hints(path=Path("model.pth"), meta={"experiment_name": entry.name}, config=None,
                           recorded_entry=None)
        assert infer_entry(structure, hints, name=name, where="t")[0] == entry
        # no metadata: the first twin in table order (fixBN, 1x), and the twins are named
        twins = same_keys[(entry.depth, entry.groups, entry.gc_ratio, entry.dcn, entry.cascade, entry.head)]
        chosen, notes = infer_entry(structure, [], name=name, where="t")
        assert chosen == twins[0]
        if len(twins) > 1:
            assert all(f"{t.row} ({t.name})" in notes[-1] for t in twins) and f"took row {twins[0].row}" in notes[-1]
        else:
            assert notes == []


def test_twins_told_apart_by_the_checkpoint_config(tmp_path):
    syncbn_2x = "model = dict(backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)))\ntotal_epochs = 24\n"
    fixbn_1x = "model = dict(backbone=dict(norm_cfg=dict(type='BN', requires_grad=True)))\n" \
               "train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12)\n"
    cases = [({"config": syncbn_2x}, "model.pth", "mask_rcnn_r50_fpn_syncbn_gc_r16_2x"),  # mmdetection 1.x/2.x
             ({"cfg": fixbn_1x}, "syncbn_model.pth", "mask_rcnn_r50_fpn_gc_r16_1x"),  # 3.x; config beats a name
             ({}, "mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco.pth", "mask_rcnn_r50_fpn_syncbn_gc_r16_1x")]
    for meta, name, expected in cases:
        assert convert_checkpoint(mmdet_file(tmp_path, 2, name=name, meta=meta)).entry == expected
    # released mmdetection file name: the entry is known (gcrepro.mmdet_zoo)
    released = "mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco_20200515_211915-187da160.pth"
    converted = convert_checkpoint(mmdet_file(tmp_path, 2, name=released))
    assert converted.entry == "mask_rcnn_r50_fpn_gc_r16_1x" and any("released file name" in n for n in converted.notes)


def test_entry_mismatch_is_refused_naming_the_key_or_shape(tmp_path):
    r50 = mmdet_file(tmp_path, 2, name="r50.pth")
    with pytest.raises(ConvertError, match=r"layer3 has 6 blocks \(R50\); entry 24 \(.*\) is X101-32x4d \(23 blocks\)"):
        convert_checkpoint(r50, entry=24)
    with pytest.raises(ConvertError, match=r"backbone\.layer2\.0\.context_block\.channel_add_conv\.0\.weight has shape "
                                           r"\(8, 128, 1, 1\): GC r16; entry 3 .* is GC r4"):
        convert_checkpoint(r50, entry=3)
    with pytest.raises(ConvertError, match=r"no backbone\.layer2\.0\.conv2\.conv_offset\.weight \(no DCN\); entry 28"):
        convert_checkpoint(mmdet_file(tmp_path, 25, name="cascade.pth"), entry=28)
    with pytest.raises(ConvertError, match=r"roi_head\.bbox_head\.shared_fcs\.0\.weight is there \(2fc box head\); "
                                           r"entry 14 .* has the 4conv1fc head"):
        convert_checkpoint(mmdet_file(tmp_path, 8, name="r50_syncbn.pth"), entry=14)
    # a twin is accepted, unless the checkpoint's config says otherwise
    twin = "mask_rcnn_r50_fpn_syncbn_gc_r16_1x"
    assert convert_checkpoint(r50, entry=twin).entry == twin
    synced = mmdet_file(tmp_path, 2, name="synced.pth", meta={"config": "norm_cfg = dict(type='SyncBN')"})
    with pytest.raises(ConvertError, match=r"training config says SyncBN, but entry 2 .* is not"):
        convert_checkpoint(synced, entry=2)
    with pytest.raises(ConvertError, match="unknown entry"):
        convert_checkpoint(r50, entry="mask_rcnn_r52")
    # inference: no row has GC in c4-c5 only
    c4_c5 = {k: v for k, v in to_mmdet_layout(toy_state(2)).items() if not k.startswith("backbone.layer2.")
             or ".context_block." not in k}
    with pytest.raises(ConvertError, match=r"no row of the table is a Mask R-CNN, R50, GC r16 in c4-c5, 2fc head, "
                                           r"5 classes; the closest, entry 2 .*, differs: backbone\.layer3\.0\."
                                           r"context_block\.conv_mask\.weight is there \(GC r16 in c4-c5\)"):
        convert_checkpoint(save(tmp_path / "c4_c5.pth", {"state_dict": c4_c5}))


def test_missing_extra_and_droppable_keys(tmp_path):
    source = to_mmdet_layout(toy_state(2))
    missing = {k: v for k, v in source.items() if k != "roi_head.mask_head.upsample.weight"}
    with pytest.raises(ConvertError, match=r"no roi_head\.mask_head\.upsample\.weight: entry 2 .* needs it"):
        convert_checkpoint(save(tmp_path / "missing.pth", {"state_dict": missing}))
    extra = {**source, "roi_head.semantic_head.conv.weight": torch.zeros(1)}
    with pytest.raises(ConvertError, match=r"roi_head\.semantic_head\.conv\.weight has no place in entry 2"):
        convert_checkpoint(save(tmp_path / "extra.pth", {"state_dict": extra}))
    wrong = {**source, "roi_head.bbox_head.fc_reg.weight": source["roi_head.bbox_head.fc_reg.weight"][:-4]}
    with pytest.raises(ConvertError, match=r"fc_reg\.weight has 12 rows; an mmdetection 2\.x/3\.x head with 5 fc_cls"):
        convert_checkpoint(save(tmp_path / "wrong.pth", {"state_dict": wrong}))
    classifier = {**source, "backbone.fc.weight": torch.zeros(10, 512), "backbone.fc.bias": torch.zeros(10)}
    converted = convert_checkpoint(save(tmp_path / "fc.pth", {"state_dict": classifier}))
    assert converted.counts["dropped"] == 2 and any("ImageNet classifier" in n for n in converted.notes)


# ---------------------------------------------------------------- output

def test_output_loads_with_weights_only_into_the_model(tmp_path):
    converted = convert_checkpoint(mmdet_file(tmp_path, 26, meta={"experiment_name": "x", "best": np.float32(1)}))
    out = save_converted(converted, tmp_path / "out" / "converted.pth")
    checkpoint = torch.load(out, weights_only=True)
    assert set(checkpoint) == {"model", "model_config", "conversion"}
    conversion = checkpoint["conversion"]
    assert (conversion["layout"], conversion["entry"]) == ("mmdet", "cascade_mask_rcnn_x101_32x4d_fpn_syncbn_gc_r16_1x")
    assert conversion["meta"] == {"mmdet_version": "3.3.0", "experiment_name": "x"}
    assert conversion["counts"]["tensors_out"] == len(checkpoint["model"])
    config, missing = from_plain(ModelConfig, checkpoint["model_config"], where="test")
    assert not missing and config == converted.model_config
    assert (config.conventions, config.roi_sampling_ratio) == ("mmdet", 0)  # mmdetection's conventions preset
    model = build_detector(config)
    model.load_state_dict(checkpoint["model"], strict=True)
    # a gcrepro checkpoint passes through: same tensors, same config
    again = convert_checkpoint(out)
    assert again.layout == "gcrepro" and again.model_config == config and again.conventions == "mmdet"
    assert_same(again.state_dict, converted.state_dict)
    # ... also one with a run spec
    spec = save(tmp_path / "run.pth", {"model": checkpoint["model"], "optimizer": {},
                                       "spec": {"entry": conversion["entry"], "model": checkpoint["model_config"]}})
    assert convert_checkpoint(spec).entry == conversion["entry"]


def test_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    converted = convert_checkpoint(mmdet_file(tmp_path, 1))
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_converted(converted, tmp_path / "out.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmdet.pth"]


# ---------------------------------------------------------------- command line

def test_cli(tmp_path, capsys):
    src = mmdet_file(tmp_path, 2, meta={"mmdet_version": "2.2.0"})
    without_upsample = {k: v for k, v in torch.load(src)["state_dict"].items() if "upsample" not in k}
    dst = tmp_path / "row2.pth"
    assert main(["convert", str(src), "--out", str(dst), "--entry", "2"]) == 0
    printed = capsys.readouterr().out
    assert "layout: mmdetection 2.x/3.x (mmdet_version 2.2.0)" in printed
    assert "entry: mask_rcnn_r50_fpn_gc_r16_1x (row 2)" in printed
    assert "464 renamed, 2 class rows re-ordered, 4 zero background rows added" in printed
    assert torch.load(dst, weights_only=True)["conversion"]["entry"] == "mask_rcnn_r50_fpn_gc_r16_1x"

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(src.read_bytes()[:1000])

    class SystemCall:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    bad = {
        "mismatch": (src, ["--entry", "24"], "layer3 has 6 blocks"),
        "truncated": (truncated, [], "not a readable checkpoint"),
        "code": (save(tmp_path / "code.pth", {"x": SystemCall()}), [], "refused to load"),
        "missing": (save(tmp_path / "missing.pth", {"state_dict": without_upsample}), [], "needs it"),
        "same file": (src, ["--out", str(src)], "that is the source file"),
    }
    for what, (path, extra, message) in bad.items():
        out = tmp_path / f"{what}.out.pth"
        argv = ["convert", str(path), "--out", str(out), *extra]
        assert main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.startswith("gcrepro convert: error: ") and err.count("\n") == 1 and message in err, (what, err)
        assert not out.exists(), what
