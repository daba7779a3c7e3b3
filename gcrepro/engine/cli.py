"""``gcrepro train`` and ``gcrepro eval``.

    gcrepro train ENTRY [--data DIR] [--work-dir DIR] [--profile toy|paper] [--set key=value ...]
                  [--gpus N | --nprocs N] [--resume] [--amp bf16|fp16] [--channels-last]
                  [--deterministic] [--seed N]
    gcrepro eval ENTRY [--checkpoint FILE] [--data DIR] [--work-dir DIR] [--gpus N | --nprocs N]

Bad input (unknown entry, bad ``--set``, missing data) ends with ONE line on stderr and exit
code 2; a failed run (NaN loss, failed worker) with one line and exit code 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

_SET_HELP = (
    "override a recipe/run field or a model field, e.g. --set max_iters=100 --set base_lr=0.01 "
    "--set rpn_post_nms_top_n_train=1000 (repeatable; an unknown key lists the allowed ones)"
)


def _add_common(p: argparse.ArgumentParser, *, data_help: str, profile_help: str) -> None:
    p.add_argument("entry", help="table entry name or row number (gcrepro table list)")
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--work-dir", type=Path, default=None, help="run folder (default: runs/ENTRY)")
    p.add_argument("--profile", choices=("toy", "paper"), default=None, help=profile_help)
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs: 0 = CPU (default), 1 = this process, N > 1 = N worker processes (NCCL)")
    p.add_argument("--nprocs", type=int, default=1, help="CPU worker processes (gloo) when --gpus 0 (default 1)")


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a table entry (SPEC §4 recipe)",
                           description="Train a table entry with the paper's recipe (toy profile on toy data).")
    _add_common(train, data_help="dataset root in the COCO 2017 layout (default: the toy set, made on first use)",
                profile_help="model/recipe profile (default: toy on toy data, paper otherwise)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    train.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoints/latest.pth")
    train.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision (fp16 uses a GradScaler)")
    train.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    train.add_argument("--deterministic", action="store_true",
                       help="torch.use_deterministic_algorithms and seeded data workers")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="COCO bbox + segm evaluation of a checkpoint",
                        description="Evaluate a checkpoint on the val split: results JSON, COCOeval, inference fps. "
                        "The model is rebuilt from the run spec the checkpoint records.")
    _add_common(ev, data_help="val set root in the COCO 2017 layout (default: the dataset the checkpoint was trained on)",
                profile_help="only for checkpoints of a gcrepro older than the run spec (else it must match)")
    ev.add_argument("--checkpoint", type=Path, default=None,
                    help="checkpoint file (default: WORK_DIR/checkpoints/latest.pth): gcrepro's, or a released "
                    "mmdetection 2.x/3.x, original GCNet or torchvision checkpoint (converted in memory)")
    ev.set_defaults(func=_eval)


def _work_dir(args: argparse.Namespace) -> Path:
    if args.work_dir is not None:
        return args.work_dir
    from gcrepro.entries import get_entry
    from gcrepro.paths import default_runs_dir

    return default_runs_dir() / get_entry(_entry_arg(args.entry)).name


def _entry_arg(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _fail(command: str, err: BaseException, code: int) -> int:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"gcrepro {command}: error: {message}", file=sys.stderr)
    return code


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from gcrepro.convert.errors import ConvertError
    from gcrepro.data.errors import DataError
    from gcrepro.engine.config import ConfigError
    from gcrepro.entries import EntryNotFound
    from gcrepro.run_metrics import MetricsError

    return (ConfigError, ConvertError, DataError, EntryNotFound, MetricsError, FileExistsError, FileNotFoundError)


def _run_errors() -> tuple[type[BaseException], ...]:
    from gcrepro.engine.launch import LaunchError
    from gcrepro.engine.trainer import NonFiniteLossError

    return (NonFiniteLossError, LaunchError)


def _train(args: argparse.Namespace) -> int:
    from gcrepro.engine.api import train

    options = {"amp": args.amp, "seed": args.seed}
    if args.channels_last:
        options["channels_last"] = True
    if args.deterministic:
        options["deterministic"] = True
    try:
        final = train(
            _entry_arg(args.entry), data=args.data, work_dir=_work_dir(args), profile=args.profile, gpus=args.gpus,
            nprocs=args.nprocs, overrides=args.overrides, resume=args.resume,
            **{k: v for k, v in options.items() if v is not None},
        )
    except _bad_input_errors() as err:
        return _fail("train", err, 2)
    except _run_errors() as err:
        return _fail("train", err, 1)
    print(f"final checkpoint: {final}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from gcrepro.engine.api import evaluate
    from gcrepro.engine.checkpoint import latest_checkpoint

    try:
        work_dir = _work_dir(args)
        checkpoint = args.checkpoint or latest_checkpoint(work_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint in {work_dir}/checkpoints; pass --checkpoint FILE")
        metrics = evaluate(
            _entry_arg(args.entry), checkpoint=checkpoint, data=args.data, work_dir=work_dir, profile=args.profile,
            gpus=args.gpus, nprocs=args.nprocs,
        )
    except _bad_input_errors() as err:
        return _fail("eval", err, 2)
    except _run_errors() as err:
        return _fail("eval", err, 1)
    if metrics is not None:
        print(f"box AP {metrics.box_ap}  mask AP {metrics.mask_ap}  inf fps {metrics.inf_fps}  [{metrics.label_text}]"
              f"  -> {metrics.path}")
    return 0
