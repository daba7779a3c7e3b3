"""``gcrepro train`` and ``gcrepro eval``.

    gcrepro train ENTRY [--data DIR] [--work-dir DIR] [--profile toy|paper] [--set key=value ...]
                  [--gpus N | --nprocs N] [--resume] [--amp bf16|fp16] [--channels-last]
                  [--deterministic] [--seed N] [--progress auto|bar|lines|none] [--debug]
    gcrepro eval ENTRY [--checkpoint FILE] [--data DIR] [--work-dir DIR] [--gpus N | --nprocs N]
                 [--progress auto|bar|lines|none] [--debug]

Progress (:mod:`gcrepro.progress`): a bar on a terminal, a line every log_interval iterations otherwise, and
WORK_DIR/progress.json; Ctrl-C ends with one line and exit code 130, the run's progress.json saying
"interrupted" and its last checkpoint intact (``--resume`` continues from it).

Bad input (unknown entry, bad ``--set``, missing data, a bad checkpoint, a work dir that is a file,
not writable, full or in use, ``--gpus N`` without N CUDA devices, ``--resume`` with nothing to
resume) ends with ONE line on stderr and exit code 2; a failed run (NaN loss, failed worker) with
one line and exit code 1; anything else with one line pointing to its traceback in WORK_DIR/log.txt
(``--debug``: the traceback here). See :func:`gcrepro.cli.run_command`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gcrepro.cli import add_debug_flag, add_progress_option

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
    add_progress_option(p)
    add_debug_flag(p)


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a table entry (SPEC §4 recipe)",
                           description="Train a table entry with the paper's recipe (toy profile on toy data).")
    _add_common(train, data_help="dataset root in the COCO 2017 layout (default: the toy set, made on first use)",
                profile_help="model/recipe profile (default: toy on toy data, paper otherwise)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    train.add_argument("--resume", action="store_true",
                       help="continue from WORK_DIR/checkpoints/latest.pth (an error when there is none)")
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


def _folder(args: argparse.Namespace) -> Path | None:
    """The run folder for the error report (None when the entry is unknown: that error names it)."""
    from gcrepro.entries import EntryNotFound

    try:
        return _work_dir(args)
    except EntryNotFound:
        return None


def _entry_arg(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _run_errors() -> tuple[type[BaseException], ...]:
    from gcrepro.engine.launch import LaunchError
    from gcrepro.engine.trainer import NonFiniteLossError

    return (NonFiniteLossError, LaunchError)


def _train(args: argparse.Namespace) -> int:
    from gcrepro.cli import run_command

    return run_command("gcrepro train", lambda: _run_train(args), debug=getattr(args, "debug", False),
                       folder=_folder(args), run_errors=_run_errors())


def _run_train(args: argparse.Namespace) -> int:
    from gcrepro.engine.api import train
    from gcrepro.progress import option, progress_env

    options = {"amp": args.amp, "seed": args.seed}
    if args.channels_last:
        options["channels_last"] = True
    if args.deterministic:
        options["deterministic"] = True
    with progress_env(option(args.progress)):  # the engine (and launched ranks) read it
        final = train(
            _entry_arg(args.entry), data=args.data, work_dir=_work_dir(args), profile=args.profile, gpus=args.gpus,
            nprocs=args.nprocs, overrides=args.overrides, resume=args.resume,
            **{k: v for k, v in options.items() if v is not None},
        )
    print(f"final checkpoint: {final}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from gcrepro.cli import run_command

    return run_command("gcrepro eval", lambda: _run_eval(args), debug=getattr(args, "debug", False),
                       folder=_folder(args), run_errors=_run_errors())


def _run_eval(args: argparse.Namespace) -> int:
    from gcrepro.engine.api import evaluate
    from gcrepro.engine.checkpoint import latest_checkpoint
    from gcrepro.progress import option, progress_env

    mode = option(args.progress)
    work_dir = _work_dir(args)
    checkpoint = args.checkpoint or latest_checkpoint(work_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {work_dir}/checkpoints; pass --checkpoint FILE")
    with progress_env(mode):
        metrics = evaluate(
            _entry_arg(args.entry), checkpoint=checkpoint, data=args.data, work_dir=work_dir, profile=args.profile,
            gpus=args.gpus, nprocs=args.nprocs,
        )
    if metrics is not None:
        print(f"box AP {metrics.box_ap}  mask AP {metrics.mask_ap}  inf fps {metrics.inf_fps}  [{metrics.label_text}]"
              f"  -> {metrics.path}")
    return 0
