"""Train-step and inference time of Mask R-CNN with and without GC blocks, on one GPU.

    python benchmarks/train_step.py                  # fp32 (TF32 matmuls), 20 timed iterations
    python benchmarks/train_step.py --amp bf16       # bf16 autocast

In one run, all at 2 images of 800 x 1216 (random init, random targets):
  torchvision   torchvision.models.detection.maskrcnn_resnet50_fpn (the peer, no GC)
  row 1         gcrepro.build_model(1): Mask R-CNN R50-FPN, no GC
  row 2 (...)   gcrepro.build_model(2): + GC r16 in c3-c5, once per GC implementation
                (reference = pure PyTorch, fused = the compiled op)
It reports the median train step (forward, backward, SGD step) and inference time, peak memory,
and the GC overhead = (row 2 - row 1) / row 1 in percent of the step (target for fused: <= 1%).
cudnn.benchmark stays off: the detection heads see different shapes every iteration.
Writes a table to stdout and JSON to benchmarks/train_step.json (or --json). Needs CUDA.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

from gcrepro.atomic import write_json_atomic

IMAGE_SIZE = (800, 1216)  # (H, W): a COCO-like image after the 800-pixel resize, already a multiple of 32
BATCH = 2
NUM_CLASSES = 81  # COCO 80 + background, as gcrepro.build_model counts them
# Paper recipe (SPEC §4): SGD, lr 0.02 for 16 images (here the value only matters for realism), momentum 0.9, wd 1e-4.
SGD = dict(lr=0.02, momentum=0.9, weight_decay=1e-4)


def make_batch(device: torch.device, seed: int):
    """Random images in 0..1 and 3 random instances per image (boxes, labels, masks)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = IMAGE_SIZE
    images, targets = [], []
    for _ in range(BATCH):
        images.append(torch.rand(3, h, w, generator=gen).to(device))
        xy = torch.rand(3, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = 64 + torch.rand(3, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], dim=1)  # [3, 4] xyxy
        masks = torch.zeros(3, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(1, NUM_CLASSES, (3,), generator=gen)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def timed(fn, iters: int, warmup: int) -> float:
    """Median time of fn() in ms, synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(name: str, model: torch.nn.Module, device, iters: int, warmup: int, amp: str | None) -> dict:
    model.to(device)
    images, targets = make_batch(device, seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp else contextlib.nullcontext())

    def train_step():
        with autocast:
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer():
        with torch.no_grad(), autocast:
            model(images)

    model.train()
    torch.cuda.reset_peak_memory_stats(device)
    train_ms = timed(train_step, iters, warmup)
    train_mem = torch.cuda.max_memory_allocated(device) / 2**30
    model.eval()
    infer_ms = timed(infer, iters, warmup)
    model.to("cpu")
    torch.cuda.empty_cache()
    return {"model": name, "train_ms": train_ms, "infer_ms": infer_ms, "train_mem_gb": train_mem}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model and mode")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (default: fp32/TF32)")
    parser.add_argument("--gc-impls", default="reference,fused", help="GC implementations for row 2")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("train_step.json"))
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("train_step.py needs a CUDA GPU (it times Mask R-CNN train steps at 2x800x1216); "
              "none is available here. For the op alone on CPU run benchmarks/gc_op.py.", file=sys.stderr)
        return 2

    import torchvision

    import gcrepro
    from gcrepro import ops

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = False  # detection heads: shapes vary every iteration
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    impls = [i for i in args.gc_impls.split(",") if i]
    if "fused" in impls and not ops.fused_available(device):
        print("train_step.py: the fused GC op is not built for CUDA "
              "(pip install --no-build-isolation -e . with a CUDA toolkit); timing the reference only", file=sys.stderr)
        impls = [i for i in impls if i != "fused"]

    torch.manual_seed(0)
    rows = [measure("torchvision maskrcnn_resnet50_fpn",
                    torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                      num_classes=NUM_CLASSES),
                    device, args.iters, args.warmup, args.amp)]
    torch.manual_seed(0)
    base = measure("row 1 (no GC)", gcrepro.build_model(1, num_classes=NUM_CLASSES, profile="paper"),
                   device, args.iters, args.warmup, args.amp)
    rows.append(base)
    for impl in impls:
        torch.manual_seed(0)
        model = gcrepro.build_model(2, num_classes=NUM_CLASSES, profile="paper", gc_impl=impl)
        row = measure(f"row 2 (GC r16, {impl})", model, device, args.iters, args.warmup, args.amp)
        row["gc_train_overhead_pct"] = 100 * (row["train_ms"] / base["train_ms"] - 1)
        row["gc_infer_overhead_pct"] = 100 * (row["infer_ms"] / base["infer_ms"] - 1)
        rows.append(row)

    print(f"device: {torch.cuda.get_device_name(device)}   torch {torch.__version__}   "
          f"batch {BATCH}x{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}   precision {args.amp or 'fp32/tf32'}   "
          f"median of {args.iters}")
    header = f"{'model':<36} {'train ms':>9} {'infer ms':>9} {'mem GB':>7} {'GC train %':>11} {'GC infer %':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        over = (f"{r['gc_train_overhead_pct']:10.2f}% {r['gc_infer_overhead_pct']:10.2f}%"
                if "gc_train_overhead_pct" in r else f"{'':>11} {'':>11}")
        print(f"{r['model']:<36} {r['train_ms']:9.2f} {r['infer_ms']:9.2f} {r['train_mem_gb']:7.2f} {over}")
    fused = [r for r in rows if r["model"].endswith("fused)")]
    if fused:
        ok = fused[0]["gc_train_overhead_pct"] <= 1.0
        print(f"target: fused GC overhead <= 1% of the train step: {'met' if ok else 'NOT met'}")

    result = {
        "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": [BATCH, 3, *IMAGE_SIZE], "precision": args.amp or "fp32/tf32", "iters": args.iters,
        "cudnn_benchmark": False, "rows": rows,
    }
    write_json_atomic(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
