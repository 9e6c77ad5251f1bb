"""One run of pgt-train from its built objects to an exit code: epochs, evaluation, logs, checkpoints, stops.

    setup = build_setup(cfg, world, ...)            model, loaders, optimizer, scheduler, scaler, loss
    Trainer(cfg, setup, counters=..., ...).fit(end_epoch) -> 0 done, 75 preempted (NonFiniteLoss raised)

fit() is the loop itself: per epoch, engine.train_step for each optimizer step, then between two steps the
periodic host sync, diagnostics, the DDP stop agreement and mid-epoch checkpoints; at the epoch's end
engine.evaluate, the summary row and the checkpoints. cli.py parses, checks and wires; engine.py owns the step.
The counters (counters.Counters) and the epoch's partial sums travel in every checkpoint, so a resume continues
the same epoch sample-exactly and its summary row still covers the whole epoch.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm import tqdm

from pgt_train import checkpoint, config, data, diagnostics, engine, models, optim, pgt, preempt, writers
from pgt_train.config import Config
from pgt_train.counters import Counters
from pgt_train.dist import DistInfo, all_reduce_sum

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}
MODEL_DTYPES = {"float32": torch.float32, "float64": torch.float64}  # model.dtype
DATA_WAIT_HINT_PCT = 10.0  # above this share of training time spent waiting for data, the first epoch says so


@dataclass
class TrainingSetup:
    """Everything a run trains with; built once by build_setup."""
    model: torch.nn.Module  # what trains: possibly DDP- and compile-wrapped
    plain_model: torch.nn.Module  # the bare model: eval, checkpoints, diagnostics
    train_loader: data.Loader
    val_loader: data.Loader
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm Scheduler, stepped per optimizer step
    scaler: torch.amp.GradScaler
    loss_fn: Callable
    step_settings: engine.StepSettings
    clip_params: list
    steps_per_epoch: int


def amp_dtype_of(cfg: Config, world: DistInfo) -> Optional[torch.dtype]:
    """The autocast dtype; None (fp32) on the CPU."""
    return AMP_DTYPES[cfg.amp.dtype] if world.device.type == "cuda" else None


def images_dtype_of(amp_dtype: Optional[torch.dtype], model_dtype: torch.dtype) -> torch.dtype:
    """fp16 autocast: the device loaders (nvjpeg, dali) normalise straight into fp16, which the first conv takes;
    a float64 model takes float64 images (model.dtype float64 rules out autocast)."""
    if model_dtype == torch.float64:
        return torch.float64
    return torch.float16 if amp_dtype == torch.float16 else torch.float32


def build_model(cfg: Config, *, init_weights: Optional[dict], init_source: str) -> torch.nn.Module:
    model = models.build_model(cfg.model.name, num_classes=cfg.model.num_classes, norm=cfg.model.norm,
                               zero_init_last=cfg.model.zero_init_last).to(MODEL_DTYPES[cfg.model.dtype])
    if init_weights is not None:
        checkpoint.load_model_weights(model, init_weights, source=init_source, model_name=cfg.model.name)
    return model


def build_setup(cfg: Config, world: DistInfo, *, init_weights: Optional[dict] = None,
                init_source: str = "") -> TrainingSetup:
    """Model (seeded alike on every rank), loaders, optimizer, per-step schedule, scaler and loss."""
    amp_dtype = amp_dtype_of(cfg, world)
    channels_last = world.device.type == "cuda" if cfg.model.channels_last is None else cfg.model.channels_last
    data.prepare_demo(cfg.data, world)  # first: a data.root the demo may not write into stops the run before any build
    seed_all(cfg.seed)  # the same weights on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(cfg, init_weights=init_weights, init_source=init_source)
    seed_all(cfg.seed + 1000 * world.rank)  # per-rank streams from here on
    train_loader, val_loader = data.build_loaders(cfg.data, num_classes=cfg.model.num_classes, seed=cfg.seed,
                                                  dist=world, channels_last=channels_last, model_name=cfg.model.name,
                                                  dtype=images_dtype_of(amp_dtype, MODEL_DTYPES[cfg.model.dtype]))
    model, plain_model = models.prepare(model, device=world.device, channels_last=channels_last,
                                        sync_bn=cfg.model.sync_bn, world_size=world.world_size,
                                        compile=cfg.run.compile)
    steps_per_epoch = len(train_loader) // cfg.data.accum_steps
    optimizer = optim.build_optimizer(plain_model, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                      nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay,
                                      decay_norm_and_bias=cfg.optim.decay_norm_and_bias)
    # every sched.* key is a build_scheduler argument of the same name: a new key cannot be left unwired
    scheduler = optim.build_scheduler(optimizer, **dataclasses.asdict(cfg.sched), steps_per_epoch=steps_per_epoch)
    settings = engine.StepSettings(accum_steps=cfg.data.accum_steps, amp_dtype=amp_dtype, clip_mode=cfg.clip.mode,
                                   clip_value=cfg.clip.value,
                                   gradient_scale=cfg.pgt.alpha if cfg.pgt.form == "temperature" else 1.0)
    return TrainingSetup(
        model=model, plain_model=plain_model, train_loader=train_loader, val_loader=val_loader,
        optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(world.device.type, enabled=amp_dtype == torch.float16),
        loss_fn=pgt.build_pgt_loss(alpha=cfg.pgt.alpha, impl=cfg.pgt.impl, authors_fp16=cfg.pgt.authors_fp16,
                                   form=cfg.pgt.form, label_smoothing=cfg.loss.label_smoothing),
        step_settings=settings, clip_params=engine.clip_parameters(plain_model, cfg.clip.mode),
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


def data_wait_hint(metrics: dict, workers: int) -> Optional[str]:
    """One line when the epoch spent more than DATA_WAIT_HINT_PCT of its training time waiting for data."""
    if metrics["data_wait_pct"] <= DATA_WAIT_HINT_PCT:
        return None
    rate = metrics["loader_img_per_s"]
    source = (f"{rate / workers:.0f} img/s per worker ({workers} workers per rank)" if workers
              else f"{rate:.0f} img/s from the training process itself (no workers)")
    return (f"note: training waited for data {metrics['data_wait_pct']:.0f} % of epoch {metrics['epoch']}: the loader "
            f"delivered {source}; faster: more workers (data.workers), or decoding on the GPU (data.loader=nvjpeg "
            f"or data.loader=dali)")


class Trainer:
    """Trains a TrainingSetup epoch by epoch; rank 0 writes, every rank takes part in the collectives."""

    def __init__(self, cfg: Config, setup: TrainingSetup, *, world: DistInfo, run_dir: Path, log: Callable,
                 counters: Counters, stop: preempt.StopRequest, resume_state: Optional[dict] = None,
                 run_lock=None):
        self.cfg, self.setup, self.world, self.run_dir, self.log = cfg, setup, world, run_dir, log
        self.counters, self.stop = counters, stop
        self.run_lock = run_lock  # runlock.RunLock held by rank 0 (None elsewhere)
        saved = resume_state or {}
        self.totals = engine.EpochTotals(world.device, saved.get("epoch_totals") if world.is_main else None,
                                         world_size=world.world_size)
        self.nonfinite_streak = torch.zeros((), device=world.device, dtype=torch.int64)  # kept across epochs
        self.writer = writers.RunWriter(run_dir, enabled=world.is_main, completed_epochs=counters.epochs_done,
                                        completed_steps=counters.steps_done)
        self.diag = None
        if cfg.diag.interval and world.is_main:
            self.diag = diagnostics.Diagnostics(setup.plain_model, interval=cfg.diag.interval,
                                                zero_threshold=cfg.diag.zero_threshold, writer=self.writer,
                                                run_dir=run_dir, log=log, start_step=counters.steps_done,
                                                saved=saved.get("diagnostics"))
        self.bar: Optional[tqdm] = None
        self.epoch_lr = optim.current_lr(setup.optimizer)  # the LR of the epoch's latest step
        self.epochs_trained = 0  # by this process
        self.last_metrics: Optional[dict] = None

    def fit(self, end_epoch: int) -> int:
        """Trains until `end_epoch` epochs are done; returns 0, or EXIT_PREEMPTED once last.pth is saved."""
        setup, counters = self.setup, self.counters
        try:
            while counters.epochs_done < end_epoch:
                batches = self._begin_epoch()
                for _ in range(counters.steps_left(setup.steps_per_epoch)):
                    self.epoch_lr = optim.current_lr(setup.optimizer)  # set for this step by the scheduler
                    engine.train_step(setup.model, batches, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
                                      scaler=setup.scaler, settings=setup.step_settings,
                                      clip_params=setup.clip_params, totals=self.totals,
                                      nonfinite_streak=self.nonfinite_streak)
                    counters.count_step()
                    setup.scheduler.step_update(counters.steps_done)
                    if self._after_step(counters.steps_done):
                        return preempt.EXIT_PREEMPTED
                self._finish_epoch()
                if counters.epochs_done < end_epoch and self.stop.requested_by_any_rank(self.world):
                    self._log_preempted(counters.steps_done)  # last.pth was saved as the epoch ended
                    return preempt.EXIT_PREEMPTED
            return 0
        finally:
            if self.bar is not None:
                self.bar.close()
            self.writer.close()

    def _begin_epoch(self) -> Iterator:
        """The epoch in progress (or its rest after a resume): its batches, timed for the data-wait column."""
        setup, counters = self.setup, self.counters
        setup.train_loader.set_epoch(counters.epochs_done,
                                     skip_batches=counters.skip_batches(setup.step_settings.accum_steps))
        setup.model.train()
        self.bar = tqdm(total=counters.steps_left(setup.steps_per_epoch), desc=f"epoch {counters.epochs_done + 1}",
                        disable=not (self.cfg.run.progress and self.world.is_main), dynamic_ncols=True, leave=False)
        self.totals.start_segment()
        return self.totals.timed(setup.train_loader)

    def _after_step(self, step: int) -> bool:
        """Between two optimizer steps: progress, the periodic host sync, diagnostics, the DDP stop agreement and
        mid-epoch checkpoints. True: preempted, last.pth saved."""
        self.bar.update(1)
        if step % self.cfg.run.log_interval == 0:
            self._sync_with_host(step)
        if self.diag is not None:
            self.diag.after_step(step)
        if self.counters.epoch_steps_done == self.setup.steps_per_epoch:  # the epoch's end saves after evaluation
            return False
        preempted = self.stop.agreed_at_step(step, self.world, every=self.cfg.run.log_interval)
        every = self.cfg.run.checkpoint_every
        if preempted or every and step % every == 0:
            self.save(["last.pth"], mid_epoch=True)
        if preempted:
            self._log_preempted(step)
        return preempted

    def _log_preempted(self, step: int) -> None:
        self.log(f"{self.stop.name}: saved {self.run_dir / 'last.pth'} at step {step}; continue with --resume auto")

    def _sync_with_host(self, step: int) -> None:
        """Every run.log_interval steps, the loop's only host sync: the sums and the non-finite streak in one copy,
        for the progress bar and the non-finite stop."""
        self.check_lock()
        loss_sum, correct, count, finite, streak = torch.cat([self.totals.sums,
                                                              self.nonfinite_streak.view(1)]).tolist()
        self.bar.set_postfix(loss=f"{loss_sum / max(finite, 1):.3f}", top1=f"{100 * correct / max(count, 1):.1f}",
                             lr=f"{optim.current_lr(self.setup.optimizer):.4g}")
        engine.check_nonfinite(int(streak), self.cfg.run.max_nonfinite_steps,
                               f"epoch {self.counters.epochs_done + 1}, step {step}")

    def _finish_epoch(self) -> None:
        """Evaluation, the epoch's summary row and line, then last.pth (and best.pth)."""
        setup, device = self.setup, self.world.device
        self.bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.totals.end_segment()
        metrics = {**self.totals.metrics(), "lr": self.epoch_lr}  # lr: what the epoch's last step used
        engine.check_nonfinite(self.nonfinite_streak, self.cfg.run.max_nonfinite_steps,
                               f"end of epoch {self.counters.epochs_done + 1}")
        t_eval = time.perf_counter()
        metrics.update(engine.evaluate(setup.plain_model, setup.val_loader, device=device,
                                       amp_dtype=setup.step_settings.amp_dtype, alpha=self.cfg.pgt.alpha))
        corrupt = sum(loader.take_corrupt_count() for loader in (setup.train_loader, setup.val_loader))
        metrics["corrupt_images"] = int(all_reduce_sum(torch.tensor([corrupt], device=device)).item())
        is_best = self.counters.count_epoch(metrics["val_top1"])
        # training time of the whole epoch (before a resume too) + this evaluation
        metrics.update(epoch=self.counters.epochs_done, epoch_time_s=self.totals.elapsed_s + time.perf_counter()
                       - t_eval, **(self.diag.epoch_end() if self.diag else {}))
        self.check_lock()
        self.writer.epoch(metrics)
        self.log(writers.epoch_line(metrics, self.cfg.sched.epochs))
        self.epochs_trained += 1
        hint = data_wait_hint(metrics, setup.train_loader.workers) if self.epochs_trained == 1 else None
        if hint:
            self.log(hint)
        self.last_metrics, self.totals = metrics, engine.EpochTotals(device, world_size=self.world.world_size)
        # last.pth first: a kill between the two writes leaves last.pth at the best epoch, from which the next
        # resume rewrites best.pth (checkpoint.reconcile_best)
        self.save(["last.pth", "best.pth"] if is_best else ["last.pth"])

    def check_lock(self) -> None:
        """Before rank 0 writes: the run folder's lock file must still be the one it holds (runlock.RunLock.verify:
        a removed or replaced one is locked again, or the run stops when another writer took it)."""
        note = self.run_lock.verify() if self.run_lock is not None else None
        if note:
            self.log(note)

    def save(self, names: list[str], mid_epoch: bool = False) -> None:
        """Every rank contributes its RNG state (and partial sums); rank 0 writes. Never saves a non-finite
        state: the previous file stays the last good one and the run stops (NonFiniteLoss)."""
        setup = self.setup
        if not state_is_finite(setup.plain_model, setup.optimizer):  # the same verdict on every rank (DDP)
            raise engine.NonFiniteLoss(f"the weights, BatchNorm statistics or optimizer state are not finite at "
                                       f"step {self.counters.steps_done}; {', '.join(names)} not overwritten")
        rngs = checkpoint.gather_rng_states(self.world.world_size)
        totals = self.totals.state_dict() if mid_epoch else None  # a collective
        if not self.world.is_main:
            return
        state = checkpoint.capture(model=setup.plain_model, optimizer=setup.optimizer, scheduler=setup.scheduler,
                                   scaler=setup.scaler, counters=self.counters, config=config.to_dict(self.cfg),
                                   rng=rngs)
        if totals is not None:
            state["epoch_totals"] = totals
        if self.diag is not None:  # so that a resumed epoch's diagnostics columns equal an uninterrupted one's
            state["diagnostics"] = self.diag.state_dict()
        self.check_lock()
        for name in names:
            checkpoint.save(self.run_dir / name, state)
        if self.diag is not None:
            self.diag.write()
