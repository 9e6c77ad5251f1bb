"""Speed figures, side by side from one run: PGT's cost, the trainer against a bare loop, the loader.

    python scripts/bench.py                      # CPU defaults: ResNet-18, 64 px, batch 32, fp32
    python scripts/bench.py --device cuda        # GPU defaults: ResNet-50, 224 px, batch 256, fp16, channels_last

1. PGT cost: full training steps with pgt_cross_entropy (B) and F.cross_entropy (A), interleaved
   A B B A so drift hits both alike; the median of the per-round ratios B/A. Then the loss head alone
   (forward + backward on (N, C) logits): its extra time as a share of one step.
2. Trainer efficiency: engine.train_step (metrics, scheduler, GradScaler, PGT) against a bare loop
   of the same model, batch, optimizer, precision and PGT, both fed the same batches already on the
   device, interleaved; plus the diagnostics' cost amortised over their default interval.
3. Loader: the torchvision loader's images/s on generated JPEGs against the trainer's images/s.
Every figure is printed as min / median / max over the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from pgt_train import models, optim
from pgt_train.benchmarking import (SPREAD_HEADER, bare_steps, engine_steps, loader_rates, machine_banner,
                                    make_jpeg_folder, spread_row as row, timed)
from pgt_train.config import DiagConfig
from pgt_train.diagnostics import Diagnostics
from pgt_train.dist import pick_device
from pgt_train.pgt import pgt_cross_entropy
from pgt_train.trainer import AMP_DTYPES
from pgt_train.writers import RunWriter


class Setup:
    """Model, optimizer and scaler as the trainer builds them, plus fixed batches on the device."""

    def __init__(self, args, device: torch.device):
        self.device, self.amp = device, AMP_DTYPES[args.amp] if device.type == "cuda" else None  # fp32 on the CPU
        torch.manual_seed(0)
        model = models.build_model(args.model, num_classes=args.classes)
        self.model, self.plain = models.prepare(model, device=device, channels_last=args.channels_last,
                                                sync_bn=False, world_size=1, compile=args.compile)
        self.optimizer = optim.build_optimizer(self.plain, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-5,
                                               decay_norm_and_bias=False)
        self.scheduler = optim.build_scheduler(self.optimizer, name="cosine", epochs=10**6, warmup_epochs=0,
                                               warmup_lr=0.0, milestones=(), gamma=0.1, min_lr=0.0, steps_per_epoch=1)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.batches = [(torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).contiguous(
                            memory_format=fmt), torch.randint(args.classes, (args.batch,), device=device))
                        for _ in range(4)]
        self.alpha = args.alpha

    def bare_steps(self, loss_fn, steps: int) -> None:
        bare_steps(self.model, self.optimizer, self.scaler, self.batches, loss_fn, steps=steps, device=self.device,
                   amp_dtype=self.amp)

    def engine_steps(self, steps: int) -> None:
        batches = iter([self.batches[i % len(self.batches)] for i in range(steps)])
        engine_steps(self.model, batches, loss_fn=self.pgt_loss, optimizer=self.optimizer, scheduler=self.scheduler,
                     scaler=self.scaler, amp_dtype=self.amp, steps=steps)

    def pgt_loss(self, logits, targets):
        return pgt_cross_entropy(logits, targets, self.alpha)


def bench_pgt_cost(s: Setup, args) -> tuple[list[str], float]:
    ce = F.cross_entropy
    a_times, b_times, ratios = [], [], []
    for _ in range(args.repeats):  # A B B A
        a1 = timed(lambda: s.bare_steps(ce, args.steps), s.device)
        b1 = timed(lambda: s.bare_steps(s.pgt_loss, args.steps), s.device)
        b2 = timed(lambda: s.bare_steps(s.pgt_loss, args.steps), s.device)
        a2 = timed(lambda: s.bare_steps(ce, args.steps), s.device)
        a_times += [a1 / args.steps, a2 / args.steps]
        b_times += [b1 / args.steps, b2 / args.steps]
        ratios.append((b1 + b2) / (a1 + a2))
    step_time = statistics.median(a_times)

    logits = torch.randn(args.batch, args.classes, device=s.device, requires_grad=True)
    targets = torch.randint(args.classes, (args.batch,), device=s.device)

    def head(fn, n=200):
        def run():
            for _ in range(n):
                fn(logits, targets).backward()
        return timed(run, s.device) / n

    head_ce, head_pgt = [], []
    for _ in range(args.repeats):
        head_ce.append(head(ce))
        head_pgt.append(head(s.pgt_loss))
    extra = [max(p - c, 0.0) / step_time * 100 for p, c in zip(head_pgt, head_ce)]
    return [
        row("train step, F.cross_entropy (A)", [t * 1e3 for t in a_times], "ms"),
        row("train step, pgt_cross_entropy (B)", [t * 1e3 for t in b_times], "ms"),
        row("ratio B/A per A-B-B-A round", ratios, "x"),
        row("loss head fwd+bwd, F.cross_entropy", [t * 1e6 for t in head_ce], "us"),
        row("loss head fwd+bwd, pgt_cross_entropy", [t * 1e6 for t in head_pgt], "us"),
        row("PGT head extra time / train step", extra, "%"),
    ], step_time


def bench_trainer(s: Setup, args, step_time: float) -> tuple[list[str], float]:
    eng, bare, ratios = [], [], []
    for _ in range(args.repeats):  # engine, bare, bare, engine
        e1 = timed(lambda: s.engine_steps(args.steps), s.device)
        b1 = timed(lambda: s.bare_steps(s.pgt_loss, args.steps), s.device)
        b2 = timed(lambda: s.bare_steps(s.pgt_loss, args.steps), s.device)
        e2 = timed(lambda: s.engine_steps(args.steps), s.device)
        eng += [args.batch * args.steps / e1, args.batch * args.steps / e2]
        bare += [args.batch * args.steps / b1, args.batch * args.steps / b2]
        ratios.append((b1 + b2) / (e1 + e2))

    interval = DiagConfig().interval
    with tempfile.TemporaryDirectory() as tmp:
        writer = RunWriter(Path(tmp), enabled=False)  # TensorBoard writes happen off the hot loop; not timed
        diag = Diagnostics(s.plain, interval=1, zero_threshold=DiagConfig().zero_threshold, writer=writer,
                           run_dir=Path(tmp), log=print)
        costs = []
        for step in range(1, args.repeats + 1):  # a measuring step: filter norms now, features next forward
            costs.append(timed(lambda: (diag.after_step(step), s.model(s.batches[0][0])), s.device)
                         - timed(lambda: s.model(s.batches[0][0]), s.device))
    share = [max(c, 0.0) / (interval * step_time) * 100 for c in costs]
    return [
        row("pgt-train engine (PGT on)", eng, "img/s"),
        row("bare PyTorch loop (PGT on)", bare, "img/s"),
        row("engine / bare per round", ratios, "x"),
        row(f"diagnostics, amortised over {interval} steps", share, "% of train time"),
    ], statistics.median(eng)


def bench_loader(args, device: torch.device, trainer_img_s: float) -> list[str]:
    from pgt_train.data.folder import build_datasets
    from pgt_train.data.torch_loader import TorchLoader
    with tempfile.TemporaryDirectory() as tmp:
        # square photo-like JPEGs (smooth texture): the decode cost of images of that side
        root = make_jpeg_folder(Path(tmp), classes=10, train=args.loader_images // 10, val=1, sides=args.jpeg_size,
                                noise=60.0, grain=8)
        train_set, _ = build_datasets(str(root), num_classes=10, img_size=args.img_size, val_resize=None,
                                      crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), seed=0)
        loader = TorchLoader(train_set, batch_size=args.batch, train=True, rank=0, world_size=1, seed=0,
                             workers=args.workers, device=device, channels_last=args.channels_last)
        rates = loader_rates(loader, passes=args.repeats, device=device)  # an untimed epoch starts the workers
    per_worker = [r / max(args.workers, 1) for r in rates]
    return [
        row(f"torchvision loader, {args.workers} workers, {args.jpeg_size}px JPEG", rates, "img/s"),
        row("  per worker", per_worker, "img/s"),
        row("loader / trainer", [r / trainer_img_s for r in rates], "x"),
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model")
    p.add_argument("--img-size", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="fp16")
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jpeg-size", type=int, default=256, help="side of the generated JPEGs for the loader figure")
    p.add_argument("--loader-images", type=int, default=400)
    p.add_argument("--skip-loader", action="store_true")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    args.model = args.model or ("resnet50" if gpu else "resnet18")
    args.img_size = args.img_size or (224 if gpu else 64)
    args.batch = args.batch or (256 if gpu else 32)
    args.steps = args.steps or (20 if gpu else 3)
    args.channels_last = gpu
    if gpu:
        torch.backends.cudnn.benchmark = True

    print(machine_banner(device))
    print(f"setup: {args.model} {args.img_size}px batch {args.batch} classes {args.classes} "
          f"precision {args.amp if gpu else 'fp32'} channels_last {args.channels_last} compile {args.compile} "
          f"alpha {args.alpha}; {args.steps} steps per block, {args.repeats} rounds")
    print(SPREAD_HEADER)
    s = Setup(args, device)
    s.bare_steps(F.cross_entropy, 3)  # warm-up: allocator, cudnn autotune, compile
    s.engine_steps(3)
    print("1. PGT cost")
    lines, step_time = bench_pgt_cost(s, args)
    print("\n".join(lines))
    print("2. trainer efficiency")
    lines, trainer_img_s = bench_trainer(s, args, step_time)
    print("\n".join(lines))
    if not args.skip_loader:
        print("3. loader vs trainer")
        print("\n".join(bench_loader(args, device, trainer_img_s)))


if __name__ == "__main__":
    main()
