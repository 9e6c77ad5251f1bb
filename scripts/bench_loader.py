#!/usr/bin/env python
"""The CPU train loaders against the JPEG decoder's own speed, on the same files, in one run.

    python scripts/bench_loader.py                         # 400 generated photo-like ImageNet-shaped JPEGs
    python scripts/bench_loader.py --data /path/to/imagenet --workers 1,2,4 --rounds 5

Prints, as min / median / max over --rounds interleaved rounds (every figure once per round, so a noisy machine
slows all of them alike):
  * the decode-only limit: one thread decoding every file whole (torchvision.io.decode_jpeg, simplejpeg, PIL,
    all libjpeg-turbo); the limit is the fastest of them in each round;
  * ceilings, one thread and no DataLoader, as ratios to that round's limit: reading + decoding whole files
    (what any whole-file loader must do), the tensor path's whole per-sample work, and DALI's CPU decode of only
    a random crop's region (ROI decode, fn.decoders.image_random_crop, no resize) beside its whole-file decode:
    the one ROI decoder installable from a package index here;
  * every CPU train loader (RandomResizedCrop 224 + flip, batch --batch, normalised in the main process) with
    each worker count: images/s, per worker, and per worker as the ratio to that round's limit; and the
    scaling, the N-worker rate over N x the one-worker rate;
  * the pixel difference of the tensor path against today's PIL path on the same crops (grey levels);
  * with --profile, where one worker's time goes, per stage.
Loaders: tensor (data.loader torchvision's default, data/cpu_crop.py), pil (the same loader on the PIL path it
replaced, folder.train_path pil) and dali (DALI's CPU pipeline, threads = workers; skipped where not installed).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pgt_train.benchmarking import PHOTO_SHAPES, loader_pass, machine_banner, make_jpeg_folder, spread
from pgt_train.config import DataConfig
from pgt_train.data import build_loaders
from pgt_train.data.folder import build_datasets
from pgt_train.dist import DistInfo

CPU = torch.device("cpu")
CROP = dict(img_size=224, val_resize=None, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), seed=0)


def decoders() -> dict:
    """name -> decode(bytes): whole-file RGB decodes, one thread."""
    import simplejpeg
    from torchvision.io import ImageReadMode, decode_jpeg
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    return {"torchvision.io.decode_jpeg": lambda data: decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                                                     mode=ImageReadMode.RGB),
            "simplejpeg": lambda data: simplejpeg.decode_jpeg(data, colorspace="RGB"),
            "PIL": lambda data: Image.open(io.BytesIO(data)).convert("RGB")}


def decode_rate(decode, blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for data in blobs:
        decode(data)
    return len(blobs) / (time.perf_counter() - start)


def dali_decode_rate(files: list[str], *, roi: bool, batch: int = 32):
    """A callable giving img/s of one pass of DALI's CPU decoder over `files` (1 thread, no resize): whole
    files, or only a RandomResizedCrop-distributed region of each (ROI); None where DALI is not installed."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        return None

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=2, seed=0)
    def pipeline():
        jpegs, _ = fn.readers.file(files=files, labels=list(range(len(files))), random_shuffle=False)
        if roi:
            return fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB, num_attempts=10,
                                                 random_area=list(CROP["crop_scale"]),
                                                 random_aspect_ratio=list(CROP["crop_ratio"]))
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

    pipe, steps = pipeline(), max(1, len(files) // batch)
    pipe.build()

    def rate() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            pipe.run()
        return steps * batch / (time.perf_counter() - start)
    rate()  # warm-up: thread start, first allocations
    return rate


def ceilings(root: Path, num_classes: int, files: list[str]) -> dict:
    """name -> a callable giving img/s of one single-threaded pass over the train files (no DataLoader)."""
    import simplejpeg
    from pgt_train.data.folder import read_bytes
    train, _ = build_datasets(str(root), num_classes=num_classes, train_path="tensor", **CROP)

    def timed(step):
        def rate() -> float:
            start = time.perf_counter()
            for index, path in enumerate(files):
                step(index, path)
            return len(files) / (time.perf_counter() - start)
        return rate
    found = {"read + decode whole files (simplejpeg)":
             timed(lambda _, path: simplejpeg.decode_jpeg(read_bytes(path), colorspace="RGB")),
             "tensor path's per-sample work, one process": timed(lambda index, _: train[(index, 0)])}
    for name, roi in (("DALI CPU decode, whole files", False), ("DALI CPU decode, crop region only (ROI)", True)):
        rate = dali_decode_rate(files, roi=roi)
        if rate is not None:
            found[name] = rate
    return found


def build(name: str, root: Path, *, num_classes: int, batch: int, workers: int):
    """The train loader `name` with `workers` workers, as a training run builds it (build_loaders)."""
    if name not in ("tensor", "pil", "dali"):
        raise ValueError(f"unknown loader {name!r} (valid: tensor, pil, dali)")
    cfg = DataConfig(root=str(root), loader="dali" if name == "dali" else "torchvision", batch_size=batch,
                     workers=workers, img_size=CROP["img_size"], dali_device="cpu")
    return build_loaders(cfg, num_classes=num_classes, seed=0, dist=DistInfo(), channels_last=False,
                         train_path="auto" if name == "dali" else name)[0]


def pixel_difference(root: Path, num_classes: int) -> tuple[float, float]:
    """(mean, max) |tensor - pil| in grey levels over every train image's epoch-0 crop (the same boxes)."""
    (tensor, _), (pil, _) = (build_datasets(str(root), num_classes=num_classes, train_path=p, **CROP)
                             for p in ("tensor", "pil"))
    means, peak = [], 0
    for index in range(len(tensor)):
        a, b = tensor[(index, 0)][0], pil[(index, 0)][0]
        diff = (a.int() - b.int()).abs()
        means.append(diff.float().mean().item())
        peak = max(peak, diff.max().item())
    return float(np.mean(means)), float(peak)


def profile(root: Path, num_classes: int) -> dict[str, float]:
    """Microseconds per image of each stage of the tensor path in one process (one worker's work, no IPC)."""
    import simplejpeg
    from pgt_train.data import cpu_crop
    from pgt_train.data.folder import read_bytes
    train, _ = build_datasets(str(root), num_classes=num_classes, train_path="tensor", **CROP)
    stages = dict.fromkeys(("read file", "header + box draw", "decode", "resize (antialiased bilinear) + flip",
                            "collate into a reused shared block (batch 32)"), 0.0)
    outputs = []
    for index, (path, _) in enumerate(train.samples):
        t0 = time.perf_counter()
        data = read_bytes(path)
        t1 = time.perf_counter()
        shape = cpu_crop.plain_jpeg_shape(data)
        generator = torch.Generator().manual_seed(index)
        (top, left, h, w), flip = cpu_crop.sample_crop(*shape, scale=(0.08, 1), ratio=(3 / 4, 4 / 3),
                                                       generator=generator), cpu_crop.sample_flip(generator)
        t2 = time.perf_counter()
        array = simplejpeg.decode_jpeg(data, colorspace="RGB")
        t3 = time.perf_counter()
        out = cpu_crop.resized_crop(array, (top, left, h, w), 224, flip)  # resize, flip and contiguous
        t4 = time.perf_counter()
        outputs.append(out)
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name] += dt
    block = torch.stack(outputs[:32]).share_memory_()  # as a worker's BatchPool block after its first batch
    t6 = time.perf_counter()
    for k in range(0, len(outputs) - 31, 32):
        torch.stack(outputs[k:k + 32], out=block)
    stages["collate into a reused shared block (batch 32)"] = time.perf_counter() - t6
    return {name: 1e6 * seconds / len(outputs) for name, seconds in stages.items()}


def row(name: str, values, fmt: str = "{:>9.3g}") -> str:
    return f"  {name:<44}" + "".join(fmt.format(v) for v in spread(values))


def build_all(names: list[str], workers: list[int], root: Path, *, num_classes: int, batch: int) -> dict:
    """(name, workers) -> the loader, warmed up by one untimed epoch (worker start, pipeline build)."""
    loaders = {}
    for name in names:
        for n in workers:
            try:
                loaders[name, n] = build(name, root, num_classes=num_classes, batch=batch, workers=n)
                loader_pass(loaders[name, n], epoch=0, device=CPU)
            except Exception as e:  # noqa: BLE001 - e.g. DALI not installed: report and go on with the others
                print(f"{name} with {n} worker(s): not measured ({type(e).__name__}: {e})")
                break
    return loaders


def measure(loaders: dict, blobs: list[bytes], ceiling: dict, rounds: int) -> tuple[dict, dict, dict]:
    """Interleaved rounds: each decoder over every file, each ceiling, then one epoch of each loader.
    Returns img/s lists: limits, ceilings, loader rates."""
    decode = decoders()
    limits, tops, rates = {k: [] for k in decode}, {k: [] for k in ceiling}, {key: [] for key in loaders}
    for round_ in range(rounds):
        for name, fn in decode.items():
            limits[name].append(decode_rate(fn, blobs))
        for name, rate in ceiling.items():
            tops[name].append(rate())
        for (name, n), loader in loaders.items():
            rates[name, n].append(loader_pass(loader, epoch=round_ + 1, device=CPU))
    return limits, tops, rates


def report(limits: dict, tops: dict, rates: dict) -> None:
    limit = [max(values) for values in zip(*limits.values())]  # the fastest decoder of each round
    print(f"  {'figure':<44}{'min':>9}{'median':>9}{'max':>9}")
    print("decode only, one thread, whole files (img/s)")
    for name, values in limits.items():
        print(row(name, values))
    print(row("the limit: the fastest of them, per round", limit))
    print("ceilings, one thread, no DataLoader (ratio to the limit)")
    for name, values in tops.items():
        print(row(name, [v / lim for v, lim in zip(values, limit)], "{:>9.3f}"))
    for (name, n), values in rates.items():
        print(f"loader {name}, {n} worker(s)")
        print(row("img/s", values))
        print(row("img/s per worker", [v / n for v in values]))
        print(row("per worker / the limit", [v / n / lim for v, lim in zip(values, limit)], "{:>9.3f}"))
        if n != 1 and (name, 1) in rates:
            print(row(f"scaling: img/s / ({n} x one worker's)",
                      [v / (n * one) for v, one in zip(values, rates[name, 1])], "{:>9.3f}"))


def report_profile(root: Path, num_classes: int) -> None:
    print("\none worker's time per image, tensor path, by stage (µs):")
    stages = profile(root, num_classes)
    total = sum(stages.values())
    for name, micros in stages.items():
        print(f"  {name:<44} {micros:>8.1f}  {micros / total:>6.1%}")
    print(f"  {'decode only, this pass: ' + format(1e6 / stages['decode'], '.0f') + ' img/s':<44}"
          f"   the other stages: {1 - stages['decode'] / total:.1%} of the time")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="ImageNet-layout root (train/, val/); default: generate JPEGs")
    p.add_argument("--images", type=int, default=400, help="generated train images (without --data)")
    p.add_argument("--workers", default="1,2", help="worker counts (comma-separated)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (after one warm-up epoch)")
    p.add_argument("--loaders", default="tensor,pil,dali")
    p.add_argument("--profile", action="store_true", help="also print one worker's time per stage")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the main process only normalises; keep the cores for the loaders
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or make_jpeg_folder(Path(tmp), classes=4, train=args.images // 4, val=1, texture="photo",
                                             sides=PHOTO_SHAPES, processes=2)
        num_classes = sum(1 for d in (root / "train").iterdir() if d.is_dir())
        files = [str(f) for f in sorted((root / "train").rglob("*")) if f.is_file()]
        blobs = [Path(f).read_bytes() for f in files]
        print(machine_banner(CPU))
        print(f"data {root}: {len(blobs)} train images, {num_classes} classes; RandomResizedCrop 224 + flip, "
              f"batch {args.batch}; {args.rounds} interleaved rounds after 1 warm-up epoch\n")
        loaders = build_all(args.loaders.split(","), [int(w) for w in args.workers.split(",")], root,
                            num_classes=num_classes, batch=args.batch)
        report(*measure(loaders, blobs, ceilings(root, num_classes, files), args.rounds))
        del loaders  # the workers end before the pixel and profile passes
        mean, peak = pixel_difference(root, num_classes)
        print(f"\npixels, tensor vs pil path on the same crops: mean |diff| {mean:.3f}, max {peak:.0f} grey levels")
        if args.profile:
            report_profile(root, num_classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
