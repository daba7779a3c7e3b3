"""Data-loading throughput on the toy set: training loader images/s with 0, 1, 2 workers, and the
time to generate the toy set.

    python benchmarks/data_throughput.py [--num-train 512] [--num-val 64] [--batch-size 2]
                                         [--epochs 2] [--workers 0 1 2] [--out benchmarks/data_throughput.json]

Prints a table and writes JSON. The loader is timed over whole epochs (worker start-up included, as
a training run pays it every epoch), loading only: no model. Numbers are noisy on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from gcrepro.atomic import write_json_atomic
from gcrepro.data import CocoInstances, build_loader, make_toy_dataset, set_epoch


def time_generation(out: Path, *, num_train: int, num_val: int) -> float:
    start = time.perf_counter()
    make_toy_dataset(out, seed=0, num_train=num_train, num_val=num_val)
    return time.perf_counter() - start


def time_loader(root: Path, *, num_workers: int, batch_size: int, epochs: int) -> dict:
    dataset = CocoInstances(root, "train", train=True)
    loader = build_loader(dataset, batch_size=batch_size, train=True, num_workers=num_workers, seed=0, distributed=False)
    images, objects = 0, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for batch_images, targets in loader:
            images += len(batch_images)
            objects += sum(len(t["labels"]) for t in targets)
    seconds = time.perf_counter() - start
    return {"num_workers": num_workers, "images": images, "objects": objects, "seconds": seconds, "images_per_s": images / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--num-val", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("data_throughput.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gcrepro-bench-") as tmp:
        root = Path(tmp) / "toy"
        generation_s = time_generation(root, num_train=args.num_train, num_val=args.num_val)
        runs = [time_loader(root, num_workers=w, batch_size=args.batch_size, epochs=args.epochs) for w in args.workers]

    result = {
        "benchmark": "data_throughput",
        "toy": {"num_train": args.num_train, "num_val": args.num_val, "generation_s": generation_s},
        "loader": {"batch_size": args.batch_size, "epochs": args.epochs, "runs": runs},
        "hardware": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor()},
        "load_average_1min": os.getloadavg()[0],  # > cpu_count: other work shared the CPUs (noisy numbers)
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    print(f"load average (1 min) {result['load_average_1min']:.1f} on {os.cpu_count()} CPUs")
    print(f"toy set generation ({args.num_train} train + {args.num_val} val images): {generation_s:.2f} s")
    print(f"training loader, batch {args.batch_size}, {args.epochs} epochs, loading only:")
    print(f"{'workers':>8} {'images':>8} {'seconds':>8} {'images/s':>9}")
    for r in runs:
        print(f"{r['num_workers']:>8} {r['images']:>8} {r['seconds']:>8.2f} {r['images_per_s']:>9.1f}")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
