"""``gcrepro convert SRC --out DST [--entry NAME|ROW]``.

Bad input (unreadable or unsafe file, unknown layout, another architecture than ``--entry``, missing
or extra keys) ends with ONE line on stderr and exit code 2, and nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert an mmdetection / original GCNet / torchvision checkpoint to gcrepro's layout",
        description="Read a checkpoint (mmdetection 2.x/3.x, original GCNet = mmdetection v1, torchvision "
                    "maskrcnn_resnet50_fpn, gcrepro) without running code from it, tell its table entry and write "
                    "a gcrepro checkpoint (tensors and plain values only).")
    p.add_argument("src", type=Path, help="the checkpoint to convert")
    p.add_argument("--out", type=Path, required=True, help="where to write the gcrepro checkpoint")
    p.add_argument("--entry", default=None,
                   help="table entry name or row (gcrepro table list); refused if the checkpoint is another "
                        "architecture (default: inferred from the checkpoint)")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from gcrepro.convert.api import convert_checkpoint, save_converted
    from gcrepro.convert.errors import ConvertError

    try:
        if args.out.resolve() == args.src.resolve():
            raise ConvertError(f"--out {args.out}: that is the source file; write the conversion elsewhere")
        converted = convert_checkpoint(args.src, entry=args.entry)
        print("\n".join(converted.summary()))
        save_converted(converted, args.out)
    except ConvertError as err:
        print(f"gcrepro convert: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"gcrepro convert: error: {args.out}: cannot write ({err.strerror or err})", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
