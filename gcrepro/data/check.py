"""Every image of a split checked before use: ``check_images(root, split) -> ImageCheck``.

Without it a missing or corrupt image surfaces when the loader reaches it, late in a run. For each
image the split's annotation file lists (in its order), ``inspect_image`` checks that

- the file exists and Pillow identifies its format (``Image.open`` reads the header only);
- its size is the annotation's width x height;
- it ends as its format ends (JPEG: the end-of-image marker; PNG: the IEND chunk), i.e. it was not
  cut off by an interrupted download or copy. Where that end is not found (other formats, or bytes
  after the marker) the image is decoded in full to decide.

Not ``Image.verify()``: Pillow's JPEG has none (it checks nothing), PNG's reads the whole file to
check chunk CRCs; and not a full decode of every image, which costs tens of times the header check
and reads every byte. Damage inside an image that keeps its header and end is left to the loader,
whose errors name the file (``DataError``), in DataLoader workers too.

The pass runs in threads: it is bound by file-system latency (a cold disk, network storage), threads
are safe in any process (after CUDA initialisation, in a launched rank) and need no pickling. A pass
is remembered per dataset fingerprint (``check_cache``), outside the dataset folder, so a second run
over unchanged files skips it, and a changed file is checked again.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, UnidentifiedImageError

from gcrepro.data import check_cache
from gcrepro.data.coco import (
    SPLITS,
    annotation_file,
    image_fields_missing,
    image_folder,
    read_annotation_file,
    read_instances,
)
from gcrepro.data.errors import DataError

logger = logging.getLogger("gcrepro.data")

# The last bytes of a complete file, by Pillow format name (MPO: multi-picture JPEG).
_ENDS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}
_TAIL = max(len(end) for end in _ENDS.values())
_CHUNK = 256  # images per thread task: few tasks for 100k images, still many for the threads


@dataclass(frozen=True)
class ImageCheck:
    """A passed check of one split's images."""

    annotation_file: Path
    image_dir: Path
    images: int  # images listed and checked (or unchanged since their check passed)
    seconds: float  # this call: fingerprint, then the check or the cache look-up
    cached: bool  # True: these exact files passed before; not read again
    record: Path | None  # the cache record (None: caching off, or the cache folder not writable)


def inspect_image(path: Path, width: int, height: int) -> str | None:
    """Why ``path`` is not a usable ``width`` x ``height`` image (a short phrase), or None."""
    try:
        with open(path, "rb") as f:
            return _inspect_open(f, width, height)
    except FileNotFoundError:
        return "file missing"
    except OSError as err:
        return f"cannot read ({err.strerror or err})"


def _inspect_open(f: BinaryIO, width: int, height: int) -> str | None:
    try:
        f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL))
        tail = f.read()
        f.seek(0)
        with Image.open(f) as im:  # reads the header only
            if im.size != (width, height):
                return f"is {im.width}x{im.height} pixels but the annotation file says {width}x{height}"
            end = _ENDS.get(im.format)
            if end is not None and tail.endswith(end):
                return None
            try:
                im.load()  # no end marker here: decode to tell a cut-off file from trailing bytes
            except Exception as err:  # noqa: BLE001 - any decoder failure makes the file unusable
                cut = f"cut off (no {im.format} end marker), " if end is not None else ""
                return f"{cut}cannot decode ({type(err).__name__}: {err})"
    except UnidentifiedImageError:
        return "cannot decode: not an image format Pillow knows"
    except Exception as err:  # noqa: BLE001 - a header Pillow cannot parse, a decompression bomb, ...
        return f"cannot decode ({type(err).__name__}: {err})"
    return None


def _in_threads(fn: Callable[..., Any], items: Sequence[tuple], workers: int | None) -> list:
    """``[fn(*item) for item in items]``, in order, over a thread pool (``workers`` None: Python's default)."""
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gcrepro-check") as pool:
        parts = pool.map(lambda chunk: [fn(*item) for item in chunk], chunks)
        return [result for part in parts for result in part]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listed(ann_file: Path, images: list) -> list[tuple[int, str, int, int]]:
    """(image id, file name, width, height) of each ``images`` entry, in order; DataError for an incomplete one."""
    listed = []
    for info in images:
        if not isinstance(info, dict):
            raise DataError(f"{ann_file}: an 'images' entry is a {type(info).__name__}, expected an object")
        missing = image_fields_missing(ann_file, info)
        if missing:
            raise DataError(missing)
        listed.append((info.get("id"), str(info["file_name"]), info["width"], info["height"]))
    return listed


def check_images(
    root: Path | str,
    split: str,
    *,
    images: list[dict] | None = None,
    workers: int | None = None,
    use_cache: bool = True,
) -> ImageCheck:
    """Check every image ``ROOT/annotations/instances_{split}2017.json`` lists (see the module docstring).

    Args:
        root: dataset folder (COCO 2017 layout).
        split: "train" or "val".
        images: the annotation file's ``images`` list when the caller has read it already
            (``dataset.coco.dataset["images"]``); default: read from the file.
        workers: threads (default: Python's, min(32, CPUs + 4)).
        use_cache: skip files that passed before unchanged, and remember a pass.

    Raises ``DataError``, one line: the first bad image listed (path, image id, why) and how many are bad.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    start = time.perf_counter()
    root = Path(root).expanduser().resolve()
    ann_file, image_dir = annotation_file(root, split), image_folder(root, split)
    if images is None:
        images = read_instances(ann_file, read_annotation_file(ann_file))["images"]
    elif not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: {image_dir} (COCO 2017 layout: ROOT/{split}2017/)")
    listed = _listed(ann_file, images)
    paths = [(image_dir / name,) for _, name, _, _ in listed]

    record = check_cache.record_path(ann_file, image_dir) if use_cache else None
    fingerprint = ""
    if record is not None:
        stats = _in_threads(_stat, paths, workers)
        fingerprint = check_cache.fingerprint(_sha256(ann_file), [(name, st) for (_, name, _, _), st in zip(listed, stats)])
    with check_cache.record_lock(record) if record is not None else contextlib.nullcontext():
        if record is not None and check_cache.passed_before(record, fingerprint):
            seconds = time.perf_counter() - start
            logger.info("%s: %d images unchanged since their check passed (%s)", image_dir, len(listed), record)
            return ImageCheck(ann_file, image_dir, len(listed), seconds, True, record)
        reasons = _in_threads(inspect_image, [(p, w, h) for (p,), (_, _, w, h) in zip(paths, listed)], workers)
        bad = [(item, reason) for item, reason in zip(listed, reasons) if reason is not None]
        if bad:
            (image_id, name, _, _), reason = bad[0]
            raise DataError(f"{image_dir / name} (image id {image_id}): {reason}; {len(bad)} of {len(listed)} images "
                            f"of {ann_file.name} are bad (this is the first listed)")
        seconds = time.perf_counter() - start
        logger.info("%s: checked %d images in %.1f s", image_dir, len(listed), seconds)
        if record is not None:
            summary = {"annotation_file": str(ann_file), "image_dir": str(image_dir), "images": len(listed),
                       "seconds": round(seconds, 3), "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            record = record if check_cache.remember_pass(record, fingerprint, summary) else None
    return ImageCheck(ann_file, image_dir, len(listed), seconds, False, record)
