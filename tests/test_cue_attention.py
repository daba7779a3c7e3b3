"""The cue attention share: synthetic maps with a known answer, the summary per block and stage."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gcrepro.analysis.attention_maps import BlockRef, ImageMaps
from gcrepro.analysis.cue_attention import cue_share, format_table, read_cues, summarise

H, W = 40, 60
BOX = [10.0, 5.0, 8.0, 6.0]  # x, y, w, h: 48 pixels of 2400


def _on_cue() -> np.ndarray:
    att = np.zeros((H, W), np.float32)
    att[5:11, 10:18] = 1.0 / 48
    return att


def test_all_mass_on_the_cue_gives_share_one():
    share, area = cue_share(_on_cue(), BOX)
    assert share == pytest.approx(1.0, rel=1e-6) and area == pytest.approx(48 / (H * W))


def test_uniform_map_gives_the_area_share():
    share, area = cue_share(np.full((H, W), 1.0 / (H * W), np.float32), BOX)
    assert share == pytest.approx(area, rel=1e-5) and area == pytest.approx(0.02)


def test_mass_outside_the_cue_gives_share_zero_and_the_scale_does_not_matter():
    att = np.random.default_rng(0).random((H, W)).astype(np.float32)
    att[5:11, 10:18] = 0.0
    assert cue_share(att, BOX)[0] == 0.0
    peaked = _on_cue() + 1e-3
    assert cue_share(peaked * 1e4, BOX)[0] == pytest.approx(cue_share(peaked, BOX)[0], rel=1e-6)


@pytest.mark.parametrize("att, box, words", [
    (np.zeros((H, W)), BOX, "no mass"),
    (np.ones((H, W)), [100.0, 100.0, 5.0, 5.0], "outside"),
    (np.ones((2, H, W)), BOX, "one [H, W] map"),
])
def test_bad_input_is_one_line_naming_it(att, box, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        cue_share(att, box)


def test_summary_per_block_and_stage():
    c3, c4 = BlockRef(2, 0, "a"), BlockRef(3, 1, "b")
    uniform = np.full((H, W), 1.0, np.float32)
    maps = [ImageMaps(image=np.zeros((H, W, 3)), image_id=i, gc={c3: _on_cue(), c4: uniform}) for i in (7, 9)]
    summary = summarise(maps, {7: BOX, 9: BOX})
    by_block = {b["block"]: b for b in summary["blocks"]}
    assert summary["images"] == 2 and by_block["c3 b0"]["images"] == 2
    assert by_block["c3 b0"]["share"] == pytest.approx(1.0) and by_block["c3 b0"]["ratio"] == pytest.approx(50.0)
    assert by_block["c4 b1"]["ratio"] == pytest.approx(1.0, rel=1e-5)
    assert [s["stage"] for s in summary["stages"]] == ["c3", "c4"]
    assert "c3 (mean)" in format_table(summary) and "c4 b1" in format_table(summary)


def test_read_cues_from_the_annotation_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W, "gcrepro_cue": {"bbox": BOX, "category_id": 2}},
              {"id": 2, "file_name": "b.png", "height": H, "width": W}]
    (tmp_path / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": [{"id": 2, "name": "x"}]}))
    assert read_cues(tmp_path) == {1: BOX}
