"""What the speed scripts share (scripts/bench.py, scripts/bench_loader.py, scripts/gpu_check.py) and the tests'
JPEG folders: a bare training loop, timing with its spread over repeats, a timed loader pass, a banner naming
the machine, and generated ImageFolder JPEGs.

Figures are printed, never asserted: nothing here decides pass or fail.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from pgt_train import engine
from pgt_train.data.base import Loader

Batch = tuple[torch.Tensor, torch.Tensor]


def sync(device: torch.device) -> None:
    """Waits for the GPU's queued work, so a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn()` takes, GPU work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max) of repeated measurements: one figure hides how noisy the machine was."""
    return min(values), statistics.median(values), max(values)


SPREAD_HEADER = f"  {'figure':<46} {'min':>10} {'median':>10} {'max':>10}"


def spread_row(name: str, values: Sequence[float], unit: str) -> str:
    """One line under SPREAD_HEADER."""
    lo, mid, hi = spread(values)
    return f"  {name:<46} {lo:>10.4g} {mid:>10.4g} {hi:>10.4g}  {unit}"


def bare_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batches: Sequence[Batch], loss_fn: Callable, *, steps: int, device: torch.device,
               amp_dtype: Optional[torch.dtype]) -> None:
    """The minimal training loop, what any hand-written PyTorch script does per step (no metrics, scheduler,
    clipping or checks): the yardstick for the trainer's own overhead. `batches` (already on the device) are
    used in turn."""
    for i in range(steps):
        images, targets = batches[i % len(batches)]
        with engine.autocast(device, amp_dtype):
            loss = loss_fn(model(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


def loader_pass(loader: Loader, *, epoch: int, device: torch.device) -> float:
    """Images per second of one epoch of `loader` (batches delivered on the device, nothing else done)."""
    loader.set_epoch(epoch)
    start, images_seen = time.perf_counter(), 0
    for images, _ in loader:
        images_seen += images.shape[0]
    sync(device)
    return images_seen / (time.perf_counter() - start)


def loader_rates(loader: Loader, *, passes: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Images per second of `passes` epochs after `warmup` untimed ones (worker start, pipeline build)."""
    rates = [loader_pass(loader, epoch=epoch, device=device) for epoch in range(warmup + passes)]
    return rates[warmup:]


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name, fromlist=["__version__"])
    except ImportError:
        return f"{module_name} missing"
    return f"{module_name} {module.__version__}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_banner(device: torch.device) -> str:
    """Two lines: the machine the figures come from, and the versions that set them."""
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    machine = (f"machine: {platform.node()}, {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} "
               f"{platform.release()}; device {device}{gpu}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    versions = [f"python {platform.python_version()}", *map(_version, ("torchvision", "timm", "PIL", "nvidia.dali"))]
    if device.type == "cuda":
        versions += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}"]
    return machine + "\nversions: " + ", ".join(versions)


def _dominant_channel(c: int) -> tuple[float, float, float]:
    colour = [0.0, 0.0, 0.0]
    colour[c % 3] = 200.0
    return tuple(colour)


def make_jpeg_folder(root: Path, *, classes: Union[int, Sequence[str]], train: int, val: int,
                     colours: Optional[Sequence[Sequence[float]]] = None, sides: Union[int, tuple[int, int]] = (40, 72),
                     noise: float = 40.0, grain: int = 1, quality: int = 90, seed: int = 0) -> Path:
    """Writes an ImageNet-layout folder of real JPEGs, <root>/{train,val}/<class>/<split>_<i>.jpg, and returns root.

    classes: folder names in creation order (ImageFolder sorts them), or a count (n00000000, n00000001, ...).
    train, val: images per class. Each image is its class colour (default: 200 in channel class % 3, so the
    classes are learnable) plus Gaussian noise of std `noise`, drawn per `grain` x `grain` block and upsampled
    bicubically: grain 1 is pixel noise (tiny test images), 8 a smooth texture that compresses and decodes like a
    photo (loader benchmarks). sides: each side drawn from [lo, hi), or one fixed side. Deterministic in `seed`.
    root must not hold images already: nothing is overwritten.
    """
    root = Path(root)
    if any(root.glob("*/*/*")):
        raise FileExistsError(f"{root} already holds files; make_jpeg_folder writes only into a new or empty folder")
    names = [f"n{c:08d}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    colours = colours or [_dominant_channel(c) for c in range(len(names))]
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train), ("val", val)):
        for name, colour in zip(names, colours):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (sides, sides) if isinstance(sides, int) else rng.integers(*sides, size=2)
                blocks = rng.normal(0, noise, (-(-h // grain), -(-w // grain), 3))  # ceil: covers every pixel
                image = Image.fromarray(np.clip(np.asarray(colour) + blocks, 0, 255).astype(np.uint8))
                if grain > 1:
                    image = image.resize((int(w), int(h)), Image.BICUBIC)
                image.save(folder / f"{split}_{i}.jpg", quality=quality)
    return root
