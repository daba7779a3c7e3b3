"""Detectors: row 1 equals torchvision's Mask R-CNN, all 30 rows train, cascade semantics, configs."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import DeformConv2d, FrozenBatchNorm2d
from torchvision.ops import boxes as box_ops

import gcrepro
from gcrepro.entries import list_entries
from gcrepro.engine.config import ConfigError
from gcrepro.modeling.build import FIELD_NAMES, TORCHVISION_CONVENTIONS, ModelConfig, build_model, model_config
from gcrepro.profiles import PROFILES
from gcrepro.modeling.cascade import CascadeRoIHeads
from gcrepro.modeling.context_block import ContextBlock
from gcrepro.modeling.geometry import BoxGeometry
from gcrepro.modeling.heads import UpstreamRegionProposalNetwork
from gcrepro.modeling.norm import FrozenStatsBatchNorm2d

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a shared, busy CPU OpenMP's spinning threads
    make these tests ~8x slower; run this module single-threaded and restore the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tiny and fast: the structure of every row is kept, only input scale and sample counts shrink.
FAST = dict(min_size=64, max_size=96, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_batch_size_per_image=32)


def _images_and_targets(sizes=((64, 80), (72, 64)), num_classes: int = 5):
    g = torch.Generator().manual_seed(1)
    images, targets = [], []
    for h, w in sizes:
        images.append(torch.rand(3, h, w, generator=g))
        boxes = torch.tensor([[0.06, 0.08, 0.62, 0.70], [0.30, 0.15, 0.95, 0.85]]) * torch.tensor([w, h, w, h])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for k, b in enumerate(boxes.round().int().tolist()):
            masks[k, b[1]:b[3], b[0]:b[2]] = 1
        labels = torch.tensor([1, num_classes - 1], dtype=torch.int64)
        targets.append(dict(boxes=boxes, labels=labels, masks=masks))
    return images, targets


# ------------------------------------------------------------------ row 1 == torchvision


class _FrozenBatchNorm2dEvalKernel(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (its buffers and keys) computed by batch_norm's eval kernel, as ours and
    mmdetection's (BatchNorm2d with norm_eval=True) compute it. torchvision's own x * scale + shift rounds
    differently in the last bits (test_backbone compares the two backbones within rounding); an untrained
    detector's near-tie scores carry such bits across NMS and top-k into other boxes, so the detector-level
    comparisons below run one norm arithmetic on both sides."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _torchvision_peer(**kwargs) -> MaskRCNN:
    """``maskrcnn_resnet50_fpn(weights_backbone=ResNet50_Weights.IMAGENET1K_V1)`` without the download:
    the same three calls it makes (FrozenBatchNorm2d backbone, 3 trainable layers, MaskRCNN)."""
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=_FrozenBatchNorm2dEvalKernel), 3)
    return MaskRCNN(backbone, num_classes=91, **kwargs)


# Smaller inputs and sample counts than the paper for speed, the same for both models.
PEER_FAST = dict(min_size=128, max_size=192, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
                 rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)
PEER_SIZES = ((150, 190), (180, 140))


def _losses(model: nn.Module, images, targets) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(123)  # the samplers draw random permutations
    with torch.no_grad():  # the loss values are compared; no graph needed
        return model(images, targets)


@pytest.fixture(scope="module")
def row1():
    """torchvision's peer, our row 1 with its weights and ``conventions="torchvision"`` (plus torchvision's
    training rules: TORCHVISION_CONVENTIONS), and the peer's losses."""
    torch.manual_seed(0)
    peer = _torchvision_peer(**PEER_FAST)
    with torch.no_grad():  # non-trivial frozen statistics; confident class scores so detections survive 0.05
        for m in peer.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        peer.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    ours = build_model(1, num_classes=91, **PEER_FAST, **TORCHVISION_CONVENTIONS)
    ours.load_state_dict(peer.state_dict(), strict=True)
    images, targets = _images_and_targets(sizes=PEER_SIZES, num_classes=91)
    return dict(peer=peer, ours=ours, images=images, targets=targets,
                peer_losses=_losses(peer, images, targets))


def test_row1_train_losses_equal_torchvision(row1) -> None:
    ours, peer, expected = row1["ours"], row1["peer"], row1["peer_losses"]
    got = _losses(ours, row1["images"], row1["targets"])
    assert set(got) == set(expected) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                                         "loss_rpn_box_reg"}
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    # The same parameters train (stem + layer1 frozen in both), except the BN affine of layers 2-4:
    # fixBN trains it (SPEC §2, upstream norm_eval with requires_grad=True); FrozenBatchNorm2d cannot.
    peer_trainable = {n for n, p in peer.named_parameters() if p.requires_grad}
    ours_trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    bn_affine = {n for n in ours_trainable if n.startswith("backbone.body.layer")
                 and (".bn" in n or ".downsample.1." in n)}
    assert ours_trainable - bn_affine == peer_trainable
    assert bn_affine and all(n.startswith(("backbone.body.layer2", "backbone.body.layer3", "backbone.body.layer4"))
                             for n in bn_affine)
    assert not any(n.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1."))
                   for n in ours_trainable)


def test_row1_detections_equal_torchvision(row1) -> None:
    peer, ours = row1["peer"], row1["ours"]
    with torch.no_grad():
        expected, got = peer.eval()(row1["images"]), ours.eval()(row1["images"])
    assert sum(len(d["boxes"]) for d in expected) > 0, "the peer detected nothing: the comparison would be empty"
    for e, o in zip(expected, got):
        assert set(o) == {"boxes", "labels", "scores", "masks"}
        torch.testing.assert_close(o["boxes"], e["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(o["labels"], e["labels"], rtol=0, atol=0)
        torch.testing.assert_close(o["scores"], e["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(o["masks"], e["masks"], rtol=1e-4, atol=1e-5)


def test_row1_upstream_box_beta_changes_only_the_box_loss(row1) -> None:
    assert build_model(1, profile="toy").roi_heads.smooth_l1_beta == 1.0  # the upstream default reaches the heads
    ours, expected = row1["ours"], row1["peer_losses"]
    ours.roi_heads.smooth_l1_beta = 1.0
    try:
        got = _losses(ours, row1["images"], row1["targets"])
    finally:
        ours.roi_heads.smooth_l1_beta = TORCHVISION_CONVENTIONS["box_smooth_l1_beta"]
    for k in ("loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    assert got["loss_box_reg"].item() < expected["loss_box_reg"].item()  # beta 1 < beta 1/9 for small deltas


def test_upstream_defaults_differ_from_torchvision_where_documented() -> None:
    c = ModelConfig()
    assert c.conventions == "paper"  # mmdetection v1 geometry (gcrepro.modeling.conventions)
    assert c.box_smooth_l1_beta == 1.0 and c.rpn_allowed_border == 0.0 and c.rpn_min_pos_iou == 0.3
    assert TORCHVISION_CONVENTIONS["conventions"] == "torchvision" and set(TORCHVISION_CONVENTIONS) <= set(FIELD_NAMES)
    assert all(getattr(c, k) != v for k, v in TORCHVISION_CONVENTIONS.items())


# ------------------------------------------------------------------ RPN anchor targets


def _rpn(allowed_border, min_pos_iou) -> UpstreamRegionProposalNetwork:
    """torchvision's anchors, coder and box geometry; upstream's anchor-target rules as given."""
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead

    return UpstreamRegionProposalNetwork(
        anchor_generator=AnchorGenerator(((32,),), ((1.0,),)), head=RPNHead(8, 1), fg_iou_thresh=0.7,
        bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n=dict(training=10, testing=10), post_nms_top_n=dict(training=10, testing=10),
        nms_thresh=0.7, allowed_border=allowed_border, min_pos_iou=min_pos_iou, geometry=BoxGeometry(0.0),
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)), proposal_size_filter=None)


def test_rpn_targets_upstream_rules() -> None:
    anchors = torch.tensor([[-10.0, 0, 30, 40],  # crosses the left border
                            [0.0, 0, 40, 40],  # inside, the best inside match of gt 0
                            [50.0, 50, 90, 90],  # inside, IoU 0 with gt 0; best (low) match of gt 1
                            [60.0, 60, 100, 100],  # reaches the border (w = h = 100): x2 < w fails, ignored
                            [70.0, 10, 99, 30]])  # inside, IoU 0 with both
    gt = dict(boxes=torch.tensor([[-8.0, 0, 32, 40], [45.0, 45, 99, 199]]))
    up = _rpn(allowed_border=0.0, min_pos_iou=0.3)
    up._image_sizes = [(100, 100)]
    labels, matched = up.assign_targets_to_anchors([anchors], [gt])
    iou = box_ops.box_iou(gt["boxes"], anchors)
    assert iou[0, 0] > 0.9 and iou[1, 2] < 0.3 and iou[1].max() == iou[1, 2] > iou[1, 3]  # the set-up
    # outside ignored (upstream anchor_inside_flags: x1 >= 0, x2 < w); gt 1's best IoU < 0.3: no positive
    assert labels[0].tolist() == [-1.0, 1.0, 0.0, -1.0, 0.0]
    torch.testing.assert_close(matched[0][1], gt["boxes"][0])
    # torchvision rules: all anchors, gt 1 gets its best anchor whatever the IoU
    tv_labels, _ = _rpn(allowed_border=None, min_pos_iou=None).assign_targets_to_anchors([anchors], [gt])
    base_labels, _ = RegionProposalNetwork.assign_targets_to_anchors(up, [anchors], [gt])
    assert tv_labels[0].tolist() == base_labels[0].tolist() == [1.0, -1.0, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------ every row


def _param(model: nn.Module, name: str) -> torch.Tensor:
    return dict(model.named_parameters())[name]


@pytest.mark.parametrize("row", [e.row for e in list_entries()])
def test_every_row_builds_and_trains_in_toy_profile(row: int) -> None:
    entry = gcrepro.get_entry(row)
    torch.manual_seed(0)
    model = build_model(row, profile="toy", num_classes=5, **FAST)
    assert model.gcrepro_config == model_config(row, profile="toy", num_classes=5, **FAST)
    assert model.gcrepro_config.base_width == PROFILES["toy"].overrides["base_width"]
    images, targets = _images_and_targets()
    model.train()
    losses = model(images, targets)
    stage_keys = [f"{k}_s{s}" for s in range(3) for k in ("loss_classifier", "loss_box_reg", "loss_mask")]
    head_keys = stage_keys if entry.cascade else ["loss_classifier", "loss_box_reg", "loss_mask"]
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", *head_keys}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()

    body = model.backbone.body
    blocks = [(n, m) for n, m in body.named_modules() if isinstance(m, ContextBlock)]
    assert len(blocks) == ((13 if entry.depth == 50 else 30) if entry.gc else 0)  # c3-c5: 4+6+3 / 4+23+3
    for name, block in blocks:
        # zero-initialised last conv: only it gets a gradient on the first step, all others exactly zero
        last = block.channel_add_conv[3]
        assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0, name
        assert last.bias.grad.abs().sum() > 0, name
        others = [p for n, p in block.named_parameters() if not n.startswith("channel_add_conv.3.")]
        assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in others), name

    norms_c3_c5 = [m for layer in (body.layer2, body.layer3, body.layer4) for m in layer.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    wanted = nn.SyncBatchNorm if entry.norm == "syncbn" else FrozenStatsBatchNorm2d
    assert norms_c3_c5 and all(isinstance(m, wanted) for m in norms_c3_c5)
    heads_norms = [m for part in (model.backbone.fpn, model.roi_heads) for m in part.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if entry.head == "4conv1fc":
        assert heads_norms and all(isinstance(m, nn.SyncBatchNorm) for m in heads_norms)
        convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 4 and all(c.bias is None for c in convs)
        assert all(m.bias is None for m in model.backbone.fpn.modules() if isinstance(m, nn.Conv2d))
    else:
        assert not heads_norms
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.rpn.modules())
    assert any(isinstance(m, DeformConv2d) for m in body.layer2.modules()) == entry.dcn
    assert isinstance(model.roi_heads, CascadeRoIHeads) == entry.cascade


def test_context_block_count_r101_and_paper_widths() -> None:
    model = build_model("mask_rcnn_r101_fpn_gc_r4_1x", profile="toy")
    blocks = [m for m in model.backbone.body.modules() if isinstance(m, ContextBlock)]
    assert len(blocks) == 30  # R101 c3-c5: 4 + 23 + 3
    # toy (from scratch, nothing frozen): every residual branch starts at zero
    body = model.backbone.body
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for layer in (body.layer1, body.layer2, body.layer3, body.layer4)
               for b in layer)
    # with a frozen stage (the paper's frozen_stages=1), the frozen layer1 is left as initialised
    frozen = build_model("mask_rcnn_r101_fpn_gc_r4_1x", profile="toy", frozen_stages=1).backbone.body
    assert all(torch.all(b.bn3.weight == 1) for b in frozen.layer1)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in frozen.layer2)
    paper = model_config("mask_rcnn_r101_fpn_gc_r4_1x")
    assert paper.gc_ratio == 0.25 and paper.stage_with_gcb == (False, True, True, True)
    assert (paper.min_size, paper.max_size, paper.base_width, paper.fpn_channels) == (800, 1333, 64, 256)


# ------------------------------------------------------------------ cascade


@pytest.fixture(scope="module")
def cascade_model():
    torch.manual_seed(0)
    return build_model("cascade_mask_rcnn_x101_32x4d_fpn_syncbn_1x", profile="toy", num_classes=5, **FAST)


def test_cascade_structure(cascade_model) -> None:
    heads = cascade_model.roi_heads
    assert heads.num_stages == 3 and len(heads.mask_heads) == len(heads.mask_predictors) == 3
    assert [m.high_threshold for m in heads.stage_matchers] == [0.5, 0.6, 0.7]
    assert [m.low_threshold for m in heads.stage_matchers] == [0.5, 0.6, 0.7]
    assert [c.weights for c in heads.stage_box_coders] == [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                           (1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067)]
    assert heads.stage_loss_weights == (1.0, 0.5, 0.25)
    for p in heads.box_predictors:  # class-agnostic regression, 5 classes incl. background
        assert p.bbox_pred.out_features == 4 and p.cls_score.out_features == 5
    assert len({id(h) for h in heads.box_heads}) == 3  # one head per stage, not shared


def _record_stage_io(heads: CascadeRoIHeads):
    """Hooks recording what each stage's predictor and mask predictor produced, and each stage's RoIs."""
    rec = dict(pred=[], rois=[], masks=[], samples=[])
    hooks = [p.register_forward_hook(lambda m, i, o: rec["pred"].append(o)) for p in heads.box_predictors]
    hooks += [p.register_forward_hook(lambda m, i, o: rec["masks"].append(o)) for p in heads.mask_predictors]
    hooks.append(heads.box_roi_pool.register_forward_hook(lambda m, i, o: rec["rois"].append(i[1])))
    original = heads.sample_stage

    def sample_stage(stage, proposals, targets):
        out = original(stage, proposals, targets)
        rec["samples"].append(out)
        return out

    heads.sample_stage = sample_stage
    return rec, hooks


def _remove(heads, hooks) -> None:
    for h in hooks:
        h.remove()
    del heads.sample_stage


def test_cascade_losses_are_weighted_per_stage(cascade_model) -> None:
    heads = cascade_model.roi_heads
    images, targets = _images_and_targets()
    cascade_model.train()
    rec, hooks = _record_stage_io(heads)
    try:
        torch.manual_seed(5)
        losses = cascade_model(images, targets)
    finally:
        _remove(heads, hooks)
    for s, w in enumerate((1.0, 0.5, 0.25)):
        logits, deltas = rec["pred"][s]
        _, _, labels, reg_targets, _ = rec["samples"][s]
        labels, reg_targets = torch.cat(labels), torch.cat(reg_targets)
        pos = labels > 0
        assert pos.any(), f"stage {s} sampled no positives: the box-loss check would be empty"
        ce = F.cross_entropy(logits, labels)
        l1 = F.smooth_l1_loss(deltas[pos], reg_targets[pos], beta=1.0, reduction="sum") / labels.numel()
        torch.testing.assert_close(losses[f"loss_classifier_s{s}"], w * ce)
        torch.testing.assert_close(losses[f"loss_box_reg_s{s}"], w * l1)
        # stage s+1 starts from stage s's refined RoIs, without gradient
        assert not rec["rois"][s][0].requires_grad
    # the mask losses: the same run with unit stage weights gives the unweighted values
    heads.stage_loss_weights = (1.0, 1.0, 1.0)
    try:
        torch.manual_seed(5)
        unweighted = cascade_model(images, targets)
    finally:
        heads.stage_loss_weights = (1.0, 0.5, 0.25)
    for s, w in enumerate((1.0, 0.5, 0.25)):
        for k in ("loss_mask", "loss_classifier"):
            torch.testing.assert_close(losses[f"{k}_s{s}"], w * unweighted[f"{k}_s{s}"])


def test_cascade_eval_boxes_from_stage3_scores_averaged(cascade_model) -> None:
    heads = cascade_model.roi_heads
    images, _ = _images_and_targets()
    cascade_model.eval()
    rec, hooks = _record_stage_io(heads)
    out = {}

    def keep_heads_output(module, inputs, output) -> None:
        # copies: the transform then pastes the masks into the image, in place
        out["heads"] = [{k: v.clone() for k, v in r.items()} for r in output[0]]

    hooks.append(heads.register_forward_hook(keep_heads_output))
    try:
        with torch.no_grad():
            cascade_model(images)
    finally:
        _remove(heads, hooks)
    assert len(rec["pred"]) == 3 and len(rec["rois"]) == 3 and len(rec["masks"]) == 3
    probs = torch.stack([F.softmax(lg, -1) for lg, _ in rec["pred"]])  # [3, R, K]
    avg_logit_probs = F.softmax(torch.stack([lg for lg, _ in rec["pred"]]).mean(0), -1)  # upstream: mean logits
    rois3 = rec["rois"][2]  # stage 3's input RoIs (refined twice)
    deltas3 = rec["pred"][2][1]
    boxes3 = heads.stage_box_coders[2].decode(deltas3, rois3).reshape(-1, 4)  # [R, 4]
    counts = [len(r) for r in rois3]
    results = out["heads"]
    assert sum(len(r["boxes"]) for r in results) > 0
    start = 0
    for i, r in enumerate(results):
        cand = heads.geometry.clip(boxes3[start:start + counts[i]], heads_image_shape(cascade_model, images, i))
        p_avg = avg_logit_probs[start:start + counts[i]]
        for box, label, score in zip(r["boxes"], r["labels"], r["scores"]):
            hit = ((cand - box).abs().max(dim=1).values < 1e-4) & ((p_avg[:, label] - score).abs() < 1e-6)
            assert hit.any(), (i, box, label, score)
        start += counts[i]
    # the average differs from any single stage's score (so the test above would catch stage-3-only scores)
    assert not torch.allclose(avg_logit_probs, probs[2])
    # masks: mean of the 3 stages' sigmoid maps, detected class's channel
    mask_probs = torch.stack([m.sigmoid() for m in rec["masks"]]).mean(0)  # [k, K, 28, 28]
    labels = torch.cat([r["labels"] for r in results])
    expected = mask_probs[torch.arange(len(labels)), labels][:, None]
    torch.testing.assert_close(torch.cat([r["masks"] for r in results]), expected)


def heads_image_shape(model, images, i: int) -> tuple[int, int]:
    """The resized (unpadded) size of image i inside the model."""
    with torch.no_grad():
        image_list, _ = model.transform(images)
    return image_list.image_sizes[i]


# ------------------------------------------------------------------ configuration


def test_overrides_and_errors() -> None:
    cfg = model_config(8, profile="toy", box_score_thresh=0.0, anchor_ratios=[0.5, 1.0, 2.0])
    assert cfg.box_score_thresh == 0.0 and cfg.anchor_ratios == (0.5, 1.0, 2.0) and cfg.norm == "syncbn"
    assert cfg.gc_ratio == 1 / 16 and cfg.stage_with_gcb == (False, True, True, True)
    with pytest.raises(ConfigError, match=r"model override box_score_thres: unknown key.*allowed keys.*box_score_thresh"):
        build_model(1, box_score_thres=0.1)
    with pytest.raises(ConfigError, match=r"model override max_iters: a training field"):
        build_model(1, max_iters=3)
    with pytest.raises(ConfigError, match=r"head='3fc'"):
        model_config(1, head="3fc")
    with pytest.raises(ConfigError, match="profile 'tiny'"):
        build_model(1, profile="tiny")
    toy = model_config(1, profile="toy")
    assert (toy.min_size, toy.base_width, toy.zero_init_residual) == (160, 16, True)
    assert model_config(1) == ModelConfig(**{**PROFILES["paper"].overrides})  # row 1 at paper scale = the defaults
    assert model_config(13).head_norm == "syncbn" and model_config(13).head == "4conv1fc"
    assert model_config(28).stage_with_dcn == (False, True, True, True) and model_config(28).cascade
    with pytest.raises(ValueError, match="needs the paper's backbone width"):
        build_model(1, profile="toy", pretrained_backbone="IMAGENET1K_V1")


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("row,profile", [(2, "paper"), (14, "toy"), (29, "toy")])
def test_rows_train_and_detect_on_cuda(row: int, profile: str) -> None:
    torch.manual_seed(0)
    model = build_model(row, profile=profile, num_classes=5).cuda().train()
    images, targets = _images_and_targets(sizes=((320, 400), (360, 320)))
    images = [im.cuda() for im in images]
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert all(d["boxes"].is_cuda and d["masks"].shape[1:] == (1, *im.shape[1:]) for d, im in zip(out, images))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_train_step_under_cpu_autocast(dtype: torch.dtype) -> None:
    """AMP: anchors come out of autocast in low precision; the RPN matches them in fp32."""
    torch.manual_seed(0)
    model = gcrepro.build_model(1, num_classes=6, profile="toy").train()
    images = [torch.rand(3, 96, 128) for _ in range(2)]
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 20:70, 10:80] = 1
    targets = [dict(boxes=torch.tensor([[10.0, 20, 80, 70]]), labels=torch.tensor([1]), masks=masks.clone()) for _ in images]
    with torch.autocast("cpu", dtype=dtype):
        losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
