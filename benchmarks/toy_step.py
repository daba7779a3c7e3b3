"""Toy-profile train step of table rows 1 and 2, old and new paths side by side in one run.

    python benchmarks/toy_step.py [--trained 60] [--iters 16] [--warmup 2] [--threads 1] [--profile]
                                  [--out benchmarks/toy_step.json]

Each variant is a model built with ``gcrepro.build_model(row, profile="toy")`` with its own SGD
optimizer, all starting from the weights of row 1 after ``--trained`` training steps (the mask
head's work follows the positive RoIs, which an untrained RPN barely finds); row 2's GC blocks keep
their initialisation, the identity, so row 1 and row 2 start with the same outputs, proposals and
RoIs and their difference is the GC blocks' cost. All variants then step in turns over the same
toy-train batches of 2 images (round-robin, so machine load hits them alike; the same random seed
for every variant in a round, so their samplers draw alike), timing forward + backward + clip +
step. A variant fixes
- the RoIAlign kernel (``GCREPRO_ROI_ALIGN``: torchvision's or ours);
- the GC implementation (fused op or PyTorch reference);
- the RoI sampler's size (``box_batch_size_per_image``: 128 before issue 14, then 64, now the toy
  profile's);
- the optimizer step (the engine's fused SGD and gradient clip, or torch's for-loop SGD and
  ``clip_grad_norm_`` as before);
- the frozen-statistics BN's arithmetic (batch_norm's eval kernel, or x * scale + shift as before);
- the memory format (NCHW, the toy profile's; one variant tries channels_last).
The variants of row 2 add one change at a time, in the order they landed. Prints median s/step
per variant and the ratios, each the median over the rounds of one variant's step over another's
on the same batch:
  step ratio    row 2 now / row 2 before (torchvision RoIAlign, 128 RoIs, for-loop SGD, mul+add BN)
  GC overhead   row 2 / row 1 - 1 with the same kernels, samplers and memory format
``--profile`` also prints torch.profiler's top ops (self CPU) of row 2 before and now. Writes JSON.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gcrepro.atomic import write_json_atomic

# the toy profile's samplers before issue 14 (gcrepro/profiles.py at 5d6ca23), and between its two changes
BEFORE_SAMPLERS = {"box_batch_size_per_image": 128, "rpn_pre_nms_top_n_train": 500, "rpn_post_nms_top_n_train": 500}
SAMPLER_64 = {"box_batch_size_per_image": 64}
NUM_CLASSES = 6  # the toy set: 5 shapes + background
LR, WARMUP = 0.02, 50  # the toy profile's: base_lr 0.16 per 16 images at 2 images, linear warmup from 1/3


def _toy_channels_last() -> bool:
    from gcrepro.profiles import get_profile

    return bool(get_profile("toy").overrides.get("channels_last", False))


@dataclass
class Variant:
    name: str
    row: int
    roi_align: str  # GCREPRO_ROI_ALIGN: "torchvision" | "auto" (ours on CPU)
    gc_impl: str  # "fused" | "reference" (row 1 has no GC block)
    samplers: dict = field(default_factory=dict)  # ModelConfig overrides ({} = the toy profile's)
    channels_last: bool | None = None  # memory format (None: the toy profile's run option)
    fused_sgd: bool = True  # the engine's optimizer and clip (gcrepro.engine.recipe), or torch's for-loop SGD
    bn_kernel: bool = True  # frozen-statistics BN by batch_norm's eval kernel (now), or x * scale + shift (before)
    times: list[float] = field(default_factory=list)  # wall s per step
    cpu_times: list[float] = field(default_factory=list)  # CPU s of this thread per step
    mask_rois: list[int] = field(default_factory=list)  # RoIs through the mask head per timed step

    def __post_init__(self) -> None:
        if self.channels_last is None:
            self.channels_last = _toy_channels_last()

    @property
    def settings(self) -> str:
        rois = (self.samplers or {}).get("box_batch_size_per_image", "toy")
        return (f"RoIs {rois}, {'NHWC' if self.channels_last else 'NCHW'}, {'fused' if self.fused_sgd else 'loop'}, "
                f"{'bn' if self.bn_kernel else 'mul+add'}")


OLD_ENGINE = {"channels_last": False, "fused_sgd": False, "bn_kernel": False}  # before issue 14


def variants() -> list[Variant]:
    before, now = BEFORE_SAMPLERS, {}
    return [
        Variant("row 1 before", 1, "torchvision", "fused", before, **OLD_ENGINE),
        Variant("row 2 before", 2, "torchvision", "fused", before, **OLD_ENGINE),
        Variant("row 2 our RoIAlign", 2, "auto", "fused", before, **OLD_ENGINE),
        Variant("row 2 + 64 RoIs", 2, "auto", "fused", SAMPLER_64, **OLD_ENGINE),
        Variant("row 2 + fused SGD", 2, "auto", "fused", SAMPLER_64, channels_last=False, bn_kernel=False),
        Variant("row 2 + BN kernel", 2, "auto", "fused", SAMPLER_64, channels_last=False),
        Variant("row 1 now", 1, "auto", "fused", now),
        Variant("row 2 now", 2, "auto", "fused", now),
        Variant("row 2 now, reference GC", 2, "auto", "reference", now),
        Variant("row 2 now, channels_last", 2, "auto", "fused", now, channels_last=True),  # tried, not adopted
    ]


def _scale_shift(self, x: torch.Tensor) -> torch.Tensor:
    """FrozenStatsBatchNorm2d.forward before issue 14 (torchvision FrozenBatchNorm2d's arithmetic)."""
    scale = self.weight * (self.running_var + self.eps).rsqrt()  # [C]
    shift = self.bias - self.running_mean * scale  # [C]
    return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


def toy_batches(count: int) -> list[tuple[list, list]]:
    from gcrepro.data import CocoInstances, ensure_toy
    from gcrepro.data.loader import collate

    dataset = CocoInstances(ensure_toy(), split="train", train=True)
    batches, i = [], 0
    while len(batches) < count:  # pairs of images that have objects (training skips empty ones)
        pair = [dataset[i], dataset[i + 1]]
        i += 2
        if all(len(t["boxes"]) for _, t in pair):
            batches.append(collate(pair))
    return batches


class Stepper:
    """One variant's model and optimizer; ``step(batch)`` -> (wall s, this thread's CPU s)."""

    def __init__(self, v: Variant) -> None:
        from gcrepro.modeling.build import build_model

        torch.manual_seed(0)
        self.v = v
        self.model = build_model(v.row, profile="toy", num_classes=NUM_CLASSES, gc_impl=v.gc_impl, **v.samplers).train()
        if v.channels_last:  # as the engine applies the run option (gcrepro/engine/api.py)
            self.model = self.model.to(memory_format=torch.channels_last)
        if not v.bn_kernel:
            from gcrepro.modeling.norm import FrozenStatsBatchNorm2d

            for m in self.model.modules():
                if isinstance(m, FrozenStatsBatchNorm2d):
                    m.forward = _scale_shift.__get__(m)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if v.fused_sgd:  # the engine's optimizer and clip (gcrepro.engine.trainer)
            from gcrepro.engine.recipe import build_optimizer, clip_grad_norm

            self.optimizer = build_optimizer(self.model, lr=LR, momentum=0.9, weight_decay=1e-4)
            self.clip = clip_grad_norm
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=LR, momentum=0.9, weight_decay=1e-4, foreach=False)
            self.clip = torch.nn.utils.clip_grad_norm_
        self.iteration = 0
        self.last_mask_rois = 0  # the mask head's work, which follows the positives the sampler finds
        self.model.roi_heads.mask_head.register_forward_pre_hook(self._count)

    def load_from(self, other: Stepper) -> None:
        """other's weights (a row 1 model); GC blocks, which row 1 lacks, keep their initialisation."""
        missing, unexpected = self.model.load_state_dict(other.model.state_dict(), strict=False)  # keeps formats
        if unexpected or any(".context_block." not in k for k in missing):
            raise RuntimeError(f"toy_step: row {self.v.row} does not take row 1's weights: {unexpected or missing}")
        self.iteration = other.iteration

    def _count(self, module, args) -> None:
        self.last_mask_rois = int(args[0].shape[0])

    def step(self, batch) -> tuple[float, float]:
        os.environ["GCREPRO_ROI_ALIGN"] = self.v.roi_align
        images, targets = batch
        for group in self.optimizer.param_groups:
            group["lr"] = LR * (1 / 3 + 2 / 3 * min(1.0, self.iteration / WARMUP))
        self.iteration += 1
        start, cpu_start = time.perf_counter(), time.thread_time()
        losses = self.model(images, targets)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.clip(self.params, max_norm=35.0)
        self.optimizer.step()
        return time.perf_counter() - start, time.thread_time() - cpu_start


def profile_top(stepper: Stepper, batches, rows: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            stepper.step(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_cpu_pct": round(100 * e.self_cpu_time_total / total, 1),
             "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / len(batches), 1), "calls": e.count}
            for e in events[:rows]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=int, default=60, help="training steps of the weights all variants start from")
    parser.add_argument("--iters", type=int, default=16, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="compute threads (toy profile default: 1)")
    parser.add_argument("--profile", action="store_true", help="also print the top ops of row 2 before and now")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "toy_step.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    batches = toy_batches(args.trained + args.warmup + args.iters)
    train_batches, batches = batches[:args.trained], batches[args.trained:]
    table = variants()
    steppers = [Stepper(v) for v in table]
    start = Stepper(Variant("start", 1, "auto", "fused", channels_last=False))
    for batch in train_batches:
        start.step(batch)
    for s in steppers:
        s.load_from(start)
    load_before = os.getloadavg()
    for i, batch in enumerate(batches):
        for s in steppers:
            torch.manual_seed(i)  # the same sampler draws (RPN and RoI) for every variant in a round
            wall, cpu = s.step(batch)
            if i >= args.warmup:
                s.v.times.append(wall)
                s.v.cpu_times.append(cpu)
                s.v.mask_rois.append(s.last_mask_rois)
    load_after = os.getloadavg()
    med = {v.name: statistics.median(v.times) for v in table}
    cpu = {v.name: statistics.median(v.cpu_times) for v in table}

    print(f"\ntoy train step, 2 images, {args.threads} thread(s), after {args.trained} training steps, "
          f"median of {args.iters} steps "
          f"(load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    print("(CPU: this thread's CPU time, which other processes on the machine change less than wall time)")
    print(f"{'variant':<28} {'RoIAlign':<12} {'GC':<10} {'RoIs, format, SGD, frozen BN':<35} {'wall s':>7} "
          f"{'CPU s':>7} {'CPU vs row 2 before':>20} {'mask RoIs':>10}")
    for v in table:
        print(f"{v.name:<28} {v.roi_align:<12} {v.gc_impl if v.row == 2 else '-':<10} "
              f"{v.settings:<35} {med[v.name]:>7.3f} {cpu[v.name]:>7.3f} "
              f"{cpu[v.name] / cpu['row 2 before']:>20.2f} {statistics.mean(v.mask_rois):>10.1f}")
    def paired(a: str, b: str, kind: str) -> float:
        """median over the rounds of b's step / a's step on the same batch (cancels the batch's own cost)"""
        va, vb = (next(v for v in table if v.name == n) for n in (a, b))
        xa, xb = (v.cpu_times if kind == "cpu" else v.times for v in (va, vb))
        return statistics.median(y / x for x, y in zip(xa, xb))

    def matched(a: str, b: str, kind: str) -> tuple[float, int]:
        """paired() over the rounds in which a and b sent as many RoIs through the mask head (the rows' weights
        drift apart as they train, and with them their positives); (ratio, rounds)"""
        va, vb = (next(v for v in table if v.name == n) for n in (a, b))
        xa, xb = (v.cpu_times if kind == "cpu" else v.times for v in (va, vb))
        same = [y / x for x, y, ra, rb in zip(xa, xb, va.mask_rois, vb.mask_rois) if ra == rb]
        return (statistics.median(same) if same else float("nan")), len(same)

    ratios = {}
    for kind in ("cpu", "wall"):
        ratios[kind] = {
            "step_row2_now_over_before": paired("row 2 before", "row 2 now", kind),
            "step_row2_roialign_only_over_before": paired("row 2 before", "row 2 our RoIAlign", kind),
            "step_row2_sampler_64_over_previous": paired("row 2 our RoIAlign", "row 2 + 64 RoIs", kind),
            "step_row2_fused_sgd_over_previous": paired("row 2 + 64 RoIs", "row 2 + fused SGD", kind),
            "step_row2_bn_kernel_over_previous": paired("row 2 + fused SGD", "row 2 + BN kernel", kind),
            "step_row2_now_over_previous": paired("row 2 + BN kernel", "row 2 now", kind),
            "step_row2_channels_last_over_now": paired("row 2 now", "row 2 now, channels_last", kind),
            "gc_overhead_before_pct": 100 * (paired("row 1 before", "row 2 before", kind) - 1),
            "gc_overhead_now_pct": 100 * (paired("row 1 now", "row 2 now", kind) - 1),
            "gc_overhead_now_reference_pct": 100 * (paired("row 1 now", "row 2 now, reference GC", kind) - 1),
            "gc_overhead_now_same_rois_pct": 100 * (matched("row 1 now", "row 2 now", kind)[0] - 1),
            "gc_overhead_now_reference_same_rois_pct":
                100 * (matched("row 1 now", "row 2 now, reference GC", kind)[0] - 1),
        }
    ratios["rounds_with_same_rois"] = {"fused": matched("row 1 now", "row 2 now", "cpu")[1],
                                       "reference": matched("row 1 now", "row 2 now, reference GC", "cpu")[1]}
    print("ratios: median over the rounds of the per-batch ratio")
    print(f"  (same RoIs: {ratios['rounds_with_same_rois']} of {args.iters} rounds)")
    for k in ratios["cpu"]:
        print(f"  {k:<40} CPU {ratios['cpu'][k]:8.2f}   wall {ratios['wall'][k]:8.2f}")
    record = {
        "benchmark": "toy_step",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "trained": args.trained, "iters": args.iters, "warmup": args.warmup, "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_average_before": load_before, "load_average_after": load_after,
        "before_samplers": BEFORE_SAMPLERS, "toy_channels_last": _toy_channels_last(),
        "variants": [{"name": v.name, "row": v.row, "roi_align": v.roi_align, "gc_impl": v.gc_impl,
                      "samplers": v.samplers or "toy profile", "channels_last": v.channels_last,
                      "fused_sgd": v.fused_sgd, "bn_kernel": v.bn_kernel, "median_wall_s": med[v.name],
                      "median_cpu_s": cpu[v.name],
                      "wall_s": v.times, "cpu_s": v.cpu_times, "mask_rois": v.mask_rois}
                     for v in table],
        "ratios": ratios,
    }
    if args.profile:
        by_name = {s.v.name: s for s in steppers}
        record["profile"] = {}
        for name in ("row 2 before", "row 2 now"):
            top = profile_top(by_name[name], batches[:3], rows=15)
            record["profile"][name] = top
            print(f"\ntop ops (self CPU), {name}, 3 steps:")
            for t in top:
                print(f"  {t['self_cpu_pct']:5.1f}%  {t['self_cpu_ms_per_step']:8.1f} ms/step  {t['calls']:5d}  "
                      f"{t['op']}")
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
