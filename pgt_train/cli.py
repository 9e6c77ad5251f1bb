"""pgt-train: parses arguments, checks every input before anything is built or written, wires a Trainer.

    pgt-train --config configs/resnet50_cosine_pgt.yaml [key.sub=value ...] [--resume auto|PATH]
    pgt-train --config ... --init-from RUN/last.pth run.dir=runs/finetune     (weights only, new schedule)
    pgt-train export RUN_DIR --out model.safetensors
    torchrun --nproc_per_node=4 -m pgt_train --config ...

The run itself (epochs, evaluation, logs, checkpoints) is trainer.py's; the step is engine.py's.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from pgt_train import checkpoint, config, data, dist, engine, preempt, runlock, trainer, writers
from pgt_train.counters import Counters
from pgt_train.errors import UserError

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 1, 130
# Files that make a folder a run's: a new run never writes into a folder holding any of them.
RUN_FILES = ("last.pth", "best.pth", "summary.csv", "config.yaml", "filter_norms.npz", "tb")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pgt-train", description="ImageNet training with the PowerGrad Transform.",
        epilog="Also: pgt-train export RUN_DIR --out model.safetensors. A new run refuses a run.dir that already "
               "holds a run. Exit codes: 0 done, 1 internal error, 2 bad input, 3 non-finite loss or weights, "
               f"{preempt.EXIT_PREEMPTED} preempted (checkpointed; rerun with --resume auto), 130 interrupted.")
    p.add_argument("--config", help="recipe YAML (e.g. configs/resnet50_cosine_pgt.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, e.g. optim.lr=0.2")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--resume", metavar="auto|PATH", help="continue a run; auto: <run.dir>/last.pth if it exists")
    p.add_argument("--init-from", metavar="CKPT", help="start a NEW run from these weights (a .pth checkpoint or an "
                   "exported .safetensors); same as model.init_from=CKPT: optimizer, schedule and counters start fresh")
    p.add_argument("--run-epochs", type=int, metavar="N", help="train at most N epochs in this invocation, then exit 0")
    p.add_argument("--reading", metavar="paper|code", help="overlay configs/reading/<reading>.yaml on the recipe "
                   "(before the overrides): the paper's words, or the authors' code (docs/fidelity.md, 'Two readings')")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.init_from:
        args.overrides.append(f"model.init_from={args.init_from}")
    return args


def resolve_resume(arg: str | None, run_dir: Path) -> Path | None:
    if arg is None:
        return None
    if arg == "auto":
        last = run_dir / "last.pth"
        return last if last.is_file() else None
    return Path(arg)


def check_run_dir(run_dir: Path, resume_path: Path | None, *, resume_auto: bool, cfg: config.Config) -> None:
    """run.dir must be writable, and a new run may not write into a folder that holds a run."""
    try:
        str(run_dir).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"run.dir {str(run_dir)!r} is not valid UTF-8; choose a plain name") from None
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.dir {run_dir} is a file, not a folder; choose another run.dir")
    ancestor = run_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"run.dir {run_dir} lies under {ancestor}, which is a file; choose another run.dir")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"run.dir {run_dir}: {ancestor} is not writable; choose another run.dir")
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    continuing = resume_path is not None and resume_path.resolve() == (run_dir / "last.pth").resolve()
    if not held or continuing:
        return
    if resume_auto and restartable(run_dir, cfg):
        return  # the same run died before its first checkpoint: it starts again in place
    runlock.refuse_if_held(run_dir)  # a run in progress there: say who holds it, not only what it holds
    if resume_auto:
        raise UserError(f"run.dir {run_dir} holds a run ({', '.join(held)}) but no last.pth to continue from, and it "
                        f"is not the start of this same run; give this run a new run.dir (nothing was changed)")
    raise UserError(f"run.dir {run_dir} already holds a run ({', '.join(held)}); continue it with --resume auto, "
                    f"or give this run a new run.dir (nothing was changed)")


def restartable(run_dir: Path, cfg: config.Config) -> bool:
    """A run that never saved anything but its config, summary header and TensorBoard start, with the same
    defining settings as `cfg`: restarting it loses nothing (TensorBoard purges the dead attempt's events)."""
    if any((run_dir / name).exists() for name in ("last.pth", "best.pth", "filter_norms.npz")):
        return False
    if writers.read_summary(run_dir / "summary.csv") or not (run_dir / "config.yaml").is_file():
        return False
    try:  # the run's own file, but read as a recipe is: no alias bomb, FIFO or /dev/zero hangs --resume auto
        saved = config.read_yaml(run_dir / "config.yaml")
        return not config.diff_defining(saved, cfg)
    except (config.ConfigError, ValueError, TypeError, KeyError):
        return False


def check_apart(run_dir: Path, data_root: Path) -> None:
    """run.dir and data.root never nest, compared as real paths (symlinks followed, also those of data.root's
    split and class folders): a run's files inside the data would be scanned as images (report figures are
    PNGs), and data inside a run folder would sit among files the run overwrites."""
    run_real = run_dir.expanduser().resolve()
    for folder in data_folders(data_root.expanduser()):
        if run_real == folder or folder in run_real.parents:
            raise UserError(f"run.dir {run_dir} lies inside data.root {data_root} (in {folder}), where its files "
                            f"would be read as images; choose a run.dir outside data.root")
        if run_real in folder.parents:
            raise UserError(f"data.root {data_root} (its folder {folder}) lies inside run.dir {run_dir}; choose a "
                            f"run.dir that does not hold the data")


def data_folders(root: Path) -> list[Path]:
    """The real paths of data.root and of the split and class folders under it that are symlinks."""
    folders = [root.resolve()]
    try:
        for split in root.iterdir():
            if split.is_dir():
                folders += [entry.resolve() for entry in (split, *split.iterdir()) if entry.is_symlink()]
    except OSError:  # not a folder, unreadable: data.check_folders says which
        pass
    return folders


def check_setup(cfg: config.Config) -> None:
    """What the config alone cannot tell: the machine and the per-process batch."""
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device: cuda was asked for but this machine has no usable CUDA GPU; use auto or cpu")
    if cfg.model.sync_bn and cfg.model.norm == "bn" and (cfg.run.device == "cpu" or not torch.cuda.is_available()):
        raise UserError("model.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm has no CPU implementation); set "
                        "model.sync_bn=false to train on the CPU")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    micro = data.per_rank_batch(cfg.data.batch_size, world_size, cfg.data.accum_steps)
    if micro == 1 and cfg.model.norm == "bn":
        raise UserError(f"data.batch_size={cfg.data.batch_size} over {world_size} process(es) x "
                        f"{cfg.data.accum_steps} accumulation steps leaves 1 image per micro-batch, too few for "
                        f"BatchNorm statistics; raise data.batch_size or lower data.accum_steps")


def load_init_weights(path: str) -> dict:
    """Model weights from a pgt-train checkpoint (.pth) or an exported .safetensors file."""
    source = Path(path)
    if source.suffix == ".safetensors":
        if not source.is_file():
            raise UserError(f"model.init_from: {source} not found")
        from safetensors.torch import load_file
        try:
            return load_file(str(source))
        except Exception as e:  # SafetensorError for a truncated or foreign file, OSError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"model.init_from: {source} is not a readable safetensors file (truncated or "
                            f"another format): {first}") from None
    return checkpoint.load(source, require=("model",))["model"]


def preflight(args: argparse.Namespace, cfg: config.Config) -> tuple[Path | None, dict | None]:
    """Every check that needs no data or model; returns (resume path, resume state)."""
    if args.run_epochs is not None and args.run_epochs <= 0:
        raise UserError(f"--run-epochs must be > 0, got {args.run_epochs}")
    run_dir = Path(cfg.run.dir)
    resume_path = resolve_resume(args.resume, run_dir)
    check_run_dir(run_dir, resume_path, resume_auto=args.resume == "auto", cfg=cfg)
    if cfg.data.loader != "synthetic":  # the synthetic loader reads nothing from data.root
        check_apart(run_dir, Path(cfg.data.root))
    check_setup(cfg)
    data.check_folders(cfg.data, num_classes=cfg.model.num_classes)  # before a model of num_classes is built
    data.check_decoder(cfg.data)
    shm_warning = data.check_shared_memory(cfg.data, world_size=int(os.environ.get("WORLD_SIZE", "1")),
                                           local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if shm_warning and is_rank_zero():
        print(shm_warning, file=sys.stderr)
    if resume_path is None:
        return None, None
    state = checkpoint.load(resume_path)
    checkpoint.check_resume_state(state, source=str(resume_path), epochs=cfg.sched.epochs)
    checkpoint.check_compatible(state.get("config", {}), config.to_dict(cfg), source=str(resume_path))
    return resume_path, state


def train(args: argparse.Namespace) -> int:
    """pgt-train's run: config, checks, then under the run folder's lock: build, restore, fit."""
    if args.config is None:
        raise UserError("--config is required (e.g. --config configs/demo.yaml)")
    overlays = [config.reading_path(args.reading)] if args.reading else []
    cfg = config.load(args.config, args.overrides, overlays)
    if args.print_config:
        print(config.to_yaml(cfg), end="")
        return 0
    resume_path, resume_state = preflight(args, cfg)
    init = (load_init_weights(cfg.model.init_from)
            if cfg.model.init_from and resume_state is None else None)  # a resume brings its own weights
    # One writer per run folder, held to the end: rank 0 writes there (the other ranks never do, and wait for
    # rank 0 at the rendezvous, which a refused rank 0 never reaches: torchrun then ends them). SIGTERM/SIGUSR1
    # are recorded from the lock on, not only once training starts: a SLURM warning that arrives while the
    # ranks still build stops the run after its first step, with a checkpoint.
    with runlock.RunLock(Path(cfg.run.dir), enabled=is_rank_zero()) as lock, preempt.StopRequest() as stop:
        resume_state = settle_resume(args, cfg, resume_path, resume_state)
        if resume_state is not None and resume_state["counters"]["epochs_done"] >= cfg.sched.epochs:
            print(f"{cfg.run.dir} is finished ({resume_state['counters']['epochs_done']}/{cfg.sched.epochs} epochs); "
                  f"nothing to do. To train further, start a new run.dir with --init-from {resume_path} and its own "
                  f"schedule")
            return 0
        run = build_trainer(cfg, resume_path, resume_state, init, run_lock=lock if is_rank_zero() else None,
                            stop=stop)
        end_epoch = (cfg.sched.epochs if args.run_epochs is None
                     else min(cfg.sched.epochs, run.counters.epochs_done + args.run_epochs))
        exit_code = run.fit(end_epoch)
        if exit_code == 0 and run.last_metrics is not None:
            run.log(results_table(run.last_metrics, run.counters.best_top1, Path(cfg.run.dir)))
        dist.shutdown()
        return exit_code


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def settle_resume(args: argparse.Namespace, cfg: config.Config, resume_path: Path | None,
                  resume_state: dict | None) -> dict | None:
    """Under the lock: the run folder checked again (another writer may have filled it since preflight looked),
    and best.pth made to agree with the resume state."""
    run_dir = Path(cfg.run.dir)
    check_run_dir(run_dir, resume_path, resume_auto=args.resume == "auto", cfg=cfg)
    if resume_state is not None and is_rank_zero():
        resume_state, note = checkpoint.reconcile_best(run_dir, resume_state)
        if note:
            print(note)
    return resume_state


def build_trainer(cfg: config.Config, resume_path: Path | None, resume_state: dict | None, init: dict | None, *,
                  run_lock: runlock.RunLock | None, stop: preempt.StopRequest) -> trainer.Trainer:
    """Joins the ranks, builds the run, restores a resume, writes config.yaml and prints the banner."""
    run_dir = Path(cfg.run.dir)
    world = dist.init(cfg.run.device, timeout_s=cfg.run.dist_timeout_s)
    log = print if world.is_main else (lambda *a, **k: None)
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif cfg.amp.dtype != "none":
        log(f"note: amp.dtype={cfg.amp.dtype} needs CUDA; training in fp32 on the CPU")
    setup = trainer.build_setup(cfg, world, init_weights=init, init_source=str(cfg.model.init_from))
    counters = Counters()
    if resume_state is not None:
        counters = checkpoint.restore(resume_state, model=setup.plain_model, optimizer=setup.optimizer,
                                      scheduler=setup.scheduler, scaler=setup.scaler, rank=world.rank,
                                      source=str(resume_path), config=config.to_dict(cfg))
        checkpoint.check_counters(counters, steps_per_epoch=setup.steps_per_epoch, source=str(resume_path))
        log(f"resumed from {resume_path}: epoch {counters.epochs_done + 1}, step {counters.steps_done}")
    else:
        setup.scheduler.step_update(0)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml(cfg))
    log(banner(cfg, setup, world))
    return trainer.Trainer(cfg, setup, world=world, run_dir=run_dir, log=log, counters=counters, stop=stop,
                           resume_state=resume_state, run_lock=run_lock)


def banner(cfg: config.Config, setup: trainer.TrainingSetup, world: dist.DistInfo) -> str:
    params = sum(p.numel() for p in setup.plain_model.parameters()) / 1e6
    alpha = "off" if cfg.pgt.alpha is None else f"alpha={cfg.pgt.alpha} ({cfg.pgt.impl})"
    return (f"pgt-train: {cfg.model.name} ({params:.1f}M params) on {world.world_size} x {world.device.type}, "
            f"global batch {cfg.data.batch_size}, {setup.steps_per_epoch} steps/epoch, PGT {alpha}, "
            f"run dir {cfg.run.dir}")


def results_table(m: dict, best_top1: float, run_dir: Path) -> str:
    files = [name for name in ("summary.csv", "tb/", "last.pth", "best.pth", "filter_norms.npz", "config.yaml")
             if (run_dir / name).exists()]
    rows = [("epochs trained", f"{m['epoch']}"), ("train top-1 (augmented)", f"{m['train_top1']:.2f} %"),
            ("val top-1", f"{m['val_top1']:.2f} %"), ("val top-5", f"{m['val_top5']:.2f} %"),
            ("best val top-1", f"{best_top1:.2f} %"), ("val images", f"{m['val_images']}"),
            ("val loss", f"{m['val_loss']:.4f}"), ("mean logit norm", f"{m['logit_norm']:.3f}"),
            ("run folder", f"{run_dir}  ({', '.join(files)})")]
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
        dist.Heartbeat.stop(exit_code=EXIT_BAD_INPUT)  # this rank says why itself: peers must not blame it
        print(f"pgt-train: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except engine.NonFiniteLoss as e:
        dist.Heartbeat.stop(exit_code=EXIT_NONFINITE)
        print(f"pgt-train: stopped: {e}; the last good checkpoint is kept", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print("pgt-train: interrupted; the last saved checkpoint is kept (continue with --resume auto)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug or an environment failure (disk full, lost rank): one line, not a hang
        if os.environ.get("PGT_TRAIN_TRACEBACK"):
            raise
        lost = dist.lost_rank_line(e)  # a collective failed because another rank went silent: name it, once
        if lost is not None:
            if lost:
                print(f"pgt-train: failed: {lost}", file=sys.stderr)
            return EXIT_INTERNAL
        dist.Heartbeat.stop(exit_code=EXIT_INTERNAL)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"pgt-train: failed: {type(e).__name__}: {first} (set PGT_TRAIN_TRACEBACK=1 for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
