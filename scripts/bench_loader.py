#!/usr/bin/env python
"""Training-loader throughput: the torchvision path vs DALI (CPU pipeline) on the same JPEG folder.

    python scripts/bench_loader.py                         # 200 generated photo-like JPEGs (330-530 px sides)
    python scripts/bench_loader.py --data /path/to/imagenet --workers 4

Both loaders are built by pgt_train.data.build_loaders exactly as a training run builds them (decode,
RandomResizedCrop 224, flip, normalise on the device, CPU here), with `--workers` worker processes
(torchvision) or threads (DALI). One untimed pass warms up (worker start, pipeline build); each timed
pass is one epoch of the train loader. Prints images/s and images/s per worker, min/median/max.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from pgt_train.benchmarking import loader_rates, machine_banner, make_jpeg_folder
from pgt_train.config import DataConfig
from pgt_train.data import build_loaders
from pgt_train.dist import DistInfo

CLASSES = 4  # of the generated folder


def bench(loader_name: str, root: Path, *, num_classes: int, batch: int, workers: int, repeats: int) -> list[float]:
    cfg = DataConfig(root=str(root), loader=loader_name, batch_size=batch, workers=workers, img_size=224,
                     dali_device="cpu")
    train, _ = build_loaders(cfg, num_classes=num_classes, seed=0, dist=DistInfo(), channels_last=False)
    return loader_rates(train, passes=repeats, device=torch.device("cpu"))  # after one untimed warm-up pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="ImageNet-layout root (train/, val/); default: generate JPEGs")
    p.add_argument("--images", type=int, default=200, help="generated train images (without --data)")
    p.add_argument("--workers", type=int, default=1, help="torchvision worker processes = DALI threads")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per loader")
    p.add_argument("--loaders", default="torchvision,dali")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the main process only normalises; keep the cores for the loaders

    with tempfile.TemporaryDirectory() as tmp:
        # ImageNet-like: sides 330-530 px (mean about 430), smooth texture that compresses like a photo
        root = args.data or make_jpeg_folder(Path(tmp), classes=CLASSES, train=args.images // CLASSES, val=1,
                                             sides=(330, 530), noise=60.0, grain=8)
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        n_train = sum(1 for _ in (root / "train").rglob("*") if _.is_file())
        print(machine_banner(torch.device("cpu")))
        print(f"data {root}: {n_train} train images, {len(classes)} classes; RandomResizedCrop 224 + flip, "
              f"batch {args.batch}, {args.workers} worker(s), {args.repeats} timed epochs after 1 warm-up\n")
        print(f"{'loader':<12} {'img/s min':>10} {'median':>8} {'max':>8} {'per worker (median)':>20}")
        for name in args.loaders.split(","):
            try:
                rates = bench(name, root, num_classes=len(classes), batch=args.batch, workers=args.workers,
                              repeats=args.repeats)
            except Exception as e:  # e.g. DALI not installed: report and go on with the others
                print(f"{name:<12} failed: {e}")
                continue
            med = statistics.median(rates)
            print(f"{name:<12} {min(rates):>10.1f} {med:>8.1f} {max(rates):>8.1f} "
                  f"{med / max(args.workers, 1):>20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
