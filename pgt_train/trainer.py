"""One run of pgt-train from built parts to exit code: epochs, evaluation, logs, checkpoints, stops.

    parts = build_parts(cfg, info, ...)           model, loaders, optimizer, scheduler, scaler, loss
    Trainer(cfg, parts, ...).fit(end_epoch) -> exit code (0 done, 75 preempted; NonFiniteLoss raised)

cli.py parses, checks the run folder and maps errors to exit codes; engine.py owns the step itself.
Counters (0-based epoch in progress, global optimizer step, micro-batches of the epoch already trained,
best val top-1, the epoch's partial sums) travel in every checkpoint, so a resume continues the same
epoch sample-exactly and its summary row still covers the whole epoch.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from pgt_train import checkpoint, config, data, diagnostics, dist, engine, models, optim, pgt, preempt, writers
from pgt_train.config import Config
from pgt_train.dist import DistInfo

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}


@dataclass
class Parts:
    """Everything a run trains with; built once by build_parts."""
    model: torch.nn.Module  # what trains: possibly DDP- and compile-wrapped
    plain_model: torch.nn.Module  # the bare model: eval, checkpoints, diagnostics
    train_loader: data.Loader
    val_loader: data.Loader
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm Scheduler, stepped per iteration
    scaler: torch.amp.GradScaler
    loss_fn: Callable
    opts: engine.StepOptions
    clip_params: list
    steps_per_epoch: int


def build_parts(cfg: Config, info: DistInfo, *, init_weights: Optional[dict] = None, init_source: str = "") -> Parts:
    """Model (seeded alike on every rank), loaders, optimizer, per-iteration schedule, scaler and loss."""
    device, on_gpu = info.device, info.device.type == "cuda"
    amp_dtype = AMP_DTYPES[cfg.amp.dtype] if on_gpu else None  # fp32 on the CPU
    channels_last = on_gpu if cfg.model.channels_last is None else cfg.model.channels_last
    data.prepare_demo(cfg.data, info)  # first: a data.root the demo may not write into stops the run before any build
    seed_all(cfg.seed)  # the same weights on every rank (DDP broadcasts rank 0's anyway)
    model = models.build_model(cfg.model.name, num_classes=cfg.model.num_classes, norm=cfg.model.norm,
                               zero_init_last=cfg.model.zero_init_last)
    if init_weights is not None:
        checkpoint.load_model_weights(model, init_weights, source=init_source, model_name=cfg.model.name)
    seed_all(cfg.seed + 1000 * info.rank)  # per-rank streams from here on
    # fp16 autocast: the device loaders (nvjpeg, dali) normalise straight into fp16, which the first conv takes
    images_dtype = torch.float16 if amp_dtype == torch.float16 else torch.float32
    train_loader, val_loader = data.build_loaders(cfg.data, num_classes=cfg.model.num_classes, seed=cfg.seed,
                                                  dist=info, channels_last=channels_last, model_name=cfg.model.name,
                                                  dtype=images_dtype)
    model, plain_model = models.prepare(model, device=device, channels_last=channels_last, sync_bn=cfg.model.sync_bn,
                                        world_size=info.world_size, compile=cfg.run.compile)
    steps_per_epoch = len(train_loader) // cfg.data.accum_steps
    optimizer = optim.build_optimizer(plain_model, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                      nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay,
                                      decay_norm_and_bias=cfg.optim.decay_norm_and_bias)
    # every sched.* key is a build_scheduler argument of the same name: a new key cannot be left unwired
    scheduler = optim.build_scheduler(optimizer, **dataclasses.asdict(cfg.sched), steps_per_epoch=steps_per_epoch)
    opts = engine.StepOptions(accum_steps=cfg.data.accum_steps, amp_dtype=amp_dtype, clip_mode=cfg.clip.mode,
                              clip_value=cfg.clip.value, log_interval=cfg.run.log_interval,
                              max_nonfinite_steps=cfg.run.max_nonfinite_steps)
    return Parts(model=model, plain_model=plain_model, train_loader=train_loader, val_loader=val_loader,
                 optimizer=optimizer, scheduler=scheduler,
                 scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                 loss_fn=pgt.build_pgt_loss(**dataclasses.asdict(cfg.pgt), label_smoothing=cfg.loss.label_smoothing),
                 opts=opts, clip_params=engine.clip_parameters(plain_model, cfg.clip.mode),
                 steps_per_epoch=steps_per_epoch)


def seed_all(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def state_is_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Parameters, floating-point buffers (BN running stats) and optimizer state (momentum): one host sync."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    tensors += [t for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class Trainer:
    """Runs epochs on built Parts; rank 0 writes, every rank takes part in the collectives."""

    def __init__(self, cfg: Config, parts: Parts, *, info: DistInfo, run_dir: Path, log: Callable,
                 start: dict, resume_totals: Optional[dict] = None, resume_diag: Optional[dict] = None,
                 stop: Optional[preempt.StopRequest] = None):
        self.cfg, self.p, self.info, self.run_dir, self.log = cfg, parts, info, run_dir, log
        self.epoch, self.step = start["epoch"], start["step"]
        self.batches_done, self.best_top1 = start["batches_done"], start["best_top1"]
        self.best_epoch = start.get("best_epoch", 0)  # from 1; 0: none yet
        self.totals = engine.EpochTotals(info.device, resume_totals if info.is_main else None)
        self.nonfinite_run = torch.zeros((), device=info.device, dtype=torch.int64)  # across epochs
        self.writer = writers.RunWriter(run_dir, enabled=info.is_main, completed_epochs=self.epoch,
                                        completed_steps=self.step)
        self.stop = stop or preempt.StopRequest()  # fit() restores the previous handlers when it ends
        self.diag = None
        if cfg.diag.interval and info.is_main:
            self.diag = diagnostics.Diagnostics(parts.plain_model, interval=cfg.diag.interval,
                                                zero_threshold=cfg.diag.zero_threshold, writer=self.writer,
                                                run_dir=run_dir, log=log, start_step=self.step,
                                                saved=resume_diag)
        self.last_metrics: Optional[dict] = None

    def fit(self, end_epoch: int) -> int:
        """Trains epochs [self.epoch, end_epoch); returns 0, or EXIT_PREEMPTED after saving last.pth."""
        try:
            while self.epoch < end_epoch:
                if not self._run_epoch():
                    return preempt.EXIT_PREEMPTED
                if self.epoch < end_epoch and self.stop.agreed(None, self.info, self.info.device):
                    return preempt.EXIT_PREEMPTED
            return 0
        finally:
            self.writer.close()
            self.stop.restore()

    def _run_epoch(self) -> bool:
        """One epoch (or its rest after a resume): train, evaluate, log, save. False if preempted."""
        cfg, p, epoch = self.cfg, self.p, self.epoch
        p.train_loader.set_epoch(epoch, skip_batches=self.batches_done)
        metrics = engine.train_one_epoch(
            p.model, p.train_loader, p.loss_fn, p.optimizer, p.scheduler, p.scaler, device=self.info.device,
            epoch=epoch + 1, start_step=self.step, steps=p.steps_per_epoch - self.batches_done // cfg.data.accum_steps,
            opts=p.opts, clip_params=p.clip_params, totals=self.totals, nonfinite_run=self.nonfinite_run,
            progress=cfg.run.progress and self.info.is_main, on_step=self._after_step)
        self.step = metrics["step"]
        if metrics["stopped"]:
            return False
        engine.check_nonfinite(self.nonfinite_run, p.opts.max_nonfinite_steps, f"end of epoch {epoch + 1}")
        t_eval = time.perf_counter()
        metrics.update(engine.evaluate(p.plain_model, p.val_loader, device=self.info.device,
                                       amp_dtype=p.opts.amp_dtype, alpha=cfg.pgt.alpha))
        corrupt = sum(loader.take_corrupt_count() for loader in (p.train_loader, p.val_loader))
        metrics["corrupt_images"] = int(dist.all_reduce_sum(torch.tensor([corrupt], device=self.info.device)).item())
        # training time of the whole epoch (before a resume too) + this evaluation
        metrics.update(epoch=epoch + 1, epoch_time_s=self.totals.elapsed_s + time.perf_counter() - t_eval,
                       **(self.diag.epoch_end() if self.diag else {}))
        self.writer.epoch(metrics)
        self.log(writers.epoch_line(metrics, cfg.sched.epochs))
        is_best = metrics["val_top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = metrics["val_top1"], epoch + 1
        self.epoch, self.batches_done, self.last_metrics = epoch + 1, 0, metrics
        self.totals = engine.EpochTotals(self.info.device)
        # last.pth first: a kill between the two writes leaves last.pth at the best epoch, from which the next
        # resume rewrites best.pth (checkpoint.reconcile_best)
        self.save(["last.pth", "best.pth"] if is_best else ["last.pth"])
        return True

    def _after_step(self, global_step: int) -> bool:
        """Diagnostics, the DDP stop agreement and periodic mid-epoch checkpoints; True stops the epoch."""
        if self.diag is not None:
            self.diag.after_step(global_step)
        step_in_epoch = global_step - self.epoch * self.p.steps_per_epoch
        if step_in_epoch == self.p.steps_per_epoch:  # the epoch's end saves (and stops) after evaluation
            return False
        preempted = self.stop.agreed(global_step, self.info, self.info.device, sync_every=self.cfg.run.log_interval)
        every = self.cfg.run.checkpoint_every
        if preempted or every and global_step % every == 0:
            self.step, self.batches_done = global_step, step_in_epoch * self.cfg.data.accum_steps
            self.save(["last.pth"], mid_epoch=True)
        if preempted:
            self.log(f"{self.stop.name}: saved {self.run_dir / 'last.pth'} at step {global_step}; "
                     f"continue with --resume auto")
        return preempted

    def save(self, names: list[str], mid_epoch: bool = False) -> None:
        """Every rank contributes its RNG state (and partial sums); rank 0 writes. Never saves a non-finite
        state: the previous file stays the last good one and the run stops (NonFiniteLoss)."""
        if not state_is_finite(self.p.plain_model, self.p.optimizer):  # the same verdict on every rank (DDP)
            raise engine.NonFiniteLoss(f"the weights, BatchNorm statistics or optimizer state are not finite at "
                                       f"step {self.step}; {', '.join(names)} not overwritten")
        rngs = checkpoint.gather_rng_states(self.info.world_size)
        totals = self.totals.state_dict() if mid_epoch else None  # a collective
        if not self.info.is_main:
            return
        state = checkpoint.capture(model=self.p.plain_model, optimizer=self.p.optimizer, scheduler=self.p.scheduler,
                                   scaler=self.p.scaler, epoch=self.epoch, step=self.step,
                                   batches_done=self.batches_done, best_top1=self.best_top1,
                                   best_epoch=self.best_epoch, config=config.to_dict(self.cfg), rng=rngs)
        if totals is not None:
            state["epoch_totals"] = totals
        if self.diag is not None:  # so that a resumed epoch's diagnostics columns equal an uninterrupted one's
            state["diagnostics"] = self.diag.state_dict()
        for name in names:
            checkpoint.save(self.run_dir / name, state)
        if self.diag is not None:
            self.diag.write()
