"""GC attention maps: geometry back to the image, the non-local comparison, capture on a real model, figures."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import gcrepro
from gcrepro.analysis import attention_maps as am
from gcrepro.analysis import attention_plots as ap
from gcrepro.ops.reference import gc_attention


def test_to_image_crops_padding_and_finds_the_hot_cell() -> None:
    # Image 100 x 150 resized to 160 x 240 (x1.6), padded to 160 x 256; stride 16 -> grid 10 x 16.
    geometry = dict(padded_hw=(160, 256), resized_hw=(160, 240), image_hw=(100, 150))
    grid = torch.zeros(10, 16)
    grid[5, 13] = 1.0  # centre at padded pixel (88, 216) -> image (55, 135)
    heat = am.to_image(grid, **geometry)
    assert heat.shape == (100, 150)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert abs(y - 55) <= 3 and abs(x - 135) <= 3
    padding_only = torch.zeros(10, 16)
    padding_only[5, 15] = 1.0  # padded columns 240..256: outside the image
    edge = am.to_image(padding_only, **geometry)
    assert edge.max() < 0.55 * heat.max()  # its peak (padded x 248) is cropped; only the bilinear tail is left
    assert np.unravel_index(edge.argmax(), edge.shape)[1] == 149  # at the image's right edge


def test_nonlocal_maps_are_softmax_over_keys_of_scaled_dot_products() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 5, 7)
    maps = am.nonlocal_maps(x, [(1, 2), (4, 6)])
    assert maps.shape == (2, 5, 7)
    keys = x.reshape(8, 35)
    expected = torch.softmax(keys[:, 1 * 7 + 2] @ keys / 8**0.5, dim=0).reshape(5, 7)
    torch.testing.assert_close(maps[0], expected)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    same = np.stack([np.ones((4, 4)), np.ones((4, 4))])
    assert am.query_similarity(same) == pytest.approx(1.0)
    apart = np.zeros((2, 4, 4))
    apart[0, 0, 0] = apart[1, 3, 3] = 1.0
    assert am.query_similarity(apart) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def captured() -> tuple[torch.nn.Module, am.ImageMaps]:
    torch.manual_seed(0)
    model = gcrepro.build_model("mask_rcnn_r50_fpn_gc_r4_1x", num_classes=4, profile="toy").eval()
    image = torch.rand(3, 90, 130)
    blocks = am.gc_blocks(model)
    maps = am.capture_maps(model, image, image_id=5, boxes=torch.tensor([[10.0, 20.0, 60.0, 70.0]]),
                           nl_block=blocks[-4])
    return model, maps


def test_capture_maps_on_a_real_detector(captured) -> None:
    model, maps = captured
    blocks = am.gc_blocks(model)
    assert [(b.stage, b.block_index) for b in blocks] == (
        [(2, j) for j in range(4)] + [(3, j) for j in range(6)] + [(4, j) for j in range(3)])
    assert set(maps.gc) == set(blocks) and maps.image.shape == (90, 130, 3)
    for heat in maps.gc.values():
        assert heat.shape == (90, 130) and heat.min() >= 0.0
    assert maps.nl_block == am.BlockRef(stage=3, block_index=5, name=blocks[-4].name)
    assert maps.nl.shape == (3, 90, 130)  # 1 object centre + background corner + centre
    assert maps.nl_queries[0] == (45.0, 35.0)


def test_nonlocal_input_is_the_gc_blocks_input(captured) -> None:
    # The GC map recomputed from the hooked input (bn3 output) equals the map the block captured.
    model, maps = captured
    block = model.get_submodule(maps.nl_block.name)
    inputs = {}
    bn3 = model.get_submodule(maps.nl_block.name.rpartition(".")[0] + ".bn3")
    handle = bn3.register_forward_hook(lambda _m, _a, out: inputs.__setitem__("x", out))
    with torch.no_grad():
        image_list, _ = model.transform([torch.from_numpy(maps.image).permute(2, 0, 1).contiguous()])
        model.backbone(image_list.tensors)
    handle.remove()
    recomputed = gc_attention(inputs["x"], block.conv_mask.weight, block.conv_mask.bias)[0, 0]
    geometry = dict(padded_hw=tuple(image_list.tensors.shape[-2:]), resized_hw=tuple(image_list.image_sizes[0]),
                    image_hw=(90, 130))
    np.testing.assert_allclose(am.to_image(recomputed, **geometry), maps.gc[maps.nl_block], rtol=1e-4, atol=1e-7)


def test_figures_and_widget(captured, tmp_path) -> None:
    _, maps = captured
    grid = ap.attention_grid(maps)
    panels = [ax for ax in grid.axes if ax.get_label() != "<colorbar>"]
    assert sum(ax.axison or bool(ax.images) for ax in panels) == 13  # one panel per block, empty cells hidden
    assert len(panels) == 3 * 6
    assert not any(ax.patches for ax in panels)
    outlined = ap.attention_grid(maps, outline=[10.0, 20.0, 30.0, 15.0])  # a context image's cue box
    boxes = [p for ax in outlined.axes for p in ax.patches]
    assert len(boxes) == 13 and {(b.get_x(), b.get_y(), b.get_width(), b.get_height()) for b in boxes} == {(9.5, 19.5, 30.0, 15.0)}
    panel = ap.nonlocal_panel(maps)
    panels = [ax for ax in panel.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and "GC (one map)" in panels[-1].get_title()
    for fig in (grid, panel):  # one colour bar for the 0..1 scale, labelled, and the reading guide
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1 and "highest" in bars[0].get_ylabel()
        assert "red = " in fig.get_supxlabel().lower()
    paths = ap.save_all([maps], tmp_path)
    assert [p.name for p in paths] == ["gc_image5.png", "nonlocal_image5.png"]
    view = ap.interactive_view([maps])
    image_w, stage_w, block_w = view.children[0].children
    picture = view.children[1]
    assert [w.description for w in (image_w, stage_w, block_w)] == ["image", "stage", "block"]
    assert "gcrepro-attention-stage" in stage_w._dom_classes and "gcrepro-attention-picture" in picture._dom_classes
    assert block_w.max == 3 and bytes(picture.value).startswith(b"\x89PNG")  # c3 has 4 blocks
    # Shown at a fixed size inside WIDGET_BOX (plus colour bar and title), drawn at WIDGET_SCALE x that size.
    width, height = (int(v.removesuffix("px")) for v in (picture.layout.width, picture.layout.height))
    assert width <= ap.WIDGET_BOX[0] + 90 and height <= ap.WIDGET_BOX[1] + 30
    with Image.open(io.BytesIO(bytes(picture.value))) as im:
        assert im.size == (width * ap.WIDGET_SCALE, height * ap.WIDGET_SCALE)
    first = bytes(picture.value)
    stage_w.value = 3
    assert block_w.max == 5 and bytes(picture.value) != first  # c4 has 6; the picture was redrawn


def test_stored_maps_round_trip_within_one_step(captured, tmp_path) -> None:
    from gcrepro.analysis import attention_store

    _, maps = captured
    loaded = attention_store.load_maps(attention_store.save_maps(maps, tmp_path))
    assert loaded.image_id == 5 and list(loaded.gc) == sorted(maps.gc) and loaded.nl_block == maps.nl_block
    assert np.abs(loaded.image - maps.image).max() <= 0.5 / 255 + 1e-6  # uint8 image
    for block, heat in maps.gc.items():  # 8-bit steps of each map's own range
        step = (heat.max() - heat.min()) / 255
        assert np.abs(loaded.gc[block] - heat).max() <= 0.51 * step + 1e-6 * heat.max()
    np.testing.assert_allclose(loaded.nl_queries, maps.nl_queries)
    assert loaded.nl.shape == maps.nl.shape
