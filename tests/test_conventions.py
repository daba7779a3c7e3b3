"""Conventions (paper = mmdetection v1, mmdet = mmdetection 2.x/3.x, torchvision): each part's behaviour
against hand-computed values, the parts the build wires in, and every row under every convention."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from gcrepro.engine.config import ConfigError
from gcrepro.entries import list_entries
from gcrepro.modeling.anchors import StridedAnchorGenerator
from gcrepro.modeling.build import CONVENTION_PRESETS, build_model, model_config
from gcrepro.modeling.config import CONVENTION_NAMES, ModelConfig
from gcrepro.modeling.conventions import CONVENTIONS
from gcrepro.modeling.geometry import BoxGeometry, DeltaBoxCoder
from gcrepro.modeling.masks import (
    mask_targets_crop_resize, mask_targets_roi_align, paste_masks_grid_sample, paste_masks_resized,
)
from gcrepro.modeling.poolers import LevelRoIAlign, roi_levels
from gcrepro.modeling.transform import DetectionTransform

from test_detectors import FAST, _images_and_targets

SQRT2 = math.sqrt(2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread (as tests/test_detectors.py), restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    """Row 1 at toy size under each convention (eval mode), by convention name."""
    torch.manual_seed(0)
    return {name: build_model(1, profile="toy", num_classes=5, box_detections_per_img=20, **CONVENTION_PRESETS[name],
                              **FAST).eval()
            for name in CONVENTION_NAMES}


# ------------------------------------------------------------------ configuration and wiring


def test_conventions_field_default_overrides_and_errors() -> None:
    assert ModelConfig().conventions == "paper" and set(CONVENTIONS) == set(CONVENTION_NAMES)
    assert model_config(1, conventions="mmdet").conventions == "mmdet"
    assert model_config(1, **CONVENTION_PRESETS["mmdet"]).roi_sampling_ratio == 0
    with pytest.raises(ConfigError, match=r"conventions='detectron2': expected one of paper\|mmdet\|torchvision"):
        model_config(1, conventions="detectron2")


def test_build_wires_each_conventions_parts(models) -> None:
    for name, model in models.items():
        tv = name == "torchvision"
        offset = 1.0 if name == "paper" else 0.0
        assert isinstance(model.transform, GeneralizedRCNNTransform)
        assert isinstance(model.transform, DetectionTransform) != tv
        assert isinstance(model.rpn.anchor_generator, StridedAnchorGenerator) != tv
        assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign) == tv
        assert isinstance(model.roi_heads.mask_roi_pool, MultiScaleRoIAlign) == tv
        assert isinstance(model.rpn.box_coder, DeltaBoxCoder) != tv
        assert isinstance(model.roi_heads.box_coder, DeltaBoxCoder) != tv
        assert model.rpn.geometry == model.roi_heads.geometry == BoxGeometry(offset)
        assert model.rpn.proposal_size_filter == CONVENTIONS[name].proposal_size_filter
        assert model.roi_heads.mask_targets is CONVENTIONS[name].mask_targets
        if not tv:
            assert model.transform.geometry == BoxGeometry(offset)
            assert model.roi_heads.box_roi_pool.pixel_offset == offset
            assert model.roi_heads.box_roi_pool.sampling_ratio == (0 if name == "mmdet" else 2)
    cascade = build_model(25, profile="toy", num_classes=5, conventions="paper", **FAST).roi_heads
    assert all(isinstance(c, DeltaBoxCoder) and c.geometry.pixel_offset == 1.0 for c in cascade.stage_box_coders)
    assert [c.weights for c in cascade.stage_box_coders] == [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                             (1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067)]


# ------------------------------------------------------------------ anchors


def test_anchors_of_one_level(models) -> None:
    """P2 (stride 4, size 32), ratios h/w 0.5, 1, 2: the first cell's anchors, then the next cell's."""
    w, h = 32 * SQRT2, 32 / SQRT2  # ratio 0.5: w = size / sqrt(r), h = size * sqrt(r)
    expected = {
        # v1: centre (4 - 1) / 2 = 1.5, corners centre -+ (side - 1) / 2, rounded
        "paper": [[round(1.5 - (w - 1) / 2), round(1.5 - (h - 1) / 2), round(1.5 + (w - 1) / 2),
                   round(1.5 + (h - 1) / 2)], [-14, -14, 17, 17],
                  [round(1.5 - (h - 1) / 2), round(1.5 - (w - 1) / 2), round(1.5 + (h - 1) / 2),
                   round(1.5 + (w - 1) / 2)]],
        "mmdet": [[-w / 2, -h / 2, w / 2, h / 2], [-16, -16, 16, 16], [-h / 2, -w / 2, h / 2, w / 2]],
        "torchvision": [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],  # centred at 0, rounded
    }
    assert expected["paper"][0] == [-21, -9, 24, 12]
    for name, model in models.items():
        feats = [torch.zeros(1, 1, 64 // s, 96 // s) for s in (4, 8, 16, 32)] + [torch.zeros(1, 1, 1, 2)]
        anchors = model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)]), feats)[0]
        first = torch.tensor(expected[name], dtype=torch.float32)
        torch.testing.assert_close(anchors[:3], first, rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(anchors[3:6], first + torch.tensor([4.0, 0, 4, 0]), rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(anchors[3 * 24:3 * 24 + 3], first + torch.tensor([0.0, 4, 0, 4]),
                                   rtol=0, atol=1e-5, msg=name)  # next row: 96 / 4 = 24 cells per row


def test_p6_anchor_stride_is_64_in_mmdetection_conventions(models) -> None:
    """Padded 800 x 1216: P6 is 13 x 19. mmdetection steps 64 px; torchvision infers 800 // 13 = 61."""
    sizes = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    feats = [torch.zeros(1, 1, *s) for s in sizes]
    image = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    last_row = 3 * 19 * 12  # first anchor of P6's last row
    for name, step in (("mmdet", 64), ("paper", 64), ("torchvision", 61)):
        anchors = models[name].rpn.anchor_generator(image, feats)[0]
        p6 = anchors[-3 * 13 * 19:]
        assert (p6[last_row, 1] - p6[0, 1]).item() == 12 * step, name


# ------------------------------------------------------------------ box coder, IoU, NMS, clipping


def test_decode_known_deltas(models) -> None:
    """Box (10, 20, 29, 59), unit weights, deltas (0.1, -0.05, log 2, 0)."""
    box = torch.tensor([[10.0, 20.0, 29.0, 59.0]])
    deltas = torch.tensor([[0.1, -0.05, math.log(2.0), 0.0]])
    # v1: w = 20, h = 40, centre (19.5, 39.5) -> centre (21.5, 37.5), 40 x 40, corners centre -+ 19.5
    # continuous: w = 19, h = 39 -> centre (21.4, 37.55), 38 x 39, corners centre -+ (19, 19.5)
    expected = {"paper": [2.0, 18.0, 41.0, 57.0], "mmdet": [2.4, 18.05, 40.4, 57.05],
                "torchvision": [2.4, 18.05, 40.4, 57.05]}
    for name, model in models.items():
        got = model.rpn.box_coder.decode(deltas, [box]).reshape(4)
        torch.testing.assert_close(got, torch.tensor(expected[name]), rtol=0, atol=1e-4, msg=name)
        if name != "torchvision":  # encode inverts decode
            decoded = model.rpn.box_coder.decode(deltas, [box]).reshape(1, 4)
            torch.testing.assert_close(model.rpn.box_coder.encode_single(decoded, box), deltas, rtol=0, atol=1e-5)


def test_log_size_deltas_clamped_below_in_mmdetection_conventions(models) -> None:
    box = torch.tensor([[-50.0, -50.0, 50.0, 50.0]])  # centred at 0: float32 resolves a 0.005 px width
    deltas = torch.tensor([[0.0, 0.0, -10.0, 0.0]])  # exp(-10) ~ 4.5e-5; clamp exp(-log(1000/16)) = 0.016
    for name, expected_w in (("mmdet", 100 * 0.016), ("torchvision", 100 * math.exp(-10.0))):
        b = models[name].rpn.box_coder.decode(deltas, [box]).reshape(4)
        assert (b[2] - b[0]).item() == pytest.approx(expected_w, rel=1e-5), name
    b = models["paper"].rpn.box_coder.decode(deltas, [box]).reshape(4)
    assert (b[2] - b[0] + 1).item() == pytest.approx(101 * 0.016, rel=1e-5)  # v1: widths + 1


def test_iou_nms_and_clipping_geometry() -> None:
    """Boxes (0, 0, 9, 9), (5, 0, 14, 9): continuous IoU 36 / 126; v1 (10 x 10 pixels, 5 x 10 shared) 50 / 150."""
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    v1, cont = BoxGeometry(1.0), BoxGeometry(0.0)
    assert v1.iou(boxes[:1], boxes[1:]).item() == pytest.approx(50 / 150)
    assert cont.iou(boxes[:1], boxes[1:]).item() == pytest.approx(36 / 126)
    scores, idxs = torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64)
    assert v1.batched_nms(boxes, scores, idxs, 0.3).tolist() == [0]  # 1/3 > 0.3: suppressed
    assert cont.batched_nms(boxes, scores, idxs, 0.3).tolist() == [0, 1]  # 0.286 < 0.3: kept
    outside = torch.tensor([[-3.0, 5.0, 120.0, 90.0]])
    assert v1.clip(outside, (80, 100)).tolist() == [[0.0, 5.0, 99.0, 79.0]]
    assert cont.clip(outside, (80, 100)).tolist() == [[0.0, 5.0, 100.0, 80.0]]


# ------------------------------------------------------------------ RoI levels and RoIAlign


def test_roi_level_boundaries() -> None:
    """level = floor(log2(sqrt(w h) / 56 + 1e-6)) clamped to 0..3; v1 measures w, h with +1."""
    def level(box, offset):
        return roi_levels(torch.tensor([box]), pixel_offset=offset, num_levels=4).item()

    assert level([0, 0, 112, 112], 0.0) == 1 and level([0, 0, 111.9, 112], 0.0) == 0
    assert level([0, 0, 224, 224], 0.0) == 2 and level([0, 0, 448, 448], 0.0) == 3
    assert level([0, 0, 2000, 2000], 0.0) == 3 and level([0, 0, 2, 2], 0.0) == 0
    assert level([0, 0, 111, 111], 1.0) == 1 and level([0, 0, 110, 111], 1.0) == 0  # 112 vs sqrt(111 * 112)
    assert level([0, 0, 223, 223], 1.0) == 2


def _linear_features(channels: int = 1) -> dict[str, torch.Tensor]:
    """P2-P5 of a 128 x 128 image; feature value x + 1000 y at feature pixel (x, y)."""
    out = {}
    for k, s in enumerate((4, 8, 16, 32)):
        n = 128 // s
        y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64),
                              indexing="ij")
        out[str(k)] = (x + 1000 * y).expand(1, channels, n, n).contiguous()
    return out


@pytest.mark.parametrize("name", CONVENTION_NAMES)
def test_roi_align_of_a_linear_feature_map(models, name: str) -> None:
    """Box (8, 4, 40, 36) on P2 (stride 4), 7 x 7 bins: bilinear sampling of a linear map gives the mean
    sample position, the bin centre. Start and size in feature pixels:
    mmdet (aligned): x 8/4 - 0.5 = 1.5, size 8; paper (v1): x 2, size (40 + 1)/4 - 2 = 8.25;
    torchvision: x 2, size 8."""
    start_size = {"mmdet": ((1.5, 8.0), (0.5, 8.0)), "paper": ((2.0, 8.25), (1.0, 8.25)),
                  "torchvision": ((2.0, 8.0), (1.0, 8.0))}[name]
    (x0, wx), (y0, wy) = start_size
    centres_x = x0 + (torch.arange(7, dtype=torch.float64) + 0.5) * wx / 7
    centres_y = y0 + (torch.arange(7, dtype=torch.float64) + 0.5) * wy / 7
    expected = centres_x[None, :] + 1000 * centres_y[:, None]  # [7, 7]
    pool = models[name].roi_heads.box_roi_pool
    got = pool(_linear_features(), [torch.tensor([[8.0, 4.0, 40.0, 36.0]], dtype=torch.float64)], [(128, 128)])
    torch.testing.assert_close(got[0, 0], expected, rtol=1e-9, atol=1e-6)


def test_v1_roi_align_clamps_inverted_rois_to_zero_size() -> None:
    """v1, box (20, 40, 17, 36): x2 + 1 < x1 and y2 + 1 < y1 give size 0, every sample at
    (20/4, 40/4) = (5, 10): value 10005 (torchvision's aligned=False would stretch to 1 feature pixel)."""
    pool = LevelRoIAlign(featmap_names=["0", "1", "2", "3"], strides=(4, 8, 16, 32), output_size=7,
                         sampling_ratio=2, pixel_offset=1.0)
    got = pool(_linear_features(), [torch.tensor([[20.0, 40.0, 17.0, 36.0]], dtype=torch.float64)])
    torch.testing.assert_close(got[0, 0], torch.full((7, 7), 10005.0, dtype=torch.float64), rtol=0, atol=1e-9)


# ------------------------------------------------------------------ masks


def test_paste_a_known_mask_into_a_known_box() -> None:
    """Box (10, 20, 50, 40) in a 64 x 64 image. An all-ones mask: mmdet (pixel centres x + 0.5 sampled,
    zero padding outside the mask) reaches 0.5 exactly on the box's 40 x 20 pixels; v1 fills the
    integer box's 41 x 21 inclusive pixels. The left half of the mask (cells 0..13): mmdet columns
    10..29 (pixel 29 samples cell 13.15, pixel 30 cell 13.85)."""
    ones, box = torch.ones(1, 1, 28, 28), torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[20:40, 10:50] = True
    assert torch.equal(paste_masks_grid_sample(ones, box, (64, 64))[0, 0] >= 0.5, inside)
    inside_v1 = torch.zeros(64, 64, dtype=torch.bool)
    inside_v1[20:41, 10:51] = True
    assert torch.equal(paste_masks_resized(ones, box, (64, 64))[0, 0] > 0.5, inside_v1)
    half = torch.zeros(1, 1, 28, 28)
    half[..., :14] = 1.0
    left = torch.zeros(64, 64, dtype=torch.bool)
    left[20:40, 10:30] = True
    assert torch.equal(paste_masks_grid_sample(half, box, (64, 64))[0, 0] >= 0.5, left)
    # v1, box (10, 20, 51, 40): 42 x 21 pixels; column j samples cell (j + 0.5) * 28/42 - 0.5, >= 0.5 up to j = 20
    left_v1 = torch.zeros(64, 64, dtype=torch.bool)
    left_v1[20:41, 10:31] = True
    got = paste_masks_resized(half, torch.tensor([[10.0, 20.0, 51.0, 40.0]]), (64, 64))[0, 0] > 0.5
    assert torch.equal(got, left_v1)


def test_mask_targets_of_a_known_box() -> None:
    """gt mask = the rectangle x in [16, 48), y in [8, 40) of a 64 x 64 image. An RoI equal to it: all
    ones. An RoI to x = 80, clipped (mmdet) or cut (v1's crop) at the image edge x = 64: the mask is
    32 of its 48 px, 18.7 of 28 cells: columns 0..18 are 1 (cell 18 is 2/3 mask), the rest 0."""
    gt = torch.zeros(1, 64, 64, dtype=torch.uint8)
    gt[0, 8:40, 16:48] = 1
    matched = torch.zeros(2, dtype=torch.int64)
    mmdet = mask_targets_roi_align(gt, torch.tensor([[16.0, 8.0, 48.0, 40.0], [16.0, 8.0, 80.0, 40.0]]), matched, 28)
    v1 = mask_targets_crop_resize(gt, torch.tensor([[16.0, 8.0, 47.0, 39.0], [16.0, 8.0, 79.0, 39.0]]), matched, 28)
    for name, targets in (("mmdet", mmdet), ("paper", v1)):
        assert targets[0].eq(1).all(), name
        assert targets[1, :, :19].eq(1).all() and targets[1, :, 19:].eq(0).all(), name


# ------------------------------------------------------------------ RPN and detections


def test_rpn_min_size_filter(models) -> None:
    """Four far-apart proposals of widths 0, 5e-4, 0.5, 2 px: torchvision keeps w >= 1e-3, mmdetection
    2.x/3.x keeps w > 0, v1 (min_bbox_size=0) keeps all."""
    widths = [0.0, 5e-4, 0.5, 2.0]
    proposals = torch.tensor([[[20.0 * i, 10.0, 20.0 * i + w, 30.0] for i, w in enumerate(widths)]])  # [1, 4, 4]
    objectness = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    expected = {"torchvision": [0.5, 2.0], "mmdet": [5e-4, 0.5, 2.0], "paper": widths}
    for name, model in models.items():
        boxes, scores = model.rpn.filter_proposals(proposals, objectness, [(100, 100)], [4])
        got = (boxes[0][:, 2] - boxes[0][:, 0]).tolist()
        assert got == pytest.approx(expected[name], abs=1e-6), name
        assert torch.all(scores[0][1:] <= scores[0][:-1])


def test_detections_keep_small_boxes_only_in_mmdetection_conventions(models) -> None:
    """One RoI decoded to a 0.005 px wide box: torchvision drops boxes under 1e-2, mmdetection keeps them."""
    for name, expected in (("torchvision", 0), ("mmdet", 1), ("paper", 1)):
        heads = models[name].roi_heads
        logits = torch.tensor([[0.0, 10.0, 0.0, 0.0, 0.0]])  # class 1
        deltas = torch.zeros(1, 20)
        box = torch.tensor([[10.0, 10.0, 10.005, 40.0]])
        boxes, scores, labels = heads.postprocess_detections(logits, deltas, [box], [(64, 64)])
        assert len(boxes[0]) == expected and (expected == 0 or labels[0].tolist() == [1]), name


# ------------------------------------------------------------------ transform


def test_resize_rule(models) -> None:
    """Fit into (min 64, max 96). 45 x 31: scale 64/31, height 92.9: mmcv int(92.9 + 0.5) = 93,
    torchvision floor 92. 31 x 47: scale 96/47, width 47 * 96/47 = 95.999... in floats: mmcv 96, torchvision 95."""
    expected = {(45, 31): {"paper": (93, 64), "mmdet": (93, 64), "torchvision": (92, 64)},
                (31, 47): {"paper": (63, 96), "mmdet": (63, 96), "torchvision": (63, 95)}}
    for size, by_name in expected.items():
        for name, model in models.items():
            images, _ = model.transform([torch.rand(3, *size)])
            assert images.image_sizes[0] == by_name[name], (size, name)
            assert all(side % 32 == 0 for side in images.tensors.shape[-2:])  # padded to a multiple of 32


def test_paper_boxes_are_inclusive_inside_the_model(models) -> None:
    """gt (10, 8, 30, 24) in a 32 x 48 image, scale 2: inside the model v1's inclusive (10, 8, 29, 23) x 2;
    detections go back the inverse way and leave continuous; the mask fills the 20 x 16 inclusive box."""
    model = models["paper"]
    target = dict(boxes=torch.tensor([[10.0, 8.0, 30.0, 24.0]]), labels=torch.tensor([1]),
                  masks=torch.ones(1, 32, 48, dtype=torch.uint8))
    model.transform.train()
    try:
        images, targets = model.transform([torch.rand(3, 32, 48)], [target])
    finally:
        model.transform.eval()
    assert images.image_sizes[0] == (64, 96)
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[20.0, 16.0, 58.0, 46.0]]))
    assert targets[0]["masks"].shape[-2:] == images.tensors.shape[-2:]  # padded with the image
    result = [dict(boxes=torch.tensor([[20.0, 16.0, 58.0, 46.0]]), labels=torch.tensor([1]),
                   scores=torch.tensor([0.9]), masks=torch.ones(1, 1, 28, 28))]
    out = model.transform.postprocess(result, [(64, 96)], [(32, 48)])[0]
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 8.0, 30.0, 24.0]]))
    inside = torch.zeros(32, 48, dtype=torch.bool)
    inside[8:24, 10:30] = True
    assert torch.equal(out["masks"][0, 0] > 0.5, inside)


def test_forward_preprocessed_is_forward_after_the_transform(models) -> None:
    images, _ = _images_and_targets()
    for name, model in models.items():
        with torch.no_grad():
            expected = model(images)
            batch, _ = model.transform(images)
            got = model.forward_preprocessed(batch, [tuple(im.shape[-2:]) for im in images])
        for e, g in zip(expected, got):
            for k in ("boxes", "labels", "scores", "masks"):
                assert torch.equal(e[k], g[k]), (name, k)


# ------------------------------------------------------------------ every row, every convention


@pytest.mark.parametrize("row", [e.row for e in list_entries()])
def test_every_row_trains_and_detects_under_every_convention(row: int) -> None:
    images, targets = _images_and_targets()
    for name in CONVENTION_NAMES:
        torch.manual_seed(0)
        model = build_model(row, profile="toy", num_classes=5, box_detections_per_img=10,
                            **CONVENTION_PRESETS[name], **FAST)
        with torch.no_grad():
            losses = model.train()(images, targets)
            assert losses and all(torch.isfinite(v) for v in losses.values()), (name, losses)
            out = model.eval()(images)
        for d, im in zip(out, images):
            assert d["masks"].shape[1:] == (1, *im.shape[1:]) and len(d["boxes"]) <= 10, name
            assert torch.isfinite(d["boxes"]).all() and torch.all(d["boxes"][:, 2:] >= d["boxes"][:, :2]), name


def test_paper_convention_trains(models) -> None:
    """Two SGD steps of row 1 (v1 geometry, train and test): finite losses and gradients."""
    torch.manual_seed(0)
    model = build_model(1, profile="toy", num_classes=5, **FAST).train()
    assert model.gcrepro_config.conventions == "paper"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, targets = _images_and_targets()
    for _ in range(2):
        losses = model(images, targets)
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        optimizer.zero_grad()
        total.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
