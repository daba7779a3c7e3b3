"""Data: COCO instances (COCO 2017 layout), the synthetic toy set, samplers and loaders.

The dataset yields ``(image float [3, H, W] in 0..1, target dict(boxes [K, 4] xyxy absolute,
labels int64 1..K, masks uint8 [K, H, W], image_id int))`` and does the training flip only;
resize / normalisation / padding happen inside the model (torchvision GeneralizedRCNNTransform).

Public API::

    CocoInstances(root, split="train", train=None, flip_prob=0.5, *, seed=0)
    build_loader(dataset, *, batch_size, train, num_workers, seed, distributed) -> DataLoader
    set_epoch(loader, epoch, start_iter=0)
    make_toy_dataset(out, *, seed=0, num_train=512, num_val=64, image_size=160) -> Path
    ensure_toy(path=None, seed=0) -> Path
    describe_data(data) -> DataSpec           # root, kind (toy | coco | coco-subset | custom), val fingerprint
    check_images(root, split, *, images=None, workers=None, use_cache=True) -> ImageCheck
                                                # every listed image: exists, decodes, size, not cut off (cached)
    check_split(dataset, purpose="train" | "eval")   # DataError when a split cannot serve its purpose
    DataError                                   # one-line message naming the bad file / id
"""
from __future__ import annotations

__all__ = [
    "CocoInstances",
    "DataError",
    "DataSpec",
    "ImageCheck",
    "build_loader",
    "check_images",
    "check_split",
    "describe_data",
    "ensure_toy",
    "make_toy_dataset",
    "set_epoch",
]

_WHERE = {
    "CocoInstances": "coco",
    "DataError": "errors",
    "build_loader": "loader",
    "set_epoch": "loader",
    "make_toy_dataset": "toy",
    "ensure_toy": "toy",
    "describe_data": "identity",
    "DataSpec": "identity",
    "check_images": "check",
    "ImageCheck": "check",
    "check_split": "split_check",
}


def __getattr__(name: str):
    # Lazy, so `gcrepro --help` (which imports gcrepro.data.cli) does not import torch.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"gcrepro.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'gcrepro.data' has no attribute {name!r}")
