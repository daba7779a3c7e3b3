"""Released checkpoints everywhere: eval, build_model and table run take any layout the converter reads.

The "released" checkpoint here is an mmdetection 2.x/3.x file made from a toy-width gcrepro model (its
keys and class order by ``gcrepro.convert.to_mmdet_layout``), named as mmdetection names row 8's file;
that the converted model computes what mmdetection's own model computes is tests/test_mmdet_equality.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest
import torch

import gcrepro
from gcrepro.convert import ConvertError, to_mmdet_layout
from gcrepro.engine.config import ConfigError
from gcrepro.mmdet_zoo import mmdet_model_of

ROW8 = "mask_rcnn_r50_fpn_syncbn_gc_r16_1x"


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory) -> Path:
    from gcrepro.data import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", seed=2, num_train=2, num_val=2, image_size=64)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder holding row 8's released file name with an mmdetection-layout checkpoint (6 classes)."""
    torch.manual_seed(0)
    model = gcrepro.build_model(ROW8, profile="toy", num_classes=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("released")
    path = folder / mmdet_model_of(ROW8).weights_file
    torch.save({"meta": {"mmdet_version": "2.0.0", "experiment_name": "mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb"},
                "state_dict": to_mmdet_layout(state)}, path)
    return path, state


def test_build_model_from_a_released_checkpoint(released) -> None:
    path, state = released
    model = gcrepro.build_model(8, checkpoint=path)
    assert not model.training and model.gcrepro_config.num_classes == 6
    assert model.gcrepro_config.conventions == "mmdet"  # mmdetection 2.x/3.x test-time rules
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    # mmdetection 2.x/3.x keeps no background row in the box regression and mask logits: they come back as
    # zeros (background rows are never read at test time); everything else comes through unchanged.
    background = {"roi_heads.box_predictor.bbox_pred.weight": 4, "roi_heads.box_predictor.bbox_pred.bias": 4,
                  "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
                  "roi_heads.mask_predictor.mask_fcn_logits.bias": 1}
    for key, value in state.items():
        rows = background.get(key)
        if rows is None:
            assert torch.equal(loaded[key], value), key
        else:
            assert torch.equal(loaded[key][rows:], value[rows:]) and not loaded[key][:rows].any(), key
    with pytest.raises(ConfigError, match="decided by the checkpoint"):
        gcrepro.build_model(8, checkpoint=path, num_classes=81)
    with pytest.raises(ConvertError, match="mask_rcnn_r101"):  # another architecture than the entry named
        gcrepro.build_model(17, checkpoint=path)


def test_eval_takes_a_released_checkpoint_and_labels_by_its_val_set(released, tiny_toy: Path, tmp_path: Path,
                                                                   capsys) -> None:
    path, _ = released
    metrics = gcrepro.evaluate(8, checkpoint=path, data=tiny_toy, work_dir=tmp_path / "r8")
    assert metrics.evaluated and metrics.spec.model.conventions == "mmdet" and metrics.spec.profile == "paper"
    assert metrics.label == "toy"  # the paper's profile, but toy val data: never compared with the paper
    assert metrics.eval["checkpoint_layout"] == "mmdet"

    from gcrepro.engine import cli

    parser = argparse.ArgumentParser(prog="gcrepro")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "2", "--checkpoint", str(path), "--data", str(tiny_toy),
                              "--work-dir", str(tmp_path / "wrong")])
    capsys.readouterr()
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gcrepro eval: error:" in err and "syncbn" in err.lower()


def test_table_run_evaluates_released_checkpoints_without_training(released, tiny_toy: Path, tmp_path: Path,
                                                                  capsys) -> None:
    from gcrepro.analysis.table_runner import table_run

    path, _ = released
    runs = tmp_path / "runs"
    code = table_run(["mask_rcnn_r50_fpn_syncbn_1x", ROW8], runs_dir=runs, data=str(tiny_toy),
                     sets=[("num_images", "1")], checkpoints=path.parent)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "mask_rcnn_r50_fpn_syncbn_1x: no checkpoint" in out  # row 7 has no file: not run
    run = runs / ROW8
    assert (run / "evaluate.ipynb").is_file() and (run / "attention.ipynb").is_file()
    assert not (run / "train.ipynb").exists() and not (run / "checkpoints").exists()  # nothing was trained
    assert gcrepro.read_metrics(run).label == "toy"
    report = pd.read_csv(runs / "report.csv")
    row = report.set_index("row").loc[8]
    assert row["data"] == "toy" and row["mmdet_box_ap"] == 40.4 and pd.isna(row["delta_box_ap"])


def test_a_class_count_that_does_not_fit_the_data_is_refused(released, tmp_path: Path) -> None:
    import json

    path, _ = released
    data = tmp_path / "two_classes"
    (data / "val2017").mkdir(parents=True)
    (data / "annotations").mkdir()
    (data / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    with pytest.raises(ConfigError, match=r"two_classes: 2 categories, but the model .* was trained on 5"):
        gcrepro.evaluate(8, checkpoint=path, data=data, work_dir=tmp_path / "w")
    assert not (tmp_path / "w" / "metrics.json").exists()  # refused before anything ran
