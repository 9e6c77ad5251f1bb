#!/usr/bin/env python
"""Writes CIFAR-10 from its python batches on disk as the image folder Fig. 13's recipe reads; nothing downloads.

    python scripts/cifar_to_folder.py --cifar /data/cifar-python --out /data/cifar10
    python scripts/reproduce.py --grid cifar10_resnet20 --data /data/cifar10

--cifar is the folder torchvision.datasets.CIFAR10(root, download=False) reads: it holds cifar-10-batches-py/
(data_batch_1..5, test_batch, batches.meta, checked against torchvision's MD5 sums). --out gets
train/<class>/<index>.png (50,000 images) and val/<class>/<index>.png (the 10,000 test images), lossless PNG,
class folders named by batches.meta. --out must not exist yet (or be empty): nothing there is overwritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"cifar_to_folder: error: {message}", file=sys.stderr)
    sys.exit(2)


def write_split(samples, classes: list[str], folder: Path) -> int:
    """Each (PIL image, label) of `samples` as folder/<class>/<index>.png; returns how many were written."""
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=False)
    count = 0
    for index, (image, label) in enumerate(samples):
        image.save(folder / classes[label] / f"{index:05d}.png")
        count += 1
    return count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cifar", required=True, help="folder holding cifar-10-batches-py/ (torchvision's layout)")
    p.add_argument("--out", required=True, help="new or empty folder for train/ and val/")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"--out {out} exists and is not an empty folder; nothing is overwritten: pass a new folder")
    from torchvision.datasets import CIFAR10
    try:
        train, test = (CIFAR10(args.cifar, train=split, download=False) for split in (True, False))
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        fail(f"--cifar {args.cifar}: {e} (it must hold cifar-10-batches-py/ with the python batches)")
    written = {split: write_split(data, train.classes, out / split) for split, data in (("train", train), ("val", test))}
    print(f"wrote {written['train']} training and {written['val']} validation images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
