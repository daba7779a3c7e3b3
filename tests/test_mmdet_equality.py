"""gcrepro equals mmdetection 3.3.0 on mmdetection's own GCNet models (issue 11 §7).

For three ``configs/gcnet`` models (R50 GC r16 Mask R-CNN, R101 GC r4 Mask R-CNN, X101-32x4d
Cascade Mask R-CNN with DCN and GC r16), each at two non-square sizes of one seeded synthetic
image (800x1067, and a 520x360 portrait crop):

    mmdetection model (mmdet_oracle.build) -> seeded, calibrated weights (mmdet_oracle.weights)
    -> mmdetection checkpoint file -> gcrepro.convert.convert_checkpoint -> build_detector + strict load

Both are fed the SAME tensor (mmdetection's test pipeline and data preprocessor) and compared
stage by stage: FPN features, RPN proposals, final boxes / scores / labels, masks at the original
resolution. Then the original-GCNet (v1) layout: mmdetection -> v1 -> gcrepro equals mmdetection ->
gcrepro, and mmdetection's own upgrade tool takes the v1 state dict back to mmdetection's. Last, each
codebase preprocesses the uint8 image itself (measured, loosely bounded; see the test).

The weights are calibrated per (model, image), so every case has tens of detections with scores
spread over (0.05, ~0.4) and none near the threshold. mmdetection runs on CPU with a stand-in for the
compiled ``mmcv._ext`` (``mmdet_oracle.mmcv_ext_standin``); every module is mmdetection's own.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.filterwarnings(  # mmdetection's own FCNMaskHead (new_tensor of a tensor)
    "ignore:To copy construct from a tensor:UserWarning")

pytest.importorskip("mmdet", reason="mmdetection 3.3.0 is the oracle: pip install -e '.[dev]'")
pytest.importorskip("mmengine", reason="mmdetection 3.3.0 needs mmengine: pip install -e '.[dev]'")

import mmdet_oracle  # noqa: E402, F401  (installs the mmcv._ext stand-in before mmcv.ops is imported)
from mmdet_oracle.build import build_mmdet  # noqa: E402
from mmdet_oracle.checkpoint import write_mmdet_checkpoint  # noqa: E402
from mmdet_oracle.compare import box_error, mask_iou, match_boxes, relative_error  # noqa: E402
from mmdet_oracle.images import Batch, mmdet_batch, synthetic_image  # noqa: E402
from mmdet_oracle.run import Outputs, gcrepro_outputs, mmdet_outputs  # noqa: E402
from mmdet_oracle.v1 import mmdet_upgrade, upgraded_by_the_tool, write_v1_checkpoint  # noqa: E402
from mmdet_oracle.weights import seed_weights  # noqa: E402

# key -> (mmdetection config in configs/gcnet, the gcrepro table entry it is)
MODELS = {
    "r50-gc-r16": ("mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco", "mask_rcnn_r50_fpn_gc_r16_1x"),
    "r101-gc-r4": ("mask-rcnn_r101-gcb-r4-c3-c5_fpn_1x_coco", "mask_rcnn_r101_fpn_gc_r4_1x"),
    "x101-dcn-gc-r16-cascade": ("cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco",
                                "cascade_mask_rcnn_x101_32x4d_fpn_dcn_syncbn_gc_r16_1x"),
}
IMAGE = dict(height=600, width=800, seed=1)  # the synthetic image
# key -> (rows, columns of the image, test scale (long, short) of mmdetection's keep-ratio Resize)
SIZES = {
    "800x1067": ((slice(None), slice(None)), (1333, 800)),  # 600x800 -> 800x1067, padded to 800x1088
    "520x360": ((slice(100, 490), slice(470, 740)), (1333, 360)),  # 390x270 portrait -> 520x360, padded 544x384
}
WEIGHT_SEED = 0
CASES = [(m, s) for m in MODELS for s in SIZES]

# Measured on one x86 CPU (2 threads) the errors are 30x or more below these (features <= 6e-6, boxes
# <= 4e-6 of their size, scores <= 1e-5, mask IoU >= 0.999); a convention or weight out of place shows
# up far above them (cascade stage-3 box stds 1/30 instead of 0.033: boxes 5e-4, mask IoU 0.98).
FEATURE_RTOL = 1e-4  # per level, relative to the level's largest magnitude
BOX_RTOL = 1e-4  # matched box coordinates, relative to the box's longer side
SCORE_ATOL = 1e-4  # matched detection and proposal scores (probabilities)
MASK_MIN_IOU = 0.99  # per matched detection
PROPOSAL_MIN_MATCH = 0.98  # RPN proposals matched one to one at IoU >= 0.9 (NMS near-ties may differ)


@dataclasses.dataclass
class Case:
    mm_out: Outputs
    gc_out: Outputs
    conv: object  # gcrepro.convert.Converted
    batch: Batch
    checkpoint: object  # path of the mmdetection checkpoint


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def image(size: str):
    (rows, cols), _ = SIZES[size]
    return synthetic_image(IMAGE["height"], IMAGE["width"], seed=IMAGE["seed"])[rows, cols]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """(model, size) -> Case, computed on first use and kept for the module."""
    from gcrepro.convert import convert_checkpoint
    from gcrepro.modeling.build import build_detector

    models: dict[str, object] = {}  # one mmdetection model per config, re-seeded per image
    done: dict[tuple[str, str], Case] = {}

    def get(model: str, size: str) -> Case:
        if (model, size) not in done:
            if model not in models:
                models[model] = build_mmdet(MODELS[model][0])
            mm = models[model]
            batch = mmdet_batch(mm, image(size), scale=SIZES[size][1])
            features = seed_weights(mm, seed=WEIGHT_SEED, batch=batch)
            mm_out = mmdet_outputs(mm.model, batch, features)
            path = write_mmdet_checkpoint(mm, tmp_path_factory.mktemp("mmdet") / f"{MODELS[model][0]}.pth")
            conv = convert_checkpoint(path)
            detector = build_detector(conv.model_config).eval()
            detector.load_state_dict(conv.state_dict, strict=True)
            gc_out = gcrepro_outputs(detector, batch, mask_threshold=conv.model_config.mask_threshold)
            done[model, size] = Case(mm_out=mm_out, gc_out=gc_out, conv=conv, batch=batch, checkpoint=path)
        return done[model, size]

    return get


def matched_detections(case: Case):
    mm, gc = case.mm_out, case.gc_out
    return match_boxes(mm.boxes, gc.boxes, labels_a=mm.labels, labels_b=gc.labels, min_iou=0.9)


# --- the mmcv._ext stand-in: mmcv's argument conventions, against references that do not use it ---

def test_standin_deform_conv_is_a_conv_at_zero_offset_and_reads_dy_dx() -> None:
    """Non-square kernel, stride, padding and dilation (a swapped axis fails); a whole-pixel offset
    in mmcv's channel layout (dy, dx per tap) equals the plain conv of the input shifted by it."""
    import torch.nn.functional as F
    from mmcv.ops import DeformConv2d

    torch.manual_seed(0)
    conv = DeformConv2d(8, 6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2,
                        deform_groups=2)
    x = torch.randn(2, 8, 11, 13)
    offset = torch.zeros(2, 2 * 2 * 3 * 5, 6, 9)  # [N, deform_groups x kh x kw x (dy, dx), Ho, Wo]
    want = F.conv2d(x, conv.weight, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    assert relative_error(conv(x, offset), want) <= 1e-5
    # offset (dy, dx) = (1, 0) or (0, 1) everywhere: the conv of the input moved by one pixel inside its
    # zero padding (top/bottom or left/right padding 1 less / 1 more)
    for axis, pads in ((0, (2, 2, 0, 2)), (1, (1, 3, 1, 1))):
        offset = torch.zeros(2, 2 * 2 * 3 * 5, 6, 9)
        offset[:, axis::2] = 1.0  # channels (dy, dx) per tap
        want = F.conv2d(F.pad(x, pads), conv.weight, stride=(2, 1), dilation=(1, 2), groups=2)
        assert relative_error(conv(x, offset), want) <= 1e-5


def test_standin_modulated_deform_conv_scales_by_its_mask() -> None:
    import torch.nn.functional as F
    from mmcv.ops import ModulatedDeformConv2d

    torch.manual_seed(0)
    conv = ModulatedDeformConv2d(4, 6, kernel_size=3, padding=1, bias=True)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(1, 4, 7, 9)
    got = conv(x, torch.zeros(1, 18, 7, 9), torch.full((1, 9, 7, 9), 0.25))
    want = 0.25 * F.conv2d(x, conv.weight, padding=1) + conv.bias.view(1, -1, 1, 1)
    assert relative_error(got, want) <= 1e-5


@pytest.mark.parametrize("aligned", [True, False])
def test_standin_roi_align_samples_bin_centres(aligned: bool) -> None:
    """On a linear ramp, bilinear sampling is exact and a bin's average is the ramp at the bin's
    centre: mmcv's RoIAlign (``aligned``: -0.5 px) with a non-square output and spatial scale 1/2."""
    from mmcv.ops import RoIAlign

    h, w = 20, 24
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ramp = (3.0 * ys + xs)[None, None]  # [1, 1, h, w]
    roi = torch.tensor([[0.0, 10.0, 8.0, 34.0, 26.0]])  # (batch index, x1, y1, x2, y2) in input pixels
    got = RoIAlign((3, 5), spatial_scale=0.5, sampling_ratio=0, aligned=aligned)(ramp, roi)[0, 0]  # [3, 5]
    shift = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (roi[0, 1:] * 0.5).tolist()
    cy = y1 - shift + (torch.arange(3) + 0.5) * (y2 - y1) / 3
    cx = x1 - shift + (torch.arange(5) + 0.5) * (x2 - x1) / 5
    assert relative_error(got, 3.0 * cy[:, None] + cx[None, :]) <= 1e-6


def test_standin_nms_suppresses_above_the_threshold_only() -> None:
    from mmcv.ops import nms

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 5], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])  # IoU(0, 1) = 0.818, IoU(0, 2) = 0.5 exactly
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2, 3]
    assert torch.equal(dets[:, 4], scores[keep])


def test_standin_refuses_what_it_does_not_provide() -> None:
    from mmcv.ops import bbox_overlaps, nms

    from mmdet_oracle.mmcv_ext_standin import StandinError

    boxes = torch.tensor([[0.0, 0, 10, 10]])
    with pytest.raises(StandinError, match="'bbox_overlaps' is not provided"):
        bbox_overlaps(boxes, boxes)
    with pytest.raises(StandinError, match="nms offset=1"):
        nms(boxes, torch.ones(1), 0.5, offset=1)


# --- mmdetection vs gcrepro on the same inputs ---

@pytest.mark.parametrize("model", MODELS)
def test_converted_as_mmdetection(cases, model: str) -> None:
    conv = cases(model, "520x360").conv
    assert (conv.layout, conv.entry) == ("mmdet", MODELS[model][1])
    assert conv.model_config.conventions == "mmdet"


@pytest.mark.parametrize("model,size", CASES)
def test_the_cases_are_not_trivial(cases, model: str, size: str) -> None:
    """Tens of detections, scores spread and clear of the 0.05 threshold, masks neither empty nor
    full: otherwise the comparisons below prove little."""
    out = cases(model, size).mm_out
    assert 10 <= len(out.scores) < 100
    assert out.scores.min() > 0.05 * 1.002 and out.scores.max() > 1.5 * out.scores.min()  # 0.2 %: 10x score noise
    fill = out.masks.flatten(1).sum(1).double() / ((out.boxes[:, 2:] - out.boxes[:, :2]).prod(1).double())
    assert ((fill > 0.1) & (fill < 0.95)).double().mean() > 0.8
    assert out.masks.flatten(1).sum(1).min() >= 100  # a pixel of float noise moves no IoU by 1 %
    assert len(out.proposals) >= 200


@pytest.mark.parametrize("model,size", CASES)
def test_features(cases, model: str, size: str) -> None:
    case = cases(model, size)
    errors = [relative_error(g, m) for g, m in zip(case.gc_out.features, case.mm_out.features)]
    assert [tuple(g.shape) for g in case.gc_out.features] == [tuple(m.shape) for m in case.mm_out.features]
    assert max(errors) <= FEATURE_RTOL, f"P2..P6 relative errors {errors}"


@pytest.mark.parametrize("model,size", CASES)
def test_proposals(cases, model: str, size: str) -> None:
    case = cases(model, size)
    mm, gc = case.mm_out, case.gc_out
    m = match_boxes(mm.proposals, gc.proposals, min_iou=0.9)
    assert m.rate >= PROPOSAL_MIN_MATCH, f"{m.rate:.4f} of {len(mm.proposals)} / {len(gc.proposals)} matched"
    assert box_error(mm.proposals[m.a], gc.proposals[m.b]).max() <= BOX_RTOL
    assert (mm.proposal_scores[m.a] - gc.proposal_scores[m.b]).abs().max() <= SCORE_ATOL


@pytest.mark.parametrize("model,size", CASES)
def test_detections(cases, model: str, size: str) -> None:
    case = cases(model, size)
    mm, gc = case.mm_out, case.gc_out
    m = matched_detections(case)
    assert m.rate == 1.0, f"{len(m.a)} of {len(mm.scores)} (mmdet) / {len(gc.scores)} (gcrepro) matched"
    assert box_error(mm.boxes[m.a], gc.boxes[m.b]).max() <= BOX_RTOL
    assert (mm.scores[m.a] - gc.scores[m.b]).abs().max() <= SCORE_ATOL
    assert torch.equal(mm.labels[m.a], gc.labels[m.b])


@pytest.mark.parametrize("model,size", CASES)
def test_masks(cases, model: str, size: str) -> None:
    case = cases(model, size)
    mm, gc = case.mm_out, case.gc_out
    m = matched_detections(case)
    assert mm.masks.shape[1:] == gc.masks.shape[1:] == case.batch.original_size
    ious = mask_iou(mm.masks[m.a], gc.masks[m.b])
    assert len(ious) == len(mm.scores) and ious.min() >= MASK_MIN_IOU, f"mask IoU min {ious.min():.4f}"


@pytest.mark.parametrize("model", MODELS)
def test_v1_round_trip(cases, model: str, tmp_path) -> None:
    """mmdetection -> v1 (gcrepro.convert.mmdet_to_v1) -> gcrepro equals mmdetection -> gcrepro, tensor by
    tensor; and mmdetection's own upgrade tool takes that v1 state dict back to mmdetection's."""
    from gcrepro.convert import convert_checkpoint, mmdet_to_v1

    case = cases(model, "520x360")
    mmdet_state = torch.load(case.checkpoint, weights_only=True)["state_dict"]
    v1_path = write_v1_checkpoint(mmdet_to_v1(mmdet_state), tmp_path / "v1.pth",
                                  cascade=case.conv.model_config.cascade, norm=case.conv.model_config.norm)
    via_v1 = convert_checkpoint(v1_path, entry=case.conv.entry)
    assert via_v1.layout == "gcnet_v1"
    assert via_v1.state_dict.keys() == case.conv.state_dict.keys()
    differ = [k for k, t in case.conv.state_dict.items() if not torch.equal(via_v1.state_dict[k], t)]
    assert not differ, f"{len(differ)} tensors differ, first {differ[:3]}"

    upgraded = mmdet_upgrade(v1_path, tmp_path / "upgraded.pth")
    # mmcv's DeformConv2dPack renames v1's DCN offset conv when it loads a state dict without a version
    upgraded = {k.replace(".conv2_offset.", ".conv2.conv_offset."): t for k, t in upgraded.items()}
    assert upgraded.keys() == mmdet_state.keys()
    agnostic = case.conv.model_config.cascade  # the cascade's box heads regress class-agnostically
    differ = [k for k, t in mmdet_state.items()
              if not torch.equal(upgraded[k], upgraded_by_the_tool(k, t, class_agnostic=agnostic))]
    assert not differ, f"{len(differ)} tensors differ after mmdetection's upgrade, first {differ[:3]}"


def test_own_preprocessing(cases) -> None:
    """Each codebase preprocesses the uint8 image itself. mmdetection resizes the uint8 BGR image with
    cv2 (fixed-point bilinear, rounded to uint8) and then normalises; gcrepro normalises and resizes
    the float image with torch's bilinear: same size (mmcv's rounding), inputs about 0.3 grey levels
    apart (max 0.8). These random-weight models amplify that (measured: 85-95 % of detections keep
    their twin, boxes ~0.2-0.5 px apart, mask IoU ~0.9); the bounds below only catch a gross error
    (another size, boxes or masks not mapped back to the original image)."""
    from gcrepro.modeling.build import build_detector

    case = cases("r50-gc-r16", "800x1067")
    detector = build_detector(case.conv.model_config).eval()
    detector.load_state_dict(case.conv.state_dict, strict=True)
    pixels = torch.from_numpy(image("800x1067")).permute(2, 0, 1).float() / 255  # [3, 600, 800] RGB
    with torch.no_grad():
        resized, _ = detector.transform([pixels])
        det = detector([pixels])[0]
    assert resized.image_sizes == [case.batch.image_size] and resized.tensors.shape == case.batch.inputs.shape
    h, w = case.batch.image_size
    grey = ((resized.tensors - case.batch.inputs)[..., :h, :w].abs() * 58.4).mean()  # ~grey levels (std / 255)
    mm = case.mm_out
    masks = det["masks"][:, 0] >= case.conv.model_config.mask_threshold
    m = match_boxes(mm.boxes, det["boxes"], labels_a=mm.labels, labels_b=det["labels"] - 1, min_iou=0.5)
    px = (mm.boxes[m.a] - det["boxes"][m.b]).abs().max(dim=1).values
    ious = mask_iou(mm.masks[m.a], masks[m.b])
    print(f"own preprocessing: input |diff| {grey:.2f} grey levels; {len(mm.scores)} mmdet / {len(det['scores'])} "
          f"gcrepro detections, matched {m.rate:.3f}; box |diff| px median {px.median():.3f} max {px.max():.3f}; "
          f"score |diff| max {(mm.scores[m.a] - det['scores'][m.b]).abs().max():.4f}; mask IoU median "
          f"{ious.median():.4f} min {ious.min():.4f}")
    assert grey <= 1.0
    assert m.rate >= 0.75 and px.median() <= 1.0 and ious.median() >= 0.8
