"""``gcrepro data ...`` subcommands.

    gcrepro data toy --out DIR [--kind shapes|context] [--seed N] [--num-train N] [--num-val N] [--image-size N]
    gcrepro data check DATA [--split train|val|both]

``data check`` exits 0 with a summary, or 2 with one line naming the first bad file or entry.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets: make the synthetic toy set, check a dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    from gcrepro.data.toy import DEFAULT_IMAGE_SIZE, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, TOY_KINDS

    toy = data_sub.add_parser(
        "toy",
        help="write a synthetic COCO-format dataset (shapes, or context: classes only the whole image decides)",
        description="Write a synthetic COCO 2017-layout instance-segmentation dataset (deterministic for a seed): "
        "--kind shapes (default): shapes whose look gives their class; --kind context: identical discs whose "
        "class a coloured marker far from every disc decides (gcrepro.data.toy_context).",
    )
    toy.add_argument("--out", type=Path, default=None, help="output folder (default: gcrepro.paths.default_toy_dir())")
    toy.add_argument("--kind", choices=TOY_KINDS, default="shapes",
                     help="shapes (default) or context (see gcrepro.data.toy_context)")
    toy.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    toy.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help=f"training images (default {DEFAULT_NUM_TRAIN})")
    toy.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help=f"validation images (default {DEFAULT_NUM_VAL})")
    toy.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help=f"short side in pixels (default {DEFAULT_IMAGE_SIZE})")
    toy.set_defaults(func=_toy)

    check = data_sub.add_parser(
        "check",
        help="check a dataset before use: annotations, split contents, every image",
        description="Read each split as training / evaluation would and check every image it lists (exists, "
        "decodes, size as annotated, not cut off). A pass is remembered outside the dataset "
        "(GCREPRO_CACHE, default ~/.cache/gcrepro/checks/), so unchanged images are not read again.",
    )
    check.add_argument("data", type=Path, help="dataset folder (COCO 2017 layout)")
    check.add_argument("--split", choices=("train", "val", "both"), default="both", help="split(s) to check (default both)")
    check.set_defaults(func=_check)


def _toy(args: argparse.Namespace) -> int:
    from gcrepro.data.toy import MANIFEST_NAME, make_toy_dataset, read_manifest
    from gcrepro.paths import default_toy_dir

    out = (args.out if args.out is not None else default_toy_dir()).expanduser().resolve()
    start = time.perf_counter()
    try:
        make_toy_dataset(out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                         image_size=args.image_size, kind=args.kind)
    except ValueError as e:
        print(f"gcrepro data toy: {e}")
        return 2
    seconds = time.perf_counter() - start
    counts = read_manifest(out)["counts"]
    print(f"wrote toy {args.kind} dataset (seed {args.seed}) to {out} in {seconds:.1f} s")
    for split in ("train", "val"):
        c = counts[split]
        print(f"  annotations/instances_{split}2017.json: {c['images']} images, {c['annotations']} annotations; images in {split}2017/")
    print(f"  {MANIFEST_NAME}: manifest (marks the set complete)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from gcrepro.data import CocoInstances, DataError, check_images, check_split

    root = args.data.expanduser().resolve()
    splits = ("train", "val") if args.split == "both" else (args.split,)
    lines = []
    try:
        if not root.is_dir():
            raise DataError(f"data folder not found: {root}")
        for split in splits:
            dataset = CocoInstances(root, split, train=split == "train")  # a training dataset checks its split
            if split == "val":
                check_split(dataset, purpose="eval")
            done = check_images(root, split, images=dataset.coco.dataset["images"])
            state = "unchanged since their check passed" if done.cached else "checked"
            lines.append(f"  {split}: {done.images} images {state} in {done.seconds:.1f} s; "
                         f"{len(dataset)} {'training' if split == 'train' else 'evaluation'} images, "
                         f"{dataset.num_annotations} usable annotations"
                         + (f" (record {done.record})" if done.record is not None else ""))
    except DataError as err:
        print(f"gcrepro data check: error: {err}", file=sys.stderr)
        return 2
    print(f"{root}: OK")
    print("\n".join(lines))
    return 0
