"""Model cost: parameters and GC overhead of each backbone at paper width, and the CPU time of one
toy-profile training step (forward + backward, 2 images) for a few table rows.

    python benchmarks/model_cost.py [--rows 1,2,3,16,22,25,28] [--iters 5] [--warmup 2]
                                    [--threads N] [--out benchmarks/model_cost.json]

Prints two tables and writes JSON (atomically). GC parameter counts are compared with SPEC §1
(R50 r16 +2.52 M, r4 +10.0 M, R101 r16 +4.79 M, r4 +18.96 M). Step times are medians after warm-up
iterations (the first calls pay oneDNN kernel creation); on a shared machine they are noisy, and
the load average is recorded beside them.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gcrepro.atomic import write_json_atomic
from gcrepro.entries import get_entry
from gcrepro.modeling.backbone import build_resnet, gc_parameter_count
from gcrepro.modeling.build import build_model
from gcrepro.profiles import PROFILES

# SPEC §1: added parameters of GC c3-c5, in millions
SPEC_GC_PARAMS_M = {("R50", "r16"): 2.52, ("R50", "r4"): 10.0, ("R101", "r16"): 4.79, ("R101", "r4"): 18.96}
BACKBONES = {"R50": dict(depth=50, groups=1, width_per_group=64), "R101": dict(depth=101, groups=1, width_per_group=64),
             "X101-32x4d": dict(depth=101, groups=32, width_per_group=4)}
CONTEXTS = {"none": None, "r16": 1 / 16, "r4": 1 / 4}
# the Mask R-CNN (fixBN or SyncBN, 2fc) rows with each backbone and context, for detector-level totals
DETECTOR_ROWS = {("R50", "none"): 1, ("R50", "r16"): 2, ("R50", "r4"): 3, ("R101", "none"): 16, ("R101", "r16"): 17,
                 ("R101", "r4"): 18, ("X101-32x4d", "none"): 22, ("X101-32x4d", "r16"): 23, ("X101-32x4d", "r4"): 24}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table() -> list[dict]:
    rows = []
    for arch, kwargs in BACKBONES.items():
        for ctx, ratio in CONTEXTS.items():
            gcb = (False, True, True, True) if ratio else (False, False, False, False)
            backbone = build_resnet(**kwargs, norm="fixbn", stage_with_gcb=gcb, gcb_ratio=ratio or 0.0,
                                    stage_with_dcn=(False, False, False, False))
            gc = gc_parameter_count(backbone)
            total = count(backbone)
            detector = count(build_model(DETECTOR_ROWS[(arch, ctx)]))
            spec = SPEC_GC_PARAMS_M.get((arch.split("-")[0] if arch.startswith("R") else "", ctx))
            rows.append(dict(backbone=arch, context=ctx, backbone_params_m=total / 1e6, gc_params_m=gc / 1e6,
                             gc_overhead_backbone_pct=100 * gc / (total - gc), detector_row=DETECTOR_ROWS[(arch, ctx)],
                             detector_params_m=detector / 1e6, gc_overhead_detector_pct=100 * gc / (detector - gc),
                             spec_gc_params_m=spec))
    return rows


def toy_batch(num_classes: int = 81, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    """2 images the toy data's size (resized by the model to 160 short side), 3 objects each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for h, w in ((192, 256), (256, 192)):
        images.append(torch.rand(3, h, w, generator=g))
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (0.2 + 0.3 * torch.rand(3, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(3, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets.append(dict(boxes=boxes, labels=torch.randint(1, num_classes, (3,), generator=g), masks=masks))
    return images, targets


def time_steps(rows: list[int], *, iters: int, warmup: int) -> list[dict]:
    """Per row: a full training step (2 images) and the backbone+FPN alone on a fixed [2, 3, 160, 224] batch.

    Rows are timed round-robin (row 1, row 2, ..., row 1, ...) so that load changes on a shared machine
    spread over all rows. The full step's cost also depends on how many proposals and positives a
    randomly initialised model produces; the backbone+FPN time is a fixed workload (GC's cost shows there).
    """
    models = {}
    for row in rows:
        torch.manual_seed(0)
        models[row] = build_model(row, profile="toy").train()
    images, targets = toy_batch()
    trunk_input = torch.randn(2, 3, 160, 224)
    rois: dict[int, int] = {}  # RoIs entering the box head in the last training step (sum over images)
    for row, model in models.items():
        model.roi_heads.register_forward_pre_hook(
            lambda m, args, row=row: rois.__setitem__(row, sum(len(p) for p in args[1])) if m.training else None)
    step: dict[int, list[float]] = {r: [] for r in rows}
    trunk: dict[int, list[float]] = {r: [] for r in rows}
    for i in range(warmup + iters):
        for row, model in models.items():
            start = time.perf_counter()
            losses = model(images, targets)
            sum(losses.values()).backward()
            mid = time.perf_counter()
            features = model.backbone(trunk_input)
            sum(f.float().mean() for f in features.values()).backward()
            end = time.perf_counter()
            model.zero_grad(set_to_none=True)
            if i >= warmup:
                step[row].append(mid - start)
                trunk[row].append(end - mid)
    out = []
    for row, model in models.items():
        model.eval()
        with torch.no_grad():
            model(images)  # warm-up
            start = time.perf_counter()
            detections = model(images)
            infer = time.perf_counter() - start
        out.append(dict(row=row, name=get_entry(row).name, params_m=count(model) / 1e6,
                        train_step_s_median=statistics.median(step[row]), train_step_s_min=min(step[row]),
                        backbone_fpn_fwd_bwd_s_median=statistics.median(trunk[row]),
                        rpn_proposals_train=rois[row], inference_2img_s=infer, detections=sum(len(d["boxes"]) for d in detections), iters=iters))
    return out


def print_parameters(params: list[dict]) -> None:
    print("Parameters at paper width (backbone = ResNet trunk; detector = Mask R-CNN 2fc row)")
    print(f"{'backbone':<11} {'ctx':<4} {'backbone M':>10} {'GC M':>7} {'SPEC GC M':>9} {'GC/bb %':>8} "
          f"{'row':>3} {'detector M':>10} {'GC/det %':>8}")
    for r in params:
        spec = "" if r["spec_gc_params_m"] is None else f"{r['spec_gc_params_m']:.2f}"
        print(f"{r['backbone']:<11} {r['context']:<4} {r['backbone_params_m']:>10.2f} {r['gc_params_m']:>7.2f} "
              f"{spec:>9} {r['gc_overhead_backbone_pct']:>8.1f} {r['detector_row']:>3} {r['detector_params_m']:>10.2f} "
              f"{r['gc_overhead_detector_pct']:>8.1f}")
    print()


def print_steps(steps: list[dict]) -> None:
    print(f"Toy profile, CPU, {torch.get_num_threads()} thread(s): one training step (2 images, forward + backward)")
    print(f"{'row':>3} {'name':<52} {'params M':>8} {'step s med':>10} {'step s min':>10} {'RoIs':>5} "
          f"{'bb+FPN s':>8} {'infer s':>7} {'dets':>4}")
    for r in steps:
        print(f"{r['row']:>3} {r['name']:<52} {r['params_m']:>8.2f} {r['train_step_s_median']:>10.3f} "
              f"{r['train_step_s_min']:>10.3f} {r['rpn_proposals_train']:>5} {r['backbone_fpn_fwd_bwd_s_median']:>8.3f} "
              f"{r['inference_2img_s']:>7.3f} {r['detections']:>4}")
    print("(step: full training step, 2 images 192x256 resized to 160 short side; RoIs: RPN proposals entering the "
          "RoI heads in training, both images;\n bb+FPN: backbone + FPN forward and backward on [2, 3, 160, 224], a "
          "fixed workload; infer: eval forward of the 2 images incl. mask pasting; dets: detections returned)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,3,16,22,25,28", help="table rows to time (toy profile)")
    parser.add_argument("--iters", type=int, default=5, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-params", action="store_true", help="only time the toy rows")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("model_cost.json"))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    params = [] if args.skip_params else parameter_table()
    steps = time_steps([int(r) for r in args.rows.split(",")], iters=args.iters, warmup=args.warmup)
    if params:
        print_parameters(params)
    print_steps(steps)
    result = dict(
        parameters_paper_width=params, toy_train_steps=steps, toy_profile=dict(PROFILES["toy"].overrides),
        threads=torch.get_num_threads(), load_average_before=load_before, load_average_after=os.getloadavg(),
        hardware=dict(machine=platform.machine(), processor=platform.processor(), cpus=os.cpu_count()),
        versions=dict(torch=torch.__version__, python=platform.python_version()),
    )
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
