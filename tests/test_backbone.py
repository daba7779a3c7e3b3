"""Backbones: torchvision equivalence, GC overhead vs SPEC, norm modes, freezing, DCN, ResNeXt,
pretrained loading, attention capture."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import DeformConv2d, FrozenBatchNorm2d

from gcrepro.modeling import attention as attention_module
from gcrepro.modeling import norm as norm_module
from gcrepro.modeling.attention import capture_attention, gc_blocks
from gcrepro.modeling.backbone import build_resnet, gc_parameter_count
from gcrepro.modeling.norm import FrozenStatsBatchNorm2d, make_norm
from gcrepro.modeling.weights import load_pretrained
from gcrepro.ops.reference import gc_attention

C3_C5 = (False, True, True, True)
NONE = (False, False, False, False)
R50 = dict(depth=50, groups=1, width_per_group=64)
X101 = dict(depth=101, groups=32, width_per_group=4)


def toy(norm: str = "fixbn", gcb: tuple = C3_C5, dcn: tuple = NONE, ratio: float = 1 / 16, arch: dict = R50, **kw):
    torch.manual_seed(0)
    return build_resnet(
        **arch, norm=norm, stage_with_gcb=gcb, gcb_ratio=ratio, stage_with_dcn=dcn, base_width=16, **kw
    )


def _randomise_gc(model: nn.Module) -> None:
    with torch.no_grad():
        for _, block in gc_blocks(model):
            for p in block.parameters():
                p.normal_(0, 0.1)


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


# --- structure equal to torchvision -------------------------------------------------------------


@pytest.mark.parametrize("norm,tv_norm", [("bn", nn.BatchNorm2d), ("fixbn", FrozenBatchNorm2d)])
def test_r50_without_gc_equals_torchvision_resnet50(norm: str, tv_norm: type) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None, norm_layer=tv_norm).eval()
    with torch.no_grad():  # non-trivial statistics so the norms matter
        for m in tv.modules():
            if isinstance(m, tv_norm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    ours = build_resnet(**R50, norm=norm, stage_with_gcb=NONE, gcb_ratio=1 / 16, stage_with_dcn=NONE, frozen_stages=-1)
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(tv_state, strict=True)  # torchvision's keys (FrozenBatchNorm2d has no num_batches_tracked)
    assert set(ours.state_dict()) == set(tv_state) | {k for k in ours.state_dict() if k.endswith("num_batches_tracked")}
    ours.eval()
    x = torch.randn(1, 3, 64, 96)
    features = nn.Sequential(*list(tv.children())[:-2])
    with torch.no_grad():
        want = features(x)
        # the same convolutions; the norms' arithmetic differs in rounding (FrozenStatsBatchNorm2d runs batch_norm's
        # eval kernel, torchvision's FrozenBatchNorm2d x * scale + shift), so within float32 rounding of the scale
        torch.testing.assert_close(ours(x), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_resnext101_32x4d_has_torchvision_resnext_shapes() -> None:
    with torch.device("meta"):
        tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
        ours = build_resnet(**X101, norm="syncbn", stage_with_gcb=NONE, gcb_ratio=1 / 16, stage_with_dcn=NONE)
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == tv_shapes
    assert ours.layer1[0].conv2.groups == 32 and ours.layer1[0].conv2.in_channels == 128  # 32 x 4d
    assert ours.layer4[0].conv2.in_channels == 1024
    assert ours.out_channels_list == [256, 512, 1024, 2048]


# --- GC overhead (SPEC §1) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "depth,ratio,spec_millions,decimals,blocks",
    [(50, 1 / 16, 2.52, 2, 13), (50, 1 / 4, 10.0, 1, 13), (101, 1 / 16, 4.79, 2, 30), (101, 1 / 4, 18.96, 2, 30)],
)
def test_gc_parameter_count_matches_spec(depth: int, ratio: float, spec_millions: float, decimals: int, blocks: int) -> None:
    kw = dict(depth=depth, groups=1, width_per_group=64, norm="fixbn", stage_with_dcn=NONE)
    with torch.device("meta"):  # counting only: no memory, no init cost
        plain = build_resnet(**kw, stage_with_gcb=NONE, gcb_ratio=ratio)
        gc = build_resnet(**kw, stage_with_gcb=C3_C5, gcb_ratio=ratio)
    extra = sum(p.numel() for p in gc.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == gc_parameter_count(gc)
    assert round(extra / 1e6, decimals) == spec_millions
    assert len(gc_blocks(gc)) == blocks
    assert [b.stage for _, b in gc_blocks(gc)] == sorted(b.stage for _, b in gc_blocks(gc))
    assert {b.stage for _, b in gc_blocks(gc)} == {2, 3, 4}


def test_gc_block_sits_before_residual_add_and_relu() -> None:
    model = toy(norm="bn", frozen_stages=-1).eval()
    _randomise_gc(model)
    block = model.layer3[1]
    x = torch.randn(2, block.conv1.in_channels, 6, 6)
    with torch.no_grad():
        out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))))
        expected = torch.relu(block.context_block(out) + x)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-6)
    assert block.context_block.stage == 3 and block.context_block.block_index == 1
    assert model.layer1[0].context_block is None


# --- norm modes and freezing -------------------------------------------------------------------


def test_fixbn_training_step_keeps_statistics_and_trains_affine() -> None:
    model = toy(norm="fixbn").train()
    assert all(isinstance(m, FrozenStatsBatchNorm2d) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    loss = model(torch.randn(2, 3, 64, 64)).square().mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    for k, v in _bn_buffers(model).items():
        assert torch.equal(v, before[k]), f"{k} changed in fixBN"
    for name in ("layer2.0.bn1.weight", "layer3.1.bn2.bias", "layer4.2.bn3.weight", "layer2.0.downsample.1.weight"):
        assert not torch.equal(after[name], before[name]), f"{name} did not train"
    frozen = [k for k in after if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1.")))
    # GC zero-init: on the first step only the last transform conv gets a gradient, and it trains.
    gc = model.layer3[0].context_block
    assert gc.channel_add_conv[3].weight.grad.abs().sum() > 0
    assert gc.channel_add_conv[0].weight.grad.abs().sum() == 0
    assert not torch.equal(after["layer3.0.context_block.channel_add_conv.3.weight"], before["layer3.0.context_block.channel_add_conv.3.weight"])


def test_frozen_stages_stay_in_eval_also_inside_backbone_with_fpn() -> None:
    model = toy(norm="bn")
    fpn = BackboneWithFPN(
        model, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)}, in_channels_list=model.out_channels_list, out_channels=32
    )
    for wrapper in (model, fpn):
        wrapper.train()
        assert not model.bn1.training and not model.layer1.training and not model.layer1[0].bn1.training
        assert model.layer2.training and model.layer2[0].bn1.training
    x = torch.randn(2, 3, 64, 64)
    feats = fpn(x)
    assert [tuple(f.shape) for f in feats.values()] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2), (2, 32, 1, 1)]
    assert model.out_channels_list == [64, 128, 256, 512]  # base_width 16: x 1/4 of the paper's widths


def test_syncbn_holds_syncbatchnorm_runs_on_cpu_and_says_so(monkeypatch, caplog) -> None:
    monkeypatch.setattr(norm_module.SyncBatchNorm, "_warned", False)
    model = toy(norm="syncbn").train()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = name.startswith(("bn1", "layer1."))
            assert isinstance(m, FrozenStatsBatchNorm2d if frozen else nn.SyncBatchNorm), name
    before = _bn_buffers(model)
    with caplog.at_level(logging.WARNING, logger="gcrepro"):
        model(torch.randn(2, 3, 64, 64))
        model(torch.randn(2, 3, 64, 64))
    lines = [r.getMessage() for r in caplog.records if "SyncBN" in r.getMessage()]
    assert len(lines) == 1 and "SyncBN on cpu: statistics are per-process" in lines[0]
    after = model.state_dict()
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert after["layer4.0.bn3.num_batches_tracked"].item() == 2
    assert torch.equal(after["layer1.0.bn1.running_mean"], before["layer1.0.bn1.running_mean"])
    # the CPU path is BatchNorm2d with batch statistics
    bn, sync = make_norm("bn", 8), make_norm("syncbn", 8)
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)


def test_plain_bn_updates_statistics_in_layers_2_to_4() -> None:
    model = toy(norm="bn").train()
    assert type(model.layer3[0].bn2) is nn.BatchNorm2d and model.layer3[0].bn2.eps == 1e-5
    before = _bn_buffers(model)
    model(torch.randn(2, 3, 64, 64))
    after = model.state_dict()
    assert not torch.equal(after["layer3.0.bn2.running_var"], before["layer3.0.bn2.running_var"])
    assert torch.equal(after["bn1.running_var"], before["bn1.running_var"])


def test_bad_build_arguments() -> None:
    base = dict(**R50, norm="fixbn", stage_with_gcb=C3_C5, gcb_ratio=1 / 16, stage_with_dcn=NONE)
    for change, match in [
        (dict(depth=34), "depth=34"),
        (dict(norm="gn"), "norm='gn'"),
        (dict(stage_with_gcb=(True, True, True)), "stage_with_gcb"),
        (dict(frozen_stages=5), "frozen_stages=5"),
        (dict(gcb_ratio=0.0), "ratio=0.0"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_resnet(**(base | change))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("norm", ["fixbn", "syncbn", "bn"])
def test_cuda_train_step_every_norm(norm: str, monkeypatch, caplog) -> None:
    monkeypatch.setattr(norm_module.SyncBatchNorm, "_warned", False)
    model = toy(norm=norm, dcn=C3_C5).cuda().train()
    _randomise_gc(model)
    with caplog.at_level(logging.WARNING, logger="gcrepro"):
        out = model(torch.randn(2, 3, 64, 64, device="cuda"))
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert model.layer3[0].context_block.conv_mask.weight.grad.abs().sum() > 0
    warned = [r.getMessage() for r in caplog.records if "SyncBN" in r.getMessage()]
    assert len(warned) == (1 if norm == "syncbn" else 0)  # CUDA, but no process group
    if norm == "syncbn":
        assert "without a process group" in warned[0]


# --- DCN ---------------------------------------------------------------------------------------


def test_dcn_in_c3_to_c5_with_zero_offsets_equals_plain_conv() -> None:
    x50 = dict(depth=50, groups=32, width_per_group=4)  # ResNeXt blocks, fewer of them: quick
    dcn = toy(norm="bn", gcb=NONE, dcn=C3_C5, arch=x50, frozen_stages=-1).eval()
    plain = toy(norm="bn", gcb=NONE, dcn=NONE, arch=x50, frozen_stages=-1).eval()
    assert all(type(b.conv2) is nn.Conv2d and not hasattr(b, "conv2_offset") for b in dcn.layer1)
    for layer in (dcn.layer2, dcn.layer3, dcn.layer4):
        for b in layer:
            assert isinstance(b.conv2, DeformConv2d) and b.conv2.groups == 32 and b.conv2.bias is None
            width = b.conv2.in_channels
            assert tuple(b.conv2_offset.weight.shape) == (18, width, 3, 3) and b.conv2_offset.stride == b.conv2.stride
            assert torch.count_nonzero(b.conv2_offset.weight) == 0 and torch.count_nonzero(b.conv2_offset.bias) == 0
    result = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(".conv2_offset." in k for k in result.missing_keys)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dcn(x), plain(x), rtol=1e-4, atol=1e-4)
    dcn.train()
    dcn(x).sum().backward()
    assert dcn.layer3[0].conv2_offset.weight.grad is not None


# --- pretrained weights ------------------------------------------------------------------------


def test_pretrained_from_local_file(tmp_path, caplog) -> None:
    torch.manual_seed(1)
    tv_state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(tv_state, path)
    with caplog.at_level(logging.INFO, logger="gcrepro"):
        model = build_resnet(**R50, norm="fixbn", stage_with_gcb=C3_C5, gcb_ratio=1 / 16, stage_with_dcn=NONE, pretrained=str(path))
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in tv_state.items() if not k.startswith("fc."))
    assert torch.count_nonzero(ours["layer4.2.context_block.channel_add_conv.3.weight"]) == 0  # GC keeps its init
    lines = [r.getMessage() for r in caplog.records if "pretrained backbone" in r.getMessage()]
    assert len(lines) == 1
    assert "missing 104 (expected, new in gcrepro: 104 GC [layer2.0.context_block." in lines[0]  # 13 blocks x 8
    assert "other: 0" in lines[0] and "unexpected 0" in lines[0] and "ignored 2" in lines[0]


def test_pretrained_mmdet_checkpoint_layout(tmp_path) -> None:
    source = toy(norm="fixbn", gcb=NONE, dcn=C3_C5)
    with torch.no_grad():
        source.layer2[0].conv2_offset.weight.normal_()
    state = {f"backbone.{k}".replace(".conv2_offset.", ".conv2.conv_offset."): v for k, v in source.state_dict().items()}
    state["neck.fpn_convs.0.conv.weight"] = torch.zeros(1)
    path = tmp_path / "mmdet2.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": state}, path)
    model = toy(norm="fixbn", gcb=C3_C5, dcn=C3_C5)
    report = load_pretrained(model, path)
    assert report.unexpected == [] and report.ignored == ["neck.fpn_convs.0.conv.weight"]
    assert report.other_missing() == [] and len(report.expected_missing()["GC"]) == 13 * 8
    assert torch.equal(model.layer2[0].conv2_offset.weight, source.layer2[0].conv2_offset.weight)


def test_pretrained_bad_inputs_give_clear_errors(tmp_path, monkeypatch) -> None:
    from torchvision.models._api import WeightsEnum

    kw = dict(norm="fixbn", stage_with_gcb=NONE, gcb_ratio=1 / 16, stage_with_dcn=NONE, base_width=16)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_resnet(**R50, **kw, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="not a torchvision weights name"):
        build_resnet(**R50, **kw, pretrained="resnet50_imagenet")
    with pytest.raises(ValueError, match="torchvision has no ImageNet weights"):
        build_resnet(**X101, **kw, pretrained="IMAGENET1K_V1")
    torch.save(toy(gcb=NONE).state_dict(), tmp_path / "toy.pth")
    with pytest.raises(ValueError, match="shape mismatches"):  # weights of another width
        build_resnet(**R50, **(kw | dict(base_width=32)), pretrained=str(tmp_path / "toy.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        build_resnet(**R50, **kw, pretrained=str(tmp_path / "junk.pth"))
    # a bare torchvision member name resolves from the architecture (no download: served locally)
    urls: list[str] = []

    def fake_get_state_dict(self, *args, **kwargs):
        urls.append(self.url)
        return torch.load(tmp_path / "toy.pth", weights_only=True)

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    build_resnet(**R50, **kw, pretrained="IMAGENET1K_V1")
    build_resnet(depth=101, groups=1, width_per_group=64, **(kw | dict(stage_with_gcb=C3_C5)), pretrained="ResNet101_Weights.IMAGENET1K_V2")
    assert urls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url, torchvision.models.ResNet101_Weights.IMAGENET1K_V2.url]


# --- attention capture -------------------------------------------------------------------------


@pytest.mark.parametrize("gc_impl", ["reference", "auto"])
def test_capture_attention_maps(gc_impl: str, monkeypatch) -> None:
    model = toy(norm="fixbn", gc_impl=gc_impl).eval()  # "auto": the compiled op where it is built
    _randomise_gc(model)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain = model(x)
    names = [n for n, _ in gc_blocks(model)]
    inputs = {}  # each block's input: the bn3 output of its Bottleneck
    handles = [model.get_submodule(n.rpartition(".")[0] + ".bn3").register_forward_hook(
        lambda _m, _args, out, n=n: inputs.__setitem__(n, out)) for n in names]
    with capture_attention(model) as maps, torch.no_grad():
        captured = model(x)
    for handle in handles:
        handle.remove()
    assert torch.equal(captured, plain)  # the blocks ran what they run without capture (same code, same input)
    assert list(maps) == names and len(names) == 13
    assert tuple(maps["layer2.0.context_block"].shape) == (2, 1, 8, 12)
    assert tuple(maps["layer4.2.context_block"].shape) == (2, 1, 2, 3)
    for name, attn in maps.items():
        block = model.get_submodule(name)
        assert not attn.requires_grad
        torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(2, 1), msg=name)
        # the reference map of the block's input (the same function on the same tensor: equal)
        assert torch.equal(attn, gc_attention(inputs[name], block.conv_mask.weight, block.conv_mask.bias)), name

    # nothing is computed or kept after the with (also when its body raised), and no nesting
    calls = []
    monkeypatch.setattr(attention_module, "gc_attention", lambda *a: calls.append(1) or gc_attention(*a))
    stale = dict(maps)
    with torch.no_grad():
        model(x)
    assert all(maps[k] is stale[k] for k in stale) and calls == []
    with pytest.raises(ZeroDivisionError):
        with capture_attention(model):
            1 / 0
    with capture_attention(model) as again:
        with pytest.raises(RuntimeError, match="nested"):
            with capture_attention(model):
                pass
        with torch.no_grad():
            model(x)
    assert len(again) == 13 and len(calls) == 13
    with torch.no_grad():
        model(x)
    assert len(calls) == 13
