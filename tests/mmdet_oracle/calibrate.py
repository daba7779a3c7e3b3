"""Calibration of seeded weights on the image under test (see :mod:`mmdet_oracle.weights`).

Random weights give random scales: 101 layers of them blow activations up or squash them, and the
heads' scores saturate at 0 or 1. Each step here measures the model on the image and sets a scale,
a shift or a statistic so that the image's activations and outputs land where a comparison is
informative; the directions of all weights stay the seeded ones.

1. BN statistics: each BN takes the mean and variance of its own input (one backbone forward), so
   every BN normalises what it really sees in eval mode;
2. FPN laterals divided by the RMS of the stage they read (a unit-scale pyramid at any depth);
3. output layers (RPN objectness and deltas, every box head's class logits and deltas, every mask
   head's logits): each output channel rescaled and shifted so that over the image's positions or
   RoIs it has the spread and mean of ``OUTPUT_TARGETS`` (box deltas: ``DELTA_MEANS``, boxes grow
   a little at each step, so masks have hundreds of pixels); then the foreground class biases move
   together until DETECTION_PAIRS (RoI, class) scores exceed the 0.05 threshold, placed in the
   widest gap so that no score sits near it. mmdetection's background class is the LAST logit.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmdet_oracle.images import Batch
from mmdet_oracle.run import mmdet_outputs

# output layer name -> (std, mean) of each output channel over the calibration image; fc_cls: foreground
OUTPUT_TARGETS = {
    "rpn_cls": (1.5, -2.5), "rpn_reg": (0.1, 0.0), "fc_cls": (1.5, 0.0), "fc_reg": (0.3, 0.0),
    "conv_logits": (2.5, 0.0),
}
# mean of each box delta (dx, dy, dw, dh) before the coder's stds: dw, dh > 0 make every box larger than
# its anchor or RoI (larger masks: a pixel of float noise moves their IoU less)
DELTA_MEANS = {"rpn_reg": (0.0, 0.0, 1.0, 1.0), "fc_reg": (0.0, 0.0, 1.0, 1.0)}
BACKGROUND_LOGIT = (1.0, 3.0)  # (std, mean) of the background logit (mmdetection: the last class)
DETECTION_PAIRS = (30, 50)  # (RoI, class) scores above SCORE_THR, before NMS: this many, widest margin
SCORE_THR = 0.05  # the GCNet configs' test_cfg.rcnn.score_thr


def calibrate_batchnorm(model: nn.Module, inputs: Tensor) -> tuple[Tensor, ...]:
    """One eval-mode backbone forward on ``inputs`` in which every BN, just before it runs, takes
    the mean and (unbiased) variance of its own input as running statistics. Returns the backbone's
    outputs C2..C5, which are therefore its eval-mode outputs under the final statistics."""

    def take_statistics(bn: nn.Module, args: tuple[Tensor]) -> None:
        x = args[0]  # [N, C, H, W]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=True)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.fill_(1)

    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(m.training for m in norms):
        raise RuntimeError("mmdet_oracle.calibrate: calibrate_batchnorm needs the model in eval mode")
    hooks = [m.register_forward_pre_hook(take_statistics) for m in norms]
    try:
        with torch.no_grad():
            return model.backbone(inputs)
    finally:
        for h in hooks:
            h.remove()


def normalise_laterals(model: nn.Module, stage_outputs: tuple[Tensor, ...]) -> None:
    """Divide each FPN lateral conv by the RMS of the backbone stage it reads."""
    with torch.no_grad():
        for lateral, x in zip(model.neck.lateral_convs, stage_outputs):
            lateral.conv.weight /= x.pow(2).mean().sqrt()


def _output_layers(model: nn.Module) -> dict[str, nn.Module]:
    layers = {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in OUTPUT_TARGETS}
    if not layers:
        raise ValueError("mmdet_oracle.calibrate: no output layer of " + ", ".join(OUTPUT_TARGETS))
    return layers


def _as_rows(module: nn.Module, x: Tensor) -> Tensor:
    """Layer input -> [samples, features] fp64: RoIs for a linear, positions for a 1x1 conv."""
    if isinstance(module, nn.Linear):
        return x.flatten(1).double()
    if module.kernel_size != (1, 1):
        raise ValueError(f"mmdet_oracle.calibrate: output layer {module} is not 1x1")
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()


def _standardise(module: nn.Module, x: Tensor, stds: Tensor, means: Tensor) -> Tensor:
    """Rescale each output channel of ``module`` and set its bias so that on the input rows
    ``x`` [M, C] it has std ``stds`` and mean ``means`` [O]; returns those outputs [M, O] (fp64)."""
    w = module.weight.double().flatten(1)  # [O, C]
    centred = (x - x.mean(0)) @ w.T  # [M, O]
    scale = stds / centred.std(0).clamp_min(1e-12)  # [O]
    module.weight.mul_(scale.view(-1, *[1] * (module.weight.dim() - 1)).to(module.weight.dtype))
    module.bias.copy_(means - scale * (w @ x.mean(0)))
    return centred * scale + means


def _foreground_shift(logits: Tensor, *, pairs: tuple[int, int], score_thr: float) -> float:
    """The shift of every foreground logit (all but the last column of ``logits`` [R, K+1]) that puts
    between ``pairs[0]`` and ``pairs[1]`` (RoI, class) softmax scores above ``score_thr``, with the
    widest margin: midway in the widest gap between the shifts at which consecutive pairs cross it.

    With all foreground logits shifted by s, pair (r, c) scores e^(l_c + s) / (e^l_bg + e^s S_r),
    S_r = sum of e^l over the foreground; it crosses ``score_thr`` at
    s = log(thr) + l_bg - l_c - log(1 - thr S_r / e^l_c), and never where thr S_r >= e^l_c.
    """
    fg, bg = logits[:, :-1], logits[:, -1:]  # [R, K], [R, 1]
    ratio = score_thr * torch.exp(torch.logsumexp(fg, dim=1, keepdim=True) - fg)  # thr S_r / e^l_c, [R, K]
    crossing = torch.where(ratio < 1, math.log(score_thr) + bg - fg - torch.log1p(-ratio.clamp(max=1 - 1e-12)),
                           torch.full_like(fg, math.inf))
    s = crossing.flatten().sort().values  # pair n (1-based) is above the threshold for shifts > s[n - 1]
    low, high = pairs
    if not math.isfinite(s[high].item()):
        raise RuntimeError(f"mmdet_oracle.calibrate: fewer than {high + 1} (RoI, class) pairs can reach {score_thr}")
    gaps = s[low:high + 1] - s[low - 1:high]  # gaps[i]: between pair low + i and the next one
    n = int(gaps.argmax())
    return float(s[low - 1 + n] + s[low + n]) / 2


def _targets(name: str, channels: int) -> tuple[Tensor, Tensor]:
    """(stds, means) [channels] of output layer ``name`` (OUTPUT_TARGETS; background: BACKGROUND_LOGIT)."""
    kind = name.rsplit(".", 1)[-1]
    std, mean = OUTPUT_TARGETS[kind]
    stds = torch.full((channels,), std, dtype=torch.float64)
    means = torch.full_like(stds, mean)
    if kind == "fc_cls":
        stds[-1], means[-1] = BACKGROUND_LOGIT
    if kind in DELTA_MEANS:  # channels are (anchor or class, 4 deltas)
        means = torch.tensor(DELTA_MEANS[kind], dtype=torch.float64).repeat(channels // 4)
    return stds, means


def calibrate_rpn(model: nn.Module, features: tuple[Tensor, ...]) -> None:
    """RPN objectness and delta convs to OUTPUT_TARGETS over all positions of all levels."""
    layers = {name: m for name, m in _output_layers(model).items() if name.startswith("rpn_head.")}
    rows: dict[str, list[Tensor]] = {name: [] for name in layers}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: rows[name].append(_as_rows(m, args[0])))
             for name, m in layers.items()]
    try:
        with torch.no_grad():
            model.rpn_head(features)  # per level: objectness [1, A, h, w], deltas [1, 4A, h, w]
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for name, module in layers.items():
            _standardise(module, torch.cat(rows[name]), *_targets(name, module.weight.shape[0]))


def calibrate_roi_heads(model: nn.Module, batch: Batch, features: tuple[Tensor, ...]) -> None:
    """Box and mask output layers to OUTPUT_TARGETS, each on its own input just before it first
    runs in one forward on ``batch`` (so a cascade stage sees the RoIs of the calibrated stage
    before it, and the mask heads the final detections). Class layers: when stage k's runs, its
    foreground biases move so that the class logits averaged over stages 1..k (mmdetection's
    cascade averages them) give DETECTION_PAIRS (RoI, class) scores above SCORE_THR; afterwards
    every stage gets the mean of those moves, which leaves the average, hence the detections, as
    they were. (Class biases change no box.)"""
    layers = {name: m for name, m in _output_layers(model).items() if name.startswith("roi_head.")}
    class_logits: list[Tensor] = []  # per box head [R, K+1]; rows are the same RoIs in every stage
    moves: dict[str, float] = {}  # class layer -> how far its foreground biases moved

    def calibrate_first_call(name: str, module: nn.Module, args: tuple[Tensor]) -> None:
        if name in done:
            return
        done.add(name)
        out = _standardise(module, _as_rows(module, args[0]), *_targets(name, module.weight.shape[0]))
        if name.endswith("fc_cls"):
            class_logits.append(out)
            k = len(class_logits)
            move = k * _foreground_shift(torch.stack(class_logits).mean(0), pairs=DETECTION_PAIRS,
                                         score_thr=SCORE_THR)  # moves the average of k stages by move / k
            module.bias[:-1] += move
            out[:, :-1] += move
            moves[name] = move

    done: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: calibrate_first_call(name, m, args))
             for name, m in layers.items()]
    try:
        with torch.no_grad():
            mmdet_outputs(model, batch, features)
    finally:
        for h in hooks:
            h.remove()
    if done != set(layers):
        raise RuntimeError(f"mmdet_oracle.calibrate: the calibration forward never ran {sorted(set(layers) - done)}")
    mean_move = sum(moves.values()) / len(moves)
    with torch.no_grad():
        for name, move in moves.items():
            layers[name].bias[:-1] += mean_move - move
