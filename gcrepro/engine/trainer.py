"""The training loop: loss -> backward -> clip -> step, with hooks for logging and checkpoints.

One iteration (SPEC §4)::

    losses = model(images, targets)                 # dict of loss terms (autocast when AMP)
    total = sum(losses.values())
    NaN guard: every term finite on every rank, else stop (before any update)
    total.backward()                                # DDP averages gradients over ranks
    clip_grad_norm_(params, max_norm=35, norm_type=2)
    optimizer.step(); schedule.step()

Hooks (:class:`Hook`) see the trainer before training, after each step (with a
:class:`StepRecord`), after each epoch and after training: :class:`MetricsLogger`
(``metrics.jsonl``), :class:`ProgressHook` (bar / lines / progress.json, rank 0) and :class:`Checkpointer`.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcrepro import ctrl_c
from gcrepro.engine import checkpoint as ckpt
from gcrepro.engine import dist
from gcrepro.engine.epoch_data import EpochBatches
from gcrepro.engine.measure import IterTimer, peak_memory_bytes
from gcrepro.engine.recipe import WarmupStepSchedule, clip_grad_norm
from gcrepro.runspec import RunSpec

logger = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """A loss term (or the gradient norm) became NaN/inf; the message names iteration and term."""


@dataclass
class StepRecord:
    iteration: int  # 1-based: the number of optimiser steps done after this one
    epoch: int  # 0-based epoch of this step
    losses: dict[str, float]  # each loss term, mean over ranks
    loss: float  # their sum
    lr: float  # lr used by this step
    grad_norm: float | None
    data_time: float  # s waiting for the batch
    iter_time: float  # s for the whole iteration, data included
    memory_mb: float  # peak so far: CUDA max allocated, or CPU peak RSS


def _to_device(images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device):
    # images [3, H, W] each: the model batches them itself; channels_last is the model's weights' format
    # (convolutions then produce channels_last outputs from the first conv on).
    non_blocking = device.type == "cuda"
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


class Hook:
    def before_train(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer, record: StepRecord) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...
    def on_error(self, trainer: Trainer) -> None: ...


class Trainer:
    """Runs the loop from the current (epoch, iteration) to ``max_iter`` steps."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: WarmupStepSchedule,
        data: EpochBatches,
        spec: RunSpec,
        device: torch.device,
        max_iter: int,
        scaler: torch.amp.GradScaler | None = None,
        hooks: list[Hook] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.data = data
        self.spec = spec
        self.cfg = spec.train
        self.device = device
        self.max_iter = max_iter
        self.scaler = scaler
        self.hooks = list(hooks or [])
        self.iteration = 0  # optimiser steps done
        self.epoch = 0  # current epoch (0-based)
        self.iter_in_epoch = 0  # batches of the current epoch done
        self.timer = IterTimer(skip=self.cfg.timing_skip_iters)
        self.last_checkpoint: Path | None = None
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}
        self.amp_dtype = amp.get(self.cfg.amp)
        self.params = [p for p in model.parameters() if p.requires_grad]

    # --- state ---------------------------------------------------------------------------------
    @property
    def bare_model(self) -> nn.Module:
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    def state_dict(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.bare_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "iteration": self.iteration,
            "epoch": self.epoch,
            "iter_in_epoch": self.iter_in_epoch,
            "world_size": dist.get_world_size(),
            "rng": rng_states,  # one entry per rank
            "spec": self.spec.to_dict(),  # what this run is (gcrepro.runspec)
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bare_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.epoch = int(state["epoch"])
        self.iter_in_epoch = int(state["iter_in_epoch"])
        rng = state.get("rng") or []
        rank, world = dist.get_rank(), dist.get_world_size()
        if len(rng) == world:
            ckpt.restore_rng_state(rng[rank])
        elif rng:
            logger.warning(
                "resume: checkpoint has RNG states of %d ranks, this run has %d; RNG streams are not restored",
                len(rng), world,
            )

    # --- loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Train to ``max_iter``. Under :func:`gcrepro.ctrl_c.watch` (a notebook kernel's cell too): a Ctrl-C, or
        an error it caused, ends the run as "interrupted" with its last checkpoint whole."""
        with ctrl_c.watch():
            self.model.train()
            for hook in self.hooks:
                hook.before_train(self)
            try:
                self._loop()
            except BaseException:
                for hook in self.hooks:
                    hook.on_error(self)
                raise
            for hook in self.hooks:
                hook.after_train(self)

    def _loop(self) -> None:
        while self.iteration < self.max_iter:
            n_batches = len(self.data)
            tick = time.perf_counter()
            for images, targets in self.data.iterate(self.epoch, self.iter_in_epoch):
                data_time = time.perf_counter() - tick
                record = self.run_step(images, targets, data_time=data_time, start=tick)
                for hook in self.hooks:
                    hook.after_step(self, record)
                tick = time.perf_counter()
                if self.iteration >= self.max_iter:
                    break
            if self.iter_in_epoch >= n_batches:
                self.epoch += 1
                self.iter_in_epoch = 0
                for hook in self.hooks:
                    hook.after_epoch(self)
            if n_batches == 0:
                raise RuntimeError(f"epoch {self.epoch}: the training loader yields no batches")

    def run_step(self, images: list[torch.Tensor], targets: list[dict], *, data_time: float, start: float) -> StepRecord:
        images, targets = _to_device(images, targets, self.device)
        lr = self.schedule.lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss_dict = self.model(images, targets)
        total = sum(loss_dict.values())
        reduced = dist.reduce_mean({k: v.detach() for k, v in loss_dict.items()})
        step = self.iteration + 1
        for name in sorted(reduced):
            if not math.isfinite(reduced[name]):
                raise NonFiniteLossError(
                    f"iteration {step}: loss term {name} is {reduced[name]} (training stopped before this "
                    f"update; last good checkpoint: {self.last_checkpoint or 'none written yet'})"
                )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        grad_norm: float | None = None
        if self.cfg.grad_clip_norm > 0:
            # SPEC §4: grad_clip max_norm=35, norm_type=2 over all trainable parameters
            grad_norm = clip_grad_norm(self.params, max_norm=self.cfg.grad_clip_norm)  # torch's clip_grad_norm_
            if self.scaler is None and not math.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"iteration {step}: loss term grad_norm is {grad_norm} (training stopped before this "
                    f"update; last good checkpoint: {self.last_checkpoint or 'none written yet'})"
                )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()
        self.iteration = step
        self.iter_in_epoch += 1
        iter_time = time.perf_counter() - start
        self.timer.add(iter_time, iter_in_epoch=self.iter_in_epoch - 1)
        mem, _ = peak_memory_bytes(self.device)
        return StepRecord(
            iteration=step, epoch=self.epoch, losses=reduced, loss=sum(reduced.values()), lr=lr,
            grad_norm=grad_norm, data_time=data_time, iter_time=iter_time, memory_mb=mem / 2**20,
        )


class MetricsLogger(Hook):
    """Rank 0 appends one JSON line per ``interval`` steps to ``WORK_DIR/metrics.jsonl``.

    Loss terms, data_time and iter_time are means over the steps since the previous line; lr is
    the last step's; memory_mb the peak so far.
    """

    def __init__(self, path: Path, *, interval: int) -> None:
        self.path = path
        self.interval = interval
        self.pending: list[StepRecord] = []

    def before_train(self, trainer: Trainer) -> None:
        if dist.is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def after_step(self, trainer: Trainer, record: StepRecord) -> None:
        self.pending.append(record)
        if record.iteration % self.interval == 0 or record.iteration == trainer.max_iter:
            self.flush()

    def flush(self) -> None:
        if not self.pending or not dist.is_main_process():
            self.pending = []
            return
        n = len(self.pending)
        last = self.pending[-1]
        terms = {k: sum(r.losses[k] for r in self.pending) / n for k in last.losses}
        line = {
            "iteration": last.iteration,
            "epoch": last.epoch,
            **terms,
            "loss": sum(r.loss for r in self.pending) / n,
            "lr": last.lr,
            "grad_norm": last.grad_norm,
            "data_time": sum(r.data_time for r in self.pending) / n,
            "iter_time": sum(r.iter_time for r in self.pending) / n,
            "memory_mb": round(last.memory_mb, 1),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.pending = []

    def after_train(self, trainer: Trainer) -> None:
        self.flush()

    def on_error(self, trainer: Trainer) -> None:
        self.flush()


class ProgressHook(Hook):
    """Progress of the training on rank 0 (:class:`gcrepro.progress.Progress`, stage "train"): a bar, a line
    every ``every`` steps or nothing (``$GCREPRO_PROGRESS``), and ``WORK_DIR/progress.json``. A run stopped by
    Ctrl-C says "interrupted" there and in one log line naming its last checkpoint."""

    def __init__(self, *, entry: str, work_dir: Path | None, every: int, mode: str | None = None) -> None:
        self.entry, self.work_dir, self.every, self.mode = entry, work_dir, every, mode
        self.progress = None

    def before_train(self, trainer: Trainer) -> None:
        if dist.is_main_process():
            from gcrepro.progress import Progress

            self.progress = Progress(stage="train", total=trainer.max_iter, initial=trainer.iteration, entry=self.entry,
                                     run_dir=self.work_dir, mode=self.mode, every=self.every)

    def after_step(self, trainer: Trainer, record: StepRecord) -> None:
        if self.progress is not None:
            self.progress.update(record.iteration, loss=record.loss)

    def after_train(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.close("done")
            self.progress = None

    def on_error(self, trainer: Trainer) -> None:
        if self.progress is None:
            return
        interrupted = ctrl_c.caused(sys.exc_info()[1])
        self.progress.close("interrupted" if interrupted else "failed")
        self.progress = None
        if interrupted:
            logger.warning("interrupted at iteration %d of %d; last checkpoint: %s (resume continues from it)",
                           trainer.iteration, trainer.max_iter, trainer.last_checkpoint or "none written yet")


def _first_non_finite(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            return name
    return None


class Checkpointer(Hook):
    """Saves every ``interval`` steps (0: at each epoch end) and at the end of training.

    RNG states of every rank are gathered so a resume restores each rank's stream; rank 0 writes.
    """

    def __init__(self, work_dir: Path, *, interval: int, keep: int) -> None:
        self.work_dir = work_dir
        self.interval = interval
        self.keep = keep
        self.saved_at = -1

    def save(self, trainer: Trainer) -> None:
        if self.saved_at == trainer.iteration:
            return
        bad = _first_non_finite(trainer.bare_model)
        if bad is not None:  # never replace the last good checkpoint with a broken state
            raise NonFiniteLossError(
                f"iteration {trainer.iteration}: parameter {bad} is not finite after the update; checkpoint "
                f"not written (last good checkpoint: {trainer.last_checkpoint or 'none written yet'})"
            )
        rng = dist.all_gather_object(ckpt.capture_rng_state())
        if dist.is_main_process():
            trainer.last_checkpoint = ckpt.save_checkpoint(
                self.work_dir, trainer.state_dict(rng), iteration=trainer.iteration, keep=self.keep
            )
        self.saved_at = trainer.iteration

    def after_step(self, trainer: Trainer, record: StepRecord) -> None:
        if self.interval > 0 and trainer.iteration % self.interval == 0:
            self.save(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        if self.interval == 0:
            self.save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self.save(trainer)

