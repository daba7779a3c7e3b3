"""Turn a ``--data`` argument into a dataset root: ``resolve_data(data) -> (root, "toy"|"coco")``."""
from __future__ import annotations

from pathlib import Path

from gcrepro.data.coco import annotation_file, image_folder
from gcrepro.data.errors import DataError
from gcrepro.data.toy import ensure_toy, read_manifest


def resolve_data(data: str | Path | None, *, splits: tuple[str, ...] = ("train", "val")) -> tuple[Path, str]:
    """Where the data is and what kind it is.

    - ``None`` (or ``"toy"`` when no folder of that name exists): make or reuse the toy dataset at
      ``gcrepro.paths.default_toy_dir()`` -> ``(root, "toy")``;
    - a folder with a toy manifest -> ``(root, "toy")``;
    - any other folder must have the COCO 2017 layout for ``splits``
      (``annotations/instances_{split}2017.json`` and ``{split}2017/``) -> ``(root, "coco")``;
      otherwise a ``DataError`` names the first missing file or folder.
    """
    if data is None or (str(data) == "toy" and not Path("toy").is_dir()):
        return ensure_toy(), "toy"
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root} (expected the COCO 2017 layout or a toy dataset)")
    if read_manifest(root) is not None:
        return root, "toy"
    for split in splits:
        if not annotation_file(root, split).is_file():
            raise DataError(
                f"{root}: missing {annotation_file(root, split).relative_to(root)} "
                f"(COCO 2017 layout: annotations/instances_{{train,val}}2017.json, {{train,val}}2017/)"
            )
        if not image_folder(root, split).is_dir():
            raise DataError(f"{root}: missing image folder {split}2017/ (COCO 2017 layout)")
    return root, "coco"
