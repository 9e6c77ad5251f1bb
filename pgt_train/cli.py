"""pgt-train: wires config, data, model, optimizer, PGT loss, engine, writers and checkpoints together.

    pgt-train --config configs/resnet50_cosine_pgt.yaml [key.sub=value ...] [--resume auto|PATH]
    pgt-train export RUN_DIR --out model.safetensors
    torchrun --nproc_per_node=4 -m pgt_train --config ...
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pgt_train import checkpoint, config, data, diagnostics, dist, engine, models, optim, pgt, preempt, writers
from pgt_train.errors import UserError

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}
EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pgt-train", description="ImageNet training with the PowerGrad Transform.",
        epilog="Also: pgt-train export RUN_DIR --out model.safetensors. Exit codes: 0 done, 2 bad input, "
               f"3 non-finite loss, {preempt.EXIT_PREEMPTED} preempted (checkpointed; rerun with --resume auto).")
    p.add_argument("--config", help="recipe YAML (e.g. configs/resnet50_cosine_pgt.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. optim.lr=0.2")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from a checkpoint; auto: <run.dir>/last.pth if any")
    p.add_argument("--run-epochs", type=int, metavar="N", help="train at most N epochs in this invocation, then exit 0")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_resume(arg: str | None, run_dir: Path) -> Path | None:
    if arg is None:
        return None
    if arg == "auto":
        last = run_dir / "last.pth"
        return last if last.is_file() else None
    return Path(arg)


def train(args: argparse.Namespace) -> int:
    if args.config is None:
        raise UserError("--config is required (e.g. --config configs/demo.yaml)")
    cfg = config.load(args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(cfg), end="")
        return 0
    if args.run_epochs is not None and args.run_epochs <= 0:
        raise UserError(f"--run-epochs must be > 0, got {args.run_epochs}")
    run_dir = Path(cfg.run.dir)
    resume_path = resolve_resume(args.resume, run_dir)
    resume_state = checkpoint.load(resume_path) if resume_path else None  # fail before anything is written

    info = dist.init(cfg.run.device)
    device = info.device
    on_gpu = device.type == "cuda"
    amp_dtype = AMP_DTYPES[cfg.amp.dtype] if on_gpu else None  # fp32 on the CPU
    channels_last = on_gpu if cfg.model.channels_last is None else cfg.model.channels_last
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    log = print if info.is_main else (lambda *a, **k: None)
    if cfg.amp.dtype != "none" and not on_gpu:
        log(f"note: amp.dtype={cfg.amp.dtype} needs CUDA; training in fp32 on the CPU")

    # The same seed on every rank for the weights (DDP also broadcasts rank 0's), a per-rank seed after.
    seed_everything(cfg.seed)
    model = models.build_model(cfg.model.name, num_classes=cfg.model.num_classes, norm=cfg.model.norm)
    seed_everything(cfg.seed + 1000 * info.rank)
    data.prepare_demo(cfg.data, info)
    train_loader, val_loader = data.build_loaders(cfg.data, num_classes=cfg.model.num_classes, seed=cfg.seed,
                                                  dist=info, channels_last=channels_last)
    model, plain_model = models.prepare(model, device=device, channels_last=channels_last, sync_bn=cfg.model.sync_bn,
                                        world_size=info.world_size, compile=cfg.run.compile)
    steps_per_epoch = len(train_loader) // cfg.data.accum_steps
    if steps_per_epoch == 0:
        raise UserError(f"data.accum_steps={cfg.data.accum_steps} exceeds the {len(train_loader)} batches per epoch")
    optimizer = optim.build_optimizer(plain_model, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                      nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay,
                                      decay_norm_and_bias=cfg.optim.decay_norm_and_bias)
    s = cfg.sched
    scheduler = optim.build_scheduler(optimizer, name=s.name, epochs=s.epochs, warmup_epochs=s.warmup_epochs,
                                      warmup_lr=s.warmup_lr, milestones=s.milestones, gamma=s.gamma,
                                      min_lr=s.min_lr, steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = pgt.build_pgt_loss(cfg.pgt.alpha, impl=cfg.pgt.impl, label_smoothing=cfg.loss.label_smoothing)
    opts = engine.StepOptions(accum_steps=cfg.data.accum_steps, amp_dtype=amp_dtype, clip_mode=cfg.clip.mode,
                              clip_value=cfg.clip.value, log_interval=cfg.run.log_interval,
                              max_nonfinite_steps=cfg.run.max_nonfinite_steps)
    clip_params = engine.clip_parameters(plain_model, cfg.clip.mode)

    start = {"epoch": 0, "step": 0, "batches_done": 0, "best_top1": -1.0}
    if resume_state is not None:
        start = checkpoint.restore(resume_state, model=plain_model, optimizer=optimizer, scheduler=scheduler,
                                   scaler=scaler, rank=info.rank, source=str(resume_path),
                                   config=config.to_dict(cfg))
        log(f"resumed from {resume_path}: epoch {start['epoch'] + 1}, step {start['step']}")
    else:
        scheduler.step_update(0)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml(cfg))
    writer = writers.RunWriter(run_dir, enabled=info.is_main, completed_epochs=start["epoch"])
    log(f"pgt-train: {cfg.model.name} ({sum(p.numel() for p in plain_model.parameters()) / 1e6:.1f}M params) on "
        f"{info.world_size} x {device.type}, global batch {cfg.data.batch_size}, {steps_per_epoch} steps/epoch, "
        f"PGT {'off' if cfg.pgt.alpha is None else f'alpha={cfg.pgt.alpha} ({cfg.pgt.impl})'}, run dir {run_dir}")

    def save(names: list[str], epoch: int, step: int, batches_done: int, best_top1: float) -> None:
        """Every rank contributes its RNG state; rank 0 writes. epoch: 0-based epoch in progress."""
        rngs = checkpoint.gather_rng_states(info.world_size)
        if not info.is_main:
            return
        if not torch.stack([torch.isfinite(p).all() for p in plain_model.parameters()]).all():  # one host sync
            log(f"warning: weights are not finite at step {step}; {names} not overwritten")
            return
        state = checkpoint.capture(model=plain_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                   epoch=epoch, step=step, batches_done=batches_done, best_top1=best_top1,
                                   config=config.to_dict(cfg), rng=rngs)
        for name in names:
            checkpoint.save(run_dir / name, state)

    stop = preempt.StopRequest()
    diag = None
    if cfg.diag.interval and info.is_main:
        diag = diagnostics.Diagnostics(plain_model, interval=cfg.diag.interval, zero_threshold=cfg.diag.zero_threshold,
                                       writer=writer, run_dir=run_dir, log=log, start_step=start["step"])
    best_top1, step, last, exit_code = start["best_top1"], start["step"], None, 0
    end_epoch = s.epochs if args.run_epochs is None else min(s.epochs, start["epoch"] + args.run_epochs)
    for epoch in range(start["epoch"], end_epoch):
        skip = start["batches_done"] if epoch == start["epoch"] else 0
        train_loader.set_epoch(epoch, skip_batches=skip)
        steps_left = steps_per_epoch - skip // cfg.data.accum_steps

        def on_step(global_step: int, epoch=epoch) -> bool:
            if diag is not None:
                diag.after_step(global_step)
            step_in_epoch = global_step - epoch * steps_per_epoch
            every = cfg.run.checkpoint_every
            if step_in_epoch == steps_per_epoch:  # the epoch's end saves (and stops) after evaluation
                return False
            preempted = stop.agreed(global_step, info, device, sync_every=cfg.run.log_interval)
            if preempted or every and global_step % every == 0:
                save(["last.pth"], epoch, global_step, step_in_epoch * cfg.data.accum_steps, best_top1)
            return preempted

        t0 = time.perf_counter()
        metrics = engine.train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, scaler, device=device,
                                         epoch=epoch + 1, start_step=step, steps=steps_left, opts=opts,
                                         clip_params=clip_params, progress=cfg.run.progress and info.is_main,
                                         on_step=on_step)
        step = metrics["step"]
        if metrics["stopped"]:
            exit_code = preempt.EXIT_PREEMPTED
            break
        metrics.update(engine.evaluate(plain_model, val_loader, device=device, amp_dtype=amp_dtype))
        corrupt = sum(getattr(loader, "take_corrupt_count", lambda: 0)() for loader in (train_loader, val_loader))
        metrics["corrupt_images"] = int(dist.all_reduce_sum(torch.tensor([corrupt], device=device)).item())
        metrics.update(epoch=epoch + 1, epoch_time_s=time.perf_counter() - t0, **(diag.epoch_end() if diag else {}))
        writer.epoch(metrics)
        log(writers.epoch_line(metrics, s.epochs))
        is_best = metrics["val_top1"] > best_top1
        best_top1 = max(best_top1, metrics["val_top1"])
        save(["last.pth", "best.pth"] if is_best else ["last.pth"], epoch + 1, step, 0, best_top1)
        last = metrics
        if epoch + 1 < end_epoch and stop.agreed(None, info, device):
            exit_code = preempt.EXIT_PREEMPTED
            break
    writer.close()
    if exit_code == preempt.EXIT_PREEMPTED:
        log(f"{stop.name}: saved {run_dir / 'last.pth'} at step {step}; continue with --resume auto")
    elif last is not None:
        log(results_table(last, best_top1, run_dir))
    dist.shutdown()
    return exit_code


def results_table(m: dict, best_top1: float, run_dir: Path) -> str:
    rows = [("epochs trained", f"{m['epoch']}"), ("train top-1 (augmented)", f"{m['train_top1']:.2f} %"),
            ("val top-1", f"{m['val_top1']:.2f} %"), ("val top-5", f"{m['val_top5']:.2f} %"),
            ("best val top-1", f"{best_top1:.2f} %"), ("val images", f"{m['val_images']}"),
            ("val loss", f"{m['val_loss']:.4f}"), ("mean logit norm", f"{m['logit_norm']:.3f}"),
            ("run folder", f"{run_dir}  (summary.csv, tb/, last.pth, best.pth, config.yaml)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "results", "-------"] + [f"{k:<{width}}  {v}" for k, v in rows])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["export"]:
            from pgt_train.export import main as export_main
            return export_main(argv[1:])
        return train(parse_args(argv))
    except UserError as e:
        print(f"pgt-train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except engine.NonFiniteLoss as e:
        print(f"pgt-train: stopped: {e}; the last good checkpoint is kept", file=sys.stderr)
        return EXIT_NONFINITE


if __name__ == "__main__":
    sys.exit(main())
