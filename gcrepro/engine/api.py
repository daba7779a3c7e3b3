"""Public API: ``train`` and ``evaluate`` (the CLI and the notebooks call these).

    ckpt = gcrepro.train("mask_rcnn_r50_fpn_gc_r16_1x", work_dir="runs/r2")        # toy data, CPU
    metrics = gcrepro.evaluate("mask_rcnn_r50_fpn_gc_r16_1x", checkpoint=ckpt, work_dir="runs/r2")

``train`` resolves the run once (:func:`gcrepro.runspec.resolve_run`) or takes a resolved RunSpec, and
saves it in every checkpoint and in metrics.json; ``evaluate`` rebuilds the model from the
checkpoint's RunSpec, never from today's defaults. Several processes (``gpus > 1``, or ``nprocs > 1`` CPU processes) go through
:func:`gcrepro.engine.launch.launch`, which starts workers running these same functions; inside
a worker (or under torchrun) they join the process group instead of launching again.

Both own the run folder while they run (:mod:`gcrepro.run_lock`; under torchrun rank 0 takes the lock,
launched workers enter their parent's). Bad input fails before any worker starts: ``--gpus N``
without N CUDA devices, a folder in use, a file or not writable, a checkpoint that cannot be resumed.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcrepro.engine import checkpoint as ckpt
from gcrepro.engine import dist
from gcrepro.engine.config import ConfigError, TrainConfig
from gcrepro.engine.logs import setup_logging
from gcrepro.engine.measure import GIB, peak_memory_bytes, run_info
from gcrepro.run_dir import as_run_dir_error
from gcrepro.run_lock import hold_run_dir
from gcrepro.run_metrics import RunMetrics
from gcrepro.runspec import RunSpec, parse_overrides, resolve_run

logger = logging.getLogger("gcrepro.engine")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _set_deterministic(enabled: bool, device: torch.device) -> None:
    """``torch.use_deterministic_algorithms`` (CUDA: warn-only, RoIAlign backward has no deterministic kernel).

    Process-wide; ``train`` restores the previous setting when it returns.
    """
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    logger.info("deterministic mode: torch.use_deterministic_algorithms(True)%s, seeded data workers",
                " (warn-only on CUDA)" if device.type == "cuda" else "")


def _flush_denormals(device: torch.device, enabled: bool) -> None:
    """CPU only: flush denormal floats to zero (x86 FTZ/DAZ) while a run is in progress.

    Saturated logits (e.g. a mask head early in training from scratch) make gradients ~1e-40, and
    CPU arithmetic on denormals is many times slower (benchmarks/RESULTS.md, "Engine notes"). Values
    below 1.2e-38 have no effect on training in float32.
    """
    if device.type == "cpu":
        torch.set_flush_denormal(enabled)


def _cpu_threads(device: torch.device, *, requested: int, num_workers: int, world: int) -> None:
    """CPU runs: ``requested`` compute threads (0: default), leaving a core to each data-loading process.

    Oversubscribed OpenMP threads wait at every op's barrier for a descheduled thread
    (benchmarks/RESULTS.md, "Engine notes").
    """
    if device.type != "cpu":
        return
    if requested > 0:
        torch.set_num_threads(requested)
    if num_workers == 0:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, min(torch.get_num_threads(), cores // world - num_workers))
    if threads < torch.get_num_threads():
        logger.info("CPU: %d compute thread(s) per process beside %d data-loading process(es) on %d cores",
                    threads, num_workers, cores)
        torch.set_num_threads(threads)


@contextmanager
def _process_setup(work_dir: Path, *, gpus: int, cfg: TrainConfig) -> Iterator[torch.device]:
    """One run in this process: join (or create) the process group, log to ``work_dir`` (rank 0), and
    on CPU flush denormals and set the compute threads. Yields the device; afterwards the threads and
    the denormal mode are restored and a process group created here is destroyed."""
    use_cuda = gpus > 0 or (dist.launched_by_torchrun() and torch.cuda.is_available() and gpus != 0)
    owns_group = not dist.is_initialized()
    device = dist.init_distributed(use_cuda=use_cuda)
    threads = torch.get_num_threads()
    failed = True
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(work_dir if dist.get_rank() == 0 else None, rank=dist.get_rank())
        _flush_denormals(device, True)
        _cpu_threads(device, requested=cfg.cpu_threads, num_workers=cfg.num_workers, world=dist.get_world_size())
        yield device
        failed = False
    except Exception as err:  # a full disk or a folder made read-only during the run: say so in one line
        translated = as_run_dir_error(err, work_dir)
        if translated is None:
            raise
        raise translated from err
    finally:
        torch.set_num_threads(threads)
        _flush_denormals(device, False)
        if owns_group:
            dist.destroy_distributed(synchronize=not failed)


def check_gpus(gpus: int) -> None:
    """``gpus`` CUDA devices must be here (a torchrun rank needs its local rank's); checked before any
    worker starts."""
    need = dist.get_local_rank() + 1 if gpus > 0 and dist.launched_by_torchrun() else gpus
    have = torch.cuda.device_count()
    if need > have:
        raise ConfigError(f"--gpus {gpus}: this machine has {have} CUDA device{'' if have == 1 else 's'} "
                          "(--gpus 0 runs on the CPU)")


def _owning(work_dir: str | Path) -> AbstractContextManager:
    """The run folder's lock for this process; none for a torchrun rank other than 0 (it writes nothing)."""
    if dist.launched_by_torchrun() and os.environ.get("RANK", "0") != "0":
        return nullcontext()
    return hold_run_dir(work_dir, option="--work-dir")


RESUME_MODES = {"no": False, "yes": True, "auto": "auto"}  # the notebook's spelling -> train's


def resume_mode(resume: bool | str) -> bool | str:
    """``resume`` as False | True | "auto" (the train notebook's "no" | "yes" | "auto" too)."""
    if isinstance(resume, bool):
        return resume
    if resume in RESUME_MODES:
        return RESUME_MODES[resume]
    raise ConfigError(f"resume={resume!r}: expected False, True or 'auto' (the notebook's no | yes | auto)")


def _multi_process(gpus: int, nprocs: int) -> int:
    """How many workers to launch from here (0: run in this process)."""
    if dist.launched_by_torchrun():
        return 0
    n = max(gpus, nprocs)
    return n if n > 1 else 0


def _trim_metrics_jsonl(path: Path, *, upto_iteration: int) -> None:
    """On resume, drop log lines written after the checkpoint (they are redone) and a torn last line."""
    if not path.is_file():
        return
    import json

    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            iteration = json.loads(line)["iteration"]
        except (ValueError, KeyError, TypeError):
            logger.warning("%s: line %d is not a complete log line (an interrupted write?); dropped", path, number)
            continue
        if iteration <= upto_iteration:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def train(
    entry: str | int | RunSpec,
    *,
    data: str | Path | None = None,
    work_dir: str | Path,
    profile: str | None = None,
    gpus: int = 0,
    nprocs: int = 1,
    overrides: list[str] | dict[str, Any] | None = None,
    resume: bool | str = False,
    **options: Any,
) -> Path:
    """Train a table entry; returns the final checkpoint (``WORK_DIR/checkpoints/iter_*.pth``).

    Args:
        entry: entry name or table row (``gcrepro table list``), or a resolved RunSpec (then
            ``data``, ``profile``, ``overrides`` and ``options`` must not be given).
        data: dataset root (COCO 2017 layout or a toy set); None makes/reuses the toy set.
        work_dir: run folder: ``metrics.jsonl``, ``metrics.json``, ``checkpoints/``, ``log.txt``.
        profile: "toy" | "paper"; default "toy" on toy data, "paper" otherwise.
        gpus: 0 = CPU; 1 = one GPU in this process; N > 1 = N GPU workers (NCCL).
        nprocs: CPU worker processes (gloo) when gpus == 0.
        overrides: ``["key=value", ...]`` or a dict: TrainConfig and ModelConfig fields.
        resume: False: a new run (an error when WORK_DIR holds checkpoints); True: continue from
            ``WORK_DIR/checkpoints/latest.pth`` (an error when there is none; a finished run returns at
            once); "auto": continue if there is a checkpoint, else start. The checkpoint's run spec must
            equal this one but for run options (TrainConfig RUN_OPTIONS, ModelConfig gc_impl).
        options: TrainConfig fields by name (amp="bf16", channels_last=True, deterministic=True, seed=1, ...).

    The run folder is this process's while it trains (:mod:`gcrepro.run_lock`).
    """
    resume = resume_mode(resume)
    if gpus < 0 or nprocs < 1:
        raise ConfigError(f"gpus={gpus}, nprocs={nprocs}: expected gpus >= 0 and nprocs >= 1")
    check_gpus(gpus)
    if isinstance(entry, RunSpec):
        if data is not None or profile is not None or overrides or options:
            raise ConfigError("train(spec): a resolved RunSpec takes no data, profile, overrides or options")
        spec = entry
    else:
        # Bad keys/values fail here, at once, before any data is made or worker started.
        typed = {**parse_overrides(overrides),
                 **parse_overrides({k: v for k, v in options.items() if v is not None}, source="option")}
        spec = resolve_run(entry, data=data, profile=profile, overrides=typed)
    with _owning(work_dir):
        return run_training(spec, work_dir=work_dir, gpus=gpus, nprocs=nprocs, resume=resume)


def run_training(spec: RunSpec | dict[str, Any], *, work_dir: str | Path, gpus: int = 0, nprocs: int = 1,
                 resume: bool | str = False) -> Path:
    """Train exactly ``spec`` (a RunSpec, or its ``to_dict()`` in launched workers) in ``work_dir``, which the
    caller owns (``train`` does)."""
    if not isinstance(spec, RunSpec):
        spec = RunSpec.from_dict(spec, where="run_training")
    resume = resume_mode(resume)
    start = _resume_point(Path(work_dir), spec, resume)  # bad input fails here, before any worker starts
    n = _multi_process(gpus, nprocs)
    if n:
        from gcrepro.engine.launch import launch

        del start  # each worker reads it again
        kwargs = dict(spec=spec.to_dict(), work_dir=str(work_dir), gpus=gpus, nprocs=nprocs, resume=resume)
        return Path(launch(n, target="gcrepro.engine.api:run_training", kwargs=kwargs))
    return _train_here(spec, work_dir=Path(work_dir), gpus=gpus, start=start)


# What Trainer.load_state_dict reads from a checkpoint.
_TRAINING_STATE = ("model", "optimizer", "scheduler", "iteration", "epoch", "iter_in_epoch")


def _resume_point(work_dir: Path, spec: RunSpec, resume: bool | str) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint this run continues from and its state, checked; (None, None) for a new run."""
    latest = ckpt.latest_checkpoint(work_dir)
    if latest is None:
        if resume is True:
            raise ConfigError(f"nothing to resume in {work_dir}: no checkpoints; drop --resume to start a new run")
        return None, None
    if resume is False:
        raise FileExistsError(f"{work_dir} already holds checkpoints ({latest.name}); pass --resume to continue "
                              "that run or choose a new --work-dir")
    state = ckpt.load_checkpoint(latest)
    missing = [k for k in _TRAINING_STATE if k not in state]
    if missing:
        raise ckpt.CheckpointError(f"checkpoint {latest}: not a gcrepro training checkpoint (no {missing[0]!r}); "
                                   "it cannot be resumed; choose a new --work-dir")
    _check_resume(latest, state, spec)
    return latest, state


def _check_resume(checkpoint: Path, state: dict[str, Any], spec: RunSpec) -> None:
    """A resumed run must be the same run: the checkpoint's spec equals ``spec`` but for run options."""
    from gcrepro.engine.config import RUN_OPTIONS
    from gcrepro.fields import to_plain
    from gcrepro.runspec import MODEL_RUN_OPTIONS

    saved = ckpt.spec_from_checkpoint(state, checkpoint)
    if saved is None:
        logger.warning("resume: %s holds no run spec (an older gcrepro); its settings are not checked", checkpoint)
        return
    changed = []
    for part, skip in (("model", MODEL_RUN_OPTIONS), ("train", RUN_OPTIONS)):
        old, new = to_plain(getattr(saved, part)), to_plain(getattr(spec, part))
        changed += [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k not in skip and old.get(k) != new[k]]
    if saved.entry != spec.entry or saved.profile != spec.profile:
        changed.insert(0, f"entry/profile: {saved.entry}/{saved.profile} -> {spec.entry}/{spec.profile}")
    if saved.data.val_sha256 != spec.data.val_sha256 or saved.data.kind != spec.data.kind:
        changed.append(f"data: {saved.data.root} -> {spec.data.root} (other annotations)")
    if changed:
        raise ConfigError(f"--resume: {checkpoint} was trained with other settings ({'; '.join(changed[:3])}); "
                          "resume with the same settings (run options such as num_workers may change) or use "
                          "a new --work-dir")


def _train_here(spec: RunSpec, *, work_dir: Path, gpus: int,
                start: tuple[Path | None, dict[str, Any] | None]) -> Path:
    from gcrepro.data import CocoInstances, build_loader, check_images
    from gcrepro.engine.epoch_data import EpochBatches
    from gcrepro.engine.recipe import WarmupStepSchedule, build_optimizer, milestone_iters, scale_lr
    from gcrepro.engine.trainer import Checkpointer, MetricsLogger, ProgressHook, Trainer
    from gcrepro.entries import get_entry
    from gcrepro.modeling.build import build_detector

    cfg = spec.train
    entry = get_entry(spec.entry)
    latest, state = start
    del start
    with _process_setup(work_dir, gpus=gpus, cfg=cfg) as device:
        rank, world = dist.get_rank(), dist.get_world_size()
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            # The data first: a bad split or image is one line before anything else is said or done.
            dataset = CocoInstances(spec.data.root, "train", train=True, seed=cfg.seed)
            # every listed image exists, decodes and has its size, before the first iteration (cached)
            check_images(dataset.root, "train", images=dataset.coco.dataset["images"])
            if dataset.num_classes != spec.model.num_classes:
                raise ConfigError(f"{dataset.ann_file}: {dataset.num_classes - 1} categories, but the val split "
                                  f"has {spec.model.num_classes - 1}; train and val need the same categories")
            logger.info("train %s (row %d) on %s, profile %s, %d process(es) on %s; numbers labelled %s",
                        entry.name, entry.row, spec.data.root, spec.profile, world, device, spec.label)
            diffs = spec.differences_from_paper()
            if diffs:
                logger.info("differs from the paper (SPEC §2-4) in: %s",
                            ", ".join(f"{k}={v['used']} (paper {v['paper']})" for k, v in diffs.items()))
            _set_deterministic(cfg.deterministic, device)

            # Model init: the same seed on every rank (DDP also broadcasts rank 0's weights).
            _seed_everything(cfg.seed)
            model = build_detector(spec.model, pretrained_backbone=cfg.pretrained_backbone).to(device)
            if cfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model = dist.prepare_sync_bn(model, norm=spec.model.norm, device=device)
            # Training streams (RPN / RoI sampling): one per rank.
            _seed_everything(cfg.seed + rank)

            loader = build_loader(dataset, batch_size=cfg.images_per_gpu, train=True, num_workers=cfg.num_workers,
                                  seed=cfg.seed, distributed=world > 1, pin_memory=device.type == "cuda")
            data_epochs = EpochBatches(loader, seed=cfg.seed)
            iters_per_epoch = len(data_epochs)
            max_iter = cfg.epochs * iters_per_epoch
            if cfg.max_iters:
                max_iter = min(max_iter, cfg.max_iters)
            lr = scale_lr(base_lr=cfg.base_lr, base_batch_size=cfg.base_batch_size, total_batch=cfg.total_batch(world))
            optimizer = build_optimizer(model, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            schedule = WarmupStepSchedule(
                optimizer, base_lr=lr, warmup_iters=cfg.warmup_iters, warmup_ratio=cfg.warmup_ratio,
                milestones=milestone_iters(cfg.lr_steps, iters_per_epoch), gamma=cfg.lr_gamma,
            )
            scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
            if world > 1:
                model = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None
                )
            logger.info("%d images, %d iterations per epoch (%d images per process x %d), %d iterations in total; "
                        "lr %g, steps at iterations %s", len(dataset), iters_per_epoch, cfg.images_per_gpu, world,
                        max_iter, lr, list(schedule.milestones))

            trainer = Trainer(
                model=model, optimizer=optimizer, schedule=schedule, data=data_epochs, spec=spec, device=device,
                max_iter=max_iter, scaler=scaler,
                hooks=[
                    MetricsLogger(work_dir / "metrics.jsonl", interval=cfg.log_interval),
                    ProgressHook(entry=entry.name, work_dir=work_dir, every=cfg.log_interval),
                    Checkpointer(work_dir, interval=cfg.checkpoint_interval, keep=cfg.keep_checkpoints),
                ],
            )
            if state is not None:
                trainer.load_state_dict(state)
                trainer.last_checkpoint = latest
                logger.info("resumed from %s: iteration %d, epoch %d (+%d batches)",
                            latest, trainer.iteration, trainer.epoch, trainer.iter_in_epoch)
                if rank == 0:
                    _trim_metrics_jsonl(work_dir / "metrics.jsonl", upto_iteration=trainer.iteration)
                del state
            elif rank == 0:  # a fresh run: no log lines or metrics of an earlier, checkpoint-less attempt
                (work_dir / "metrics.jsonl").unlink(missing_ok=True)
                (work_dir / "metrics.json").unlink(missing_ok=True)
            if trainer.iteration >= max_iter:
                logger.info("nothing to do: the run already finished at iteration %d", trainer.iteration)
                return ckpt.checkpoint_dir(work_dir) / ckpt.iter_checkpoint_name(trainer.iteration)
            trainer.run()

            _write_train_metrics(work_dir, trainer=trainer, lr=lr, diffs=diffs, iters_per_epoch=iters_per_epoch)
            final = ckpt.checkpoint_dir(work_dir) / ckpt.iter_checkpoint_name(trainer.iteration)
            logger.info("finished %d iterations; final checkpoint %s", trainer.iteration, final)
            return final
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def _write_train_metrics(work_dir: Path, *, trainer: Any, lr: float, diffs: dict[str, Any],
                         iters_per_epoch: int) -> None:
    """Training's part of metrics.json (SPEC §5): memory (max over ranks), s/iter, provenance."""
    from gcrepro.run_metrics import write_train_metrics

    cfg, device, world = trainer.spec.train, trainer.device, dist.get_world_size()
    mem, mem_kind = peak_memory_bytes(device)
    mem = dist.reduce_max(float(mem), device)  # collective: every rank takes part
    if dist.get_rank() != 0:
        return
    s_per_iter = trainer.timer.mean()
    write_train_metrics(
        work_dir, trainer.spec, iterations=trainer.iteration, mem_gb=round(mem / GIB, 3), mem_kind=mem_kind,
        train_s_per_iter=round(s_per_iter, 4) if s_per_iter is not None else None,
        train_images_per_s=round(cfg.total_batch(world) / s_per_iter, 3) if s_per_iter else None,
        train={"lr": lr, "total_batch": cfg.total_batch(world), "world_size": world,
               "iters_per_epoch": iters_per_epoch, "differs_from_paper": diffs},
        provenance=run_info(device, world),
    )


EVAL_OPTIONS = ("num_workers", "cpu_threads", "amp", "channels_last", "gc_impl")


def evaluate(
    entry: str | int,
    *,
    checkpoint: str | Path,
    data: str | Path | None = None,
    work_dir: str | Path,
    profile: str | None = None,
    gpus: int = 0,
    nprocs: int = 1,
    **options: Any,
) -> RunMetrics | None:
    """COCO bbox + segm evaluation of a checkpoint on the val split; returns the run's metrics.json, typed
    (None inside a torchrun / launched worker).

    The model is the one the checkpoint's run spec describes. ``data``: the val set (default: the
    dataset it was trained on). ``profile`` is only needed for checkpoints of a gcrepro older than
    the run spec (it must match otherwise). Writes ``WORK_DIR/results/{bbox,segm}.json`` and merges
    ``bbox``, ``segm``, ``inf_fps`` into ``WORK_DIR/metrics.json``. ``options``: EVAL_OPTIONS. The run folder is
    this process's while it evaluates (:mod:`gcrepro.run_lock`).
    """
    unknown = sorted(set(options) - set(EVAL_OPTIONS))
    if unknown:
        raise ConfigError(f"evaluate: unknown option {unknown[0]!r}; allowed: {', '.join(EVAL_OPTIONS)}")
    parse_overrides({k: v for k, v in options.items() if v is not None}, source="option")
    check_gpus(gpus)
    with _owning(work_dir):
        n = _multi_process(gpus, nprocs)
        if n:
            from gcrepro.engine.launch import launch
            from gcrepro.engine.model_checkpoint import open_checkpoint

            # bad input (a corrupt or foreign checkpoint, another entry's) fails here, before any worker starts
            open_checkpoint(entry, checkpoint, data=data, profile=profile)
            kwargs = dict(entry=entry, checkpoint=str(checkpoint), data=None if data is None else str(data),
                          work_dir=str(work_dir), profile=profile, gpus=gpus, nprocs=nprocs, **options)
            launch(n, target="gcrepro.engine.api:evaluate", kwargs=kwargs)
        else:
            _evaluate_here(entry, checkpoint=Path(checkpoint), data=data, work_dir=Path(work_dir), profile=profile,
                           gpus=gpus, options={k: v for k, v in options.items() if v is not None})
    if dist.launched_by_torchrun():
        return None  # a worker: the process that launched it (or rank 0's caller) reads metrics.json
    from gcrepro.run_metrics import read_metrics

    return read_metrics(Path(work_dir))


def _evaluate_here(
    entry: str | int,
    *,
    checkpoint: Path,
    data: str | Path | None,
    work_dir: Path,
    profile: str | None,
    gpus: int,
    options: dict[str, Any],
) -> None:
    from gcrepro.data import CocoInstances, build_loader, check_images, check_split
    from gcrepro.engine.evaluate import COCOEvaluator
    from gcrepro.engine.inference import run_inference
    from gcrepro.modeling.build import build_detector
    from gcrepro.engine.model_checkpoint import open_checkpoint
    from gcrepro.run_metrics import write_eval_metrics

    opened = open_checkpoint(entry, checkpoint, data=data, profile=profile)
    # metrics.json records the spec as trained (the same run as its training part) and the val set apart
    trained, on, iteration, layout = opened.trained, opened.spec, opened.iteration, opened.layout
    # Evaluation-time run options (not what was trained): loader processes, threads, precision, layout, op.
    cfg = dataclasses.replace(on.train, **{k: v for k, v in options.items() if k != "gc_impl"})
    model_config = dataclasses.replace(on.model, gc_impl=options.get("gc_impl", on.model.gc_impl))

    with _process_setup(work_dir, gpus=gpus, cfg=cfg) as device:
        rank, world = dist.get_rank(), dist.get_world_size()
        dataset = CocoInstances(on.data.root, "val", train=False)
        check_split(dataset, purpose="eval")  # an empty val split is an error, not AP 0.0
        check_images(dataset.root, "val", images=dataset.coco.dataset["images"])
        model = build_detector(model_config)
        model.load_state_dict(opened.state_dict)
        del opened
        model = model.to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader = build_loader(dataset, batch_size=1, train=False, num_workers=cfg.num_workers, seed=cfg.seed,
                              distributed=world > 1, pin_memory=device.type == "cuda")
        evaluator = COCOEvaluator(dataset.coco, label_to_cat_id=dataset.label_to_cat_id, output_dir=work_dir / "results")
        logger.info("evaluate %s from %s on %s (%d images), %d process(es) on %s; numbers labelled %s",
                    on.entry, checkpoint, on.data.root, len(dataset), world, device, on.label)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        timing = run_inference(model, loader, evaluator, device=device, amp_dtype=amp, entry=on.entry,
                               work_dir=work_dir, every=cfg.log_interval)
        metrics = evaluator.evaluate()
        if rank != 0:
            return
        fps = timing.fps
        eval_info = {"checkpoint": str(checkpoint), "checkpoint_iteration": iteration, "checkpoint_layout": layout,
                     "images": len(dataset), "world_size": world, "inf_images_timed": timing.images_timed,
                     "options": options, **run_info(device, world)}
        write_eval_metrics(work_dir, trained, eval_data=on.data, bbox=metrics["bbox"], segm=metrics["segm"],
                           inf_fps=round(fps, 3) if fps is not None else None, eval=eval_info)
        logger.info("%s: box AP %.1f, mask AP %.1f (%s), %.2f fps (batch 1, whole pipeline, %s)", on.entry,
                    metrics["bbox"]["AP"] or 0.0, metrics["segm"]["AP"] or 0.0, on.label, fps or 0.0, device)
