"""Public API: ``train`` and ``evaluate`` (the CLI and the notebooks call these).

    ckpt = gcrepro.train("mask_rcnn_r50_fpn_gc_r16_1x", work_dir="runs/r2")        # toy data, CPU
    metrics = gcrepro.evaluate("mask_rcnn_r50_fpn_gc_r16_1x", checkpoint=ckpt, work_dir="runs/r2")

Several processes (``gpus > 1``, or ``nprocs > 1`` CPU processes) go through
:func:`gcrepro.engine.launch.launch`, which starts workers running these same functions; inside
a worker (or under torchrun) they join the process group instead of launching again.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcrepro.engine import checkpoint as ckpt
from gcrepro.engine import dist
from gcrepro.engine.config import ConfigError, TrainConfig, differences_from_paper, make_config, parse_overrides
from gcrepro.engine.logs import setup_logging
from gcrepro.engine.measure import GIB, peak_memory_bytes, run_info, update_metrics_json

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

    Saturated logits (e.g. a mask head early in training from scratch) make gradients ~1e-40;
    CPU arithmetic on such denormals is 10-100x slower (measured: toy iterations 2-16 s -> 0.1 s
    with it). Values below 1.2e-38 have no effect on training in float32.
    """
    if device.type == "cpu":
        torch.set_flush_denormal(enabled)


def _cpu_threads(device: torch.device, *, requested: int, num_workers: int, world: int) -> None:
    """CPU runs: ``requested`` compute threads (0: default), leaving a core to each data-loading process.

    Oversubscribed OpenMP threads wait at every op's barrier for a descheduled thread (measured,
    2 threads + 1 loader on 2 cores: 0.6-8 s per toy iteration instead of 0.2 s).
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
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(work_dir if dist.get_rank() == 0 else None, rank=dist.get_rank())
        _flush_denormals(device, True)
        _cpu_threads(device, requested=cfg.cpu_threads, num_workers=cfg.num_workers, world=dist.get_world_size())
        yield device
    finally:
        torch.set_num_threads(threads)
        _flush_denormals(device, False)
        if owns_group:
            dist.destroy_distributed()


def _multi_process(gpus: int, nprocs: int) -> int:
    """How many workers to launch from here (0: run in this process)."""
    if dist.launched_by_torchrun():
        return 0
    n = max(gpus, nprocs)
    return n if n > 1 else 0


def _resolve(entry: str | int, data: str | Path | None, profile: str | None):
    from gcrepro.data import resolve_data
    from gcrepro.entries import get_entry

    entry_obj = get_entry(entry)
    root, kind = resolve_data(data)
    return entry_obj, root, kind, profile or ("toy" if kind == "toy" else "paper")


def _build_model(entry_name: str, *, num_classes: int, cfg: TrainConfig) -> torch.nn.Module:
    from gcrepro.modeling.build import build_model

    return build_model(
        entry_name,
        num_classes=num_classes,
        profile=cfg.profile,
        gc_impl=cfg.gc_impl,
        pretrained_backbone=cfg.pretrained_backbone,
        **cfg.model,
    )


def _model_profile_changes(profile: str) -> dict[str, Any]:
    """What the model's profile changes from the paper's model (input scale, widths)."""
    from gcrepro.modeling.build import get_profile

    return get_profile(profile).changes()


def _trim_metrics_jsonl(path: Path, *, upto_iteration: int) -> None:
    """On resume, drop log lines written after the checkpoint (they are redone)."""
    if not path.is_file():
        return
    import json

    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iteration"] <= upto_iteration]
    path.write_text("".join(line + "\n" for line in kept))


def train(
    entry: str | int,
    *,
    data: str | Path | None = None,
    work_dir: str | Path,
    profile: str | None = None,
    gpus: int = 0,
    nprocs: int = 1,
    overrides: list[str] | dict[str, Any] | None = None,
    resume: bool = False,
    **options: Any,
) -> Path:
    """Train a table entry; returns the final checkpoint (``WORK_DIR/checkpoints/iter_*.pth``).

    Args:
        entry: entry name or table row (``gcrepro table list``).
        data: dataset root (COCO 2017 layout or a toy set); None makes/reuses the toy set.
        work_dir: run folder: ``metrics.jsonl``, ``metrics.json``, ``checkpoints/``, ``log.txt``.
        profile: "toy" | "paper"; default "toy" on toy data, "paper" on COCO.
        gpus: 0 = CPU; 1 = one GPU in this process; N > 1 = N GPU workers (NCCL).
        nprocs: CPU worker processes (gloo) when gpus == 0.
        overrides: ``["key=value", ...]`` or a dict: TrainConfig fields and ModelConfig keys.
        resume: continue from ``WORK_DIR/checkpoints/latest.pth`` (a finished run returns at once).
        options: TrainConfig fields by name (amp="bf16", channels_last=True, deterministic=True, seed=1, ...).
    """
    # Bad keys/values fail here, at once, before any data is made or worker started.
    parse_overrides(overrides)
    parse_overrides({k: v for k, v in options.items() if v is not None}, source="option")
    if gpus < 0 or nprocs < 1:
        raise ConfigError(f"gpus={gpus}, nprocs={nprocs}: expected gpus >= 0 and nprocs >= 1")
    n = _multi_process(gpus, nprocs)
    if n:
        from gcrepro.engine.launch import launch

        kwargs = dict(entry=entry, data=data, work_dir=work_dir, profile=profile, gpus=gpus, nprocs=nprocs,
                      overrides=overrides, resume=resume, **options)
        return Path(launch(n, target="gcrepro.engine.api:train", kwargs=kwargs))
    return _train_here(entry, data=data, work_dir=Path(work_dir), profile=profile, gpus=gpus,
                       overrides=overrides, resume=resume, options=options)


def _train_here(
    entry: str | int,
    *,
    data: str | Path | None,
    work_dir: Path,
    profile: str | None,
    gpus: int,
    overrides: list[str] | dict[str, Any] | None,
    resume: bool,
    options: dict[str, Any],
) -> Path:
    from gcrepro.data import CocoInstances, build_loader
    from gcrepro.engine.epoch_data import EpochBatches
    from gcrepro.engine.recipe import WarmupStepSchedule, build_optimizer, milestone_iters, scale_lr
    from gcrepro.engine.trainer import Checkpointer, MetricsLogger, ProgressBar, Trainer

    entry_obj, root, kind, profile = _resolve(entry, data, profile)
    cfg = make_config(entry=entry_obj.name, epochs=entry_obj.epochs, lr_steps=entry_obj.lr_steps, profile=profile,
                      data=str(root), data_kind=kind, options=options, overrides=overrides)
    with _process_setup(work_dir, gpus=gpus, cfg=cfg) as device:
        rank, world = dist.get_rank(), dist.get_world_size()
        was_deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            latest = ckpt.latest_checkpoint(work_dir)
            if latest is not None and not resume:
                raise FileExistsError(
                    f"{work_dir} already holds checkpoints ({latest.name}); pass --resume to continue that run "
                    "or choose a new --work-dir"
                )
            logger.info("train %s (row %d) on %s data at %s, profile %s, %d process(es) on %s",
                        entry_obj.name, entry_obj.row, kind, root, profile, world, device)
            diffs = differences_from_paper(cfg, epochs=entry_obj.epochs, lr_steps=entry_obj.lr_steps)
            if diffs:
                logger.info("recipe differs from the paper's (SPEC §4) in: %s",
                            ", ".join(f"{k}={v['used']} (paper {v['paper']})" for k, v in diffs.items()))
            _set_deterministic(cfg.deterministic, device)

            # Model init: the same seed on every rank (DDP also broadcasts rank 0's weights).
            _seed_everything(cfg.seed)
            dataset = CocoInstances(root, "train", train=True, seed=cfg.seed)
            model = _build_model(entry_obj.name, num_classes=dataset.num_classes, cfg=cfg).to(device)
            if cfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model = dist.prepare_sync_bn(model, norm=entry_obj.norm, device=device)
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
                model=model, optimizer=optimizer, schedule=schedule, data=data_epochs, cfg=cfg, device=device,
                work_dir=work_dir, max_iter=max_iter, scaler=scaler,
                hooks=[
                    MetricsLogger(work_dir / "metrics.jsonl", interval=cfg.log_interval),
                    ProgressBar(desc=entry_obj.name),
                    Checkpointer(work_dir, interval=cfg.checkpoint_interval, keep=cfg.keep_checkpoints),
                ],
            )
            if latest is not None:
                state = ckpt.load_checkpoint(latest, map_location="cpu")
                trainer.load_state_dict(state)
                trainer.last_checkpoint = latest
                logger.info("resumed from %s: iteration %d, epoch %d (+%d batches)",
                            latest, trainer.iteration, trainer.epoch, trainer.iter_in_epoch)
                if rank == 0:
                    _trim_metrics_jsonl(work_dir / "metrics.jsonl", upto_iteration=trainer.iteration)
            elif rank == 0:  # a fresh run: no log lines or metrics of an earlier, checkpoint-less attempt
                (work_dir / "metrics.jsonl").unlink(missing_ok=True)
                (work_dir / "metrics.json").unlink(missing_ok=True)
            if trainer.iteration >= max_iter:
                logger.info("nothing to do: the run already finished at iteration %d", trainer.iteration)
                return ckpt.checkpoint_dir(work_dir) / ckpt.iter_checkpoint_name(trainer.iteration)
            trainer.run()

            _write_train_metrics(work_dir, trainer=trainer, entry=entry_obj.name, kind=kind, lr=lr, diffs=diffs,
                                 iters_per_epoch=iters_per_epoch)
            final = ckpt.checkpoint_dir(work_dir) / ckpt.iter_checkpoint_name(trainer.iteration)
            logger.info("finished %d iterations; final checkpoint %s", trainer.iteration, final)
            return final
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def _write_train_metrics(
    work_dir: Path,
    *,
    trainer: Any,
    entry: str,
    kind: str,
    lr: float,
    diffs: dict[str, Any],
    iters_per_epoch: int,
) -> None:
    """Training's part of metrics.json (SPEC §5): memory (max over ranks), s/iter, provenance, config."""
    cfg, device, world = trainer.cfg, trainer.device, dist.get_world_size()
    mem, mem_kind = peak_memory_bytes(device)
    mem = dist.reduce_max(float(mem), device)  # collective: every rank takes part
    if dist.get_rank() != 0:
        return
    s_per_iter = trainer.timer.mean()
    config = cfg.to_dict()
    config.update(
        differs_from_paper=diffs, lr=lr, total_batch=cfg.total_batch(world), world_size=world,
        iters_per_epoch=iters_per_epoch, model_profile_changes=_model_profile_changes(cfg.profile),
    )
    update_metrics_json(work_dir, {
        "entry": entry,
        "profile": cfg.profile,
        "data": kind,
        "iterations": trainer.iteration,
        "mem_gb": round(mem / GIB, 3),
        "mem_kind": mem_kind,
        "train_s_per_iter": round(s_per_iter, 4) if s_per_iter is not None else None,
        "train_images_per_s": round(cfg.total_batch(world) / s_per_iter, 3) if s_per_iter else None,
        **run_info(device, world),
        "config": config,
    })


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
) -> dict[str, Any]:
    """COCO bbox + segm evaluation of a checkpoint on the val split; returns the merged metrics.json.

    Writes ``WORK_DIR/results/{bbox,segm}.json`` and merges ``bbox``, ``segm``, ``inf_fps`` into
    ``WORK_DIR/metrics.json``. ``options``: ``num_workers``, ``amp``, ``channels_last``.
    """
    n = _multi_process(gpus, nprocs)
    if n:
        from gcrepro.engine.launch import launch

        kwargs = dict(entry=entry, checkpoint=checkpoint, data=data, work_dir=work_dir, profile=profile,
                      gpus=gpus, nprocs=nprocs, **options)
        return launch(n, target="gcrepro.engine.api:evaluate", kwargs=kwargs)
    return _evaluate_here(entry, checkpoint=Path(checkpoint), data=data, work_dir=Path(work_dir), profile=profile,
                          gpus=gpus, options=options)


def _evaluate_here(
    entry: str | int,
    *,
    checkpoint: Path,
    data: str | Path | None,
    work_dir: Path,
    profile: str | None,
    gpus: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    from gcrepro.data import CocoInstances, build_loader
    from gcrepro.engine.evaluate import COCOEvaluator
    from gcrepro.engine.inference import run_inference

    state = ckpt.load_checkpoint(checkpoint, map_location="cpu")
    checkpoint_iteration = state.get("iteration")
    saved = TrainConfig.from_dict(state["config"]) if isinstance(state.get("config"), dict) else None
    if data is None and saved is not None and saved.data_kind == "coco" and saved.data:
        data = saved.data  # a COCO-trained checkpoint evaluates on its own dataset, not the toy default
        logger.info("evaluate: no --data given; using the checkpoint's dataset %s", data)
    entry_obj, root, kind, profile = _resolve(entry, data, profile or (saved.profile if saved else None))
    if saved is not None and saved.entry and saved.entry != entry_obj.name:
        raise ValueError(f"checkpoint {checkpoint} was trained for {saved.entry}, not {entry_obj.name}")
    cfg = dataclasses.replace(saved or TrainConfig(), entry=entry_obj.name, profile=profile, data=str(root), data_kind=kind)
    allowed = ("num_workers", "cpu_threads", "amp", "channels_last", "gc_impl")
    eval_opts = {k: options[k] for k in allowed if options.get(k) is not None}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"evaluate: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")
    cfg = dataclasses.replace(cfg, **eval_opts)

    with _process_setup(work_dir, gpus=gpus, cfg=cfg) as device:
        rank, world = dist.get_rank(), dist.get_world_size()
        dataset = CocoInstances(root, "val", train=False)
        model = _build_model(entry_obj.name, num_classes=dataset.num_classes, cfg=cfg)
        model.load_state_dict(ckpt.model_state_from(state))
        del state
        model = model.to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader = build_loader(dataset, batch_size=1, train=False, num_workers=cfg.num_workers, seed=cfg.seed,
                              distributed=world > 1, pin_memory=device.type == "cuda")
        evaluator = COCOEvaluator(dataset.coco, label_to_cat_id=dataset.label_to_cat_id, output_dir=work_dir / "results")
        logger.info("evaluate %s from %s on %s val (%d images), %d process(es) on %s",
                    entry_obj.name, checkpoint, kind, len(dataset), world, device)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        timing = run_inference(model, loader, evaluator, device=device, amp_dtype=amp)
        metrics = evaluator.evaluate()
        if rank != 0:
            return {}
        fps = timing.fps
        eval_info = {"checkpoint": str(checkpoint), "checkpoint_iteration": checkpoint_iteration,
                     "images": len(dataset), "world_size": world,
                     "inf_images_timed": timing.images_timed, **run_info(device, world)}
        provenance = {k: eval_info[k] for k in ("hardware", "versions", "git_commit")}
        current = _read_metrics(work_dir)
        update = {
            "entry": entry_obj.name,
            "profile": profile,
            "data": kind,
            "bbox": metrics["bbox"],
            "segm": metrics["segm"],
            "inf_fps": round(fps, 3) if fps is not None else None,
            "eval": eval_info,
            **{k: v for k, v in provenance.items() if k not in current},
        }
        merged = update_metrics_json(work_dir, update)
        logger.info("%s: box AP %.1f, mask AP %.1f, %.2f fps (batch 1, whole pipeline, %s)", entry_obj.name,
                    metrics["bbox"]["AP"] or 0.0, metrics["segm"]["AP"] or 0.0, fps or 0.0, device)
        return merged


def _read_metrics(work_dir: Path) -> dict[str, Any]:
    import json

    path = work_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
