"""What the speed scripts share (scripts/bench.py, scripts/bench_loader.py, scripts/gpu_check.py) and the tests'
JPEG folders: a bare training loop, timing with its spread over repeats, a timed loader pass, a banner naming
the machine, and generated ImageFolder JPEGs (noise textures for tests, photo-like ones for GPU loader figures).

Figures are printed, never asserted: nothing here decides pass or fail.
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

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


def engine_steps(model: torch.nn.Module, batches: Iterator[Batch], *, loss_fn: Callable, optimizer, scheduler,
                 scaler: torch.amp.GradScaler, amp_dtype: Optional[torch.dtype], steps: int,
                 start_step: int = 0) -> int:
    """`steps` optimizer steps as pgt-train's loop takes them (engine.train_step with its device-side metrics,
    then the per-step schedule) on the next batches of `batches`; returns the images trained."""
    totals = engine.EpochTotals(next(model.parameters()).device)
    nonfinite_streak = torch.zeros((), dtype=torch.int64, device=totals.sums.device)
    for step in range(start_step + 1, start_step + steps + 1):
        engine.train_step(model, batches, loss_fn=loss_fn, optimizer=optimizer, scaler=scaler,
                          settings=engine.StepSettings(amp_dtype=amp_dtype), clip_params=[], totals=totals,
                          nonfinite_streak=nonfinite_streak)
        scheduler.step_update(step)
    return int(totals.metrics()["train_images"])


def images_per_second(batches: Iterable[Batch], device: torch.device) -> float:
    """Images per second of drawing every batch from `batches` (delivered on the device, nothing else done);
    an iterator already started (a warmed-up pipeline) is timed from where it stands."""
    sync(device)
    start, images_seen = time.perf_counter(), 0
    for images, _ in batches:
        images_seen += images.shape[0]
    sync(device)
    return images_seen / (time.perf_counter() - start)


def loader_pass(loader: Loader, *, epoch: int, device: torch.device) -> float:
    """Images per second of one epoch of `loader` (batches delivered on the device, nothing else done)."""
    loader.set_epoch(epoch)
    return images_per_second(loader, device)


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


# (width, height): ImageNet's usual photo shapes, 500x375 most often; a `sides` choice for make_jpeg_folder
PHOTO_SHAPES = ((500, 375), (500, 375), (500, 375), (375, 500), (500, 333), (500, 400))
Sides = Union[int, tuple[int, int], Sequence[tuple[int, int]]]


def _octaves(rng: np.random.Generator, h: int, w: int, octaves) -> np.ndarray:
    """Sum of Gaussian noise fields upsampled (bicubic) from cell-sized grids: 1/f-like texture."""
    out = np.zeros((h, w), np.float32)
    for cell, amp in octaves:
        grid = rng.normal(0, amp, (h // cell + 2, w // cell + 2)).astype(np.float32)  # PIL reads float32 as mode F
        out += np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC)) if cell > 1 else grid[:h, :w]
    return out


def photo_like_pixels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) uint8 image with photographic statistics, not flat shapes: luminance texture at five
    scales, a slowly varying tint, and 3-8 hard-edged objects carrying their own texture. In PHOTO_SHAPES at
    JPEG quality 90: 111.5 KiB on average (84-133) over 40 images (make_jpeg_folder, seed 0)."""
    detail = 45 * rng.uniform(0.4, 1.6)
    luma = _octaves(rng, h, w, ((160, 40.0), (40, 25.0), (10, 14.0), (3, detail), (1, detail / 2)))
    canvas = (rng.uniform(70, 170, 3) + np.stack([_octaves(rng, h, w, ((120, 18.0),)) for _ in range(3)], -1)
              + luma[..., None])
    shapes, mask = Image.new("RGB", (w, h)), Image.new("L", (w, h))
    draw, mask_draw = ImageDraw.Draw(shapes), ImageDraw.Draw(mask)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        box = [x0, y0, x0 + int(rng.integers(5, w // 2 + 6)), y0 + int(rng.integers(5, h // 2 + 6))]
        ellipse = rng.random() < 0.5
        (draw.ellipse if ellipse else draw.rectangle)(box, fill=tuple(int(v) for v in rng.integers(20, 235, 3)))
        (mask_draw.ellipse if ellipse else mask_draw.rectangle)(box, fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.0)), np.float32)[..., None] / 255
    objects = np.asarray(shapes, np.float32) + 0.8 * np.roll(luma, (h // 3, w // 3), (0, 1))[..., None]
    return np.clip(canvas * (1 - alpha) + objects * alpha, 0, 255).astype(np.uint8)


def _write_photo_jpeg(job: tuple[str, int, int, int, int]) -> None:
    path, seed, h, w, quality = job
    Image.fromarray(photo_like_pixels(np.random.default_rng(seed), h, w)).save(path, quality=quality)


def _noise_image(rng: np.random.Generator, colour, h: int, w: int, noise: float, grain: int) -> Image.Image:
    blocks = rng.normal(0, noise, (-(-h // grain), -(-w // grain), 3))  # ceil: covers every pixel
    image = Image.fromarray(np.clip(np.asarray(colour) + blocks, 0, 255).astype(np.uint8))
    return image.resize((w, h), Image.BICUBIC) if grain > 1 else image


def _draw_size(rng: np.random.Generator, sides: Sides) -> tuple[int, int]:
    """(height, width): one fixed side, each side drawn from [lo, hi), or one of several (width, height) shapes."""
    if isinstance(sides, int):
        return sides, sides
    if isinstance(sides[0], (int, np.integer)):
        h, w = rng.integers(*sides, size=2)
        return int(h), int(w)
    w, h = sides[rng.integers(len(sides))]
    return int(h), int(w)


def _run_jobs(fn: Callable, jobs: list, processes: int) -> None:
    if processes > 1 and len(jobs) > 1:
        pool = multiprocessing.get_context("fork").Pool(min(processes, len(jobs)))
        try:
            pool.map(fn, jobs, chunksize=8)
        except BaseException:
            pool.terminate()
            raise
        finally:  # on success the workers exit by themselves: no reliance on their SIGTERM handling
            pool.close()
            pool.join()
    else:
        for job in jobs:
            fn(job)


def make_jpeg_folder(root: Path, *, classes: Union[int, Sequence[str]], train: int, val: int,
                     colours: Optional[Sequence[Sequence[float]]] = None, sides: Sides = (40, 72),
                     noise: float = 40.0, grain: int = 1, quality: int = 90, seed: int = 0, texture: str = "noise",
                     processes: int = 1) -> Path:
    """Writes an ImageNet-layout folder of real JPEGs, <root>/{train,val}/<class>/<split>_<i>.jpg, and returns root.

    classes: folder names in creation order (ImageFolder sorts them), or a count (n00000000, n00000001, ...).
    train, val: images per class. texture "noise": each image is its class colour (default: 200 in channel
    class % 3, so the classes are learnable) plus Gaussian noise of std `noise`, drawn per `grain` x `grain` block
    and upsampled bicubically: grain 1 is pixel noise (tiny test images), 8 a smooth texture that compresses and
    decodes like a photo (loader benchmarks). texture "photo": photo_like_pixels, the same for every class (speed,
    not learning; colours, noise and grain unused), written by `processes` forked workers.
    sides: one fixed side, each side drawn from [lo, hi), or a sequence of (width, height) shapes to draw from
    (PHOTO_SHAPES: ImageNet-like). Deterministic in `seed`. root must not hold images already: nothing is overwritten.
    """
    if texture not in ("noise", "photo"):
        raise ValueError(f"texture must be 'noise' or 'photo', not {texture!r}")
    root = Path(root)
    if any(root.glob("*/*/*")):
        raise FileExistsError(f"{root} already holds files; make_jpeg_folder writes only into a new or empty folder")
    names = [f"n{c:08d}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    colours = colours or [_dominant_channel(c) for c in range(len(names))]
    rng, photo_jobs = np.random.default_rng(seed), []
    for split, per_class in (("train", train), ("val", val)):
        for name, colour in zip(names, colours):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                path, (h, w) = folder / f"{split}_{i}.jpg", _draw_size(rng, sides)
                if texture == "photo":  # each image its own seed: the workers need not share one generator
                    photo_jobs.append((str(path), int(rng.integers(2**63)), h, w, quality))
                else:
                    _noise_image(rng, colour, h, w, noise, grain).save(path, quality=quality)
    _run_jobs(_write_photo_jpeg, photo_jobs, processes)
    return root
