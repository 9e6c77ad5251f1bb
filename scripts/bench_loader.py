#!/usr/bin/env python
"""Training-loader throughput: the torchvision path vs DALI (CPU pipeline) on the same JPEG folder.

    python scripts/bench_loader.py                         # ~200 generated 500x375 JPEGs in a temp dir
    python scripts/bench_loader.py --data /path/to/imagenet --workers 4 --limit 2000

Both loaders are built by pgt_train.data.build_loaders exactly as a training run builds them (decode,
RandomResizedCrop 224, flip, normalise on the device, CPU here), with `--workers` worker processes
(torchvision) or threads (DALI). One untimed pass warms up (worker start, pipeline build); each timed
pass is one epoch of the train loader. Prints images/s and images/s per worker, min/median/max.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pgt_train.config import DataConfig
from pgt_train.data import build_loaders
from pgt_train.dist import DistInfo


def make_folder(root: Path, images: int, classes: int = 4, seed: int = 0) -> Path:
    """ImageNet-like JPEGs: ~500x375 (either orientation), smooth noise so they compress like photos."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
            w, h = int(w * rng.uniform(0.9, 1.1)), int(h * rng.uniform(0.9, 1.1))
            small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            img.save(folder / f"{i:05d}.JPEG", quality=90)
    return root


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("torchvision", "PIL", "nvidia.dali"):
        try:
            module = __import__(name, fromlist=["__version__"])
            versions.append(f"{name} {module.__version__}")
        except ImportError:
            versions.append(f"{name} missing")
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}\n" + ", ".join(versions)


def bench(loader_name: str, root: Path, *, num_classes: int, batch: int, workers: int, repeats: int) -> list[float]:
    cfg = DataConfig(root=str(root), loader=loader_name, batch_size=batch, workers=workers, img_size=224,
                     dali_device="cpu")
    train, _ = build_loaders(cfg, num_classes=num_classes, seed=0, dist=DistInfo(), channels_last=False)
    rates = []
    for epoch in range(repeats + 1):  # pass 0 warms up
        train.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for images, _ in train:
            assert images.shape[1:] == (3, 224, 224)
            n += images.shape[0]
        if epoch:
            rates.append(n / (time.perf_counter() - start))
    return rates


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
        root = args.data or make_folder(Path(tmp), args.images)
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        n_train = sum(1 for _ in (root / "train").rglob("*") if _.is_file())
        print(machine())
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
