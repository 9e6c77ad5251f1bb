"""One GPU check, at most ~8 minutes on one H100: exactness, loaders end to end, throughput, DALI, a real training.

    python scripts/gpu_check.py [--out gpu_check/]      (scripts/gpu_check.sh wraps it and keeps the log)
    python scripts/gpu_check.py --cpu-smoke --out DIR   (tiny sizes on the CPU: runs the end-to-end code path)

Needs only the repo and its pip dependencies: no dataset (it generates JPEGs, uses synthetic tensors).
Writes <out>/report.json after every section (and every end-to-end run). Without CUDA it says so in one
line and exits 1. Sections run in this order; one that would start after --max-minutes is skipped.
1. exactness: the PGT gradient on the GPU under fp16 autocast and a GradScaler, against the float64 closed form.
2. end_to_end: ImageNet-like JPEGs (~500x375, ~110 KiB, generated), ResNet-50 fp16 channels_last batch
   256 with PGT, eager and compiled, fed by: tensors already on the GPU (bare), the synthetic loader,
   the torchvision loader, the nvjpeg loader (and DALI where installed); >= 300 timed steps each after
   warm-up, images/s, the ratio to the synthetic loader, and the CPU cores busy meanwhile (/proc/stat).
   First, nvjpeg_check: the nvjpeg loader's batches against the torchvision loader's (same samples,
   same crops; pixel difference against a mismatched pairing).
3. short_training: pgt-train itself, ResNet-18 with AMP on the generated demo JPEGs; the loss must fall.
4. throughput: ResNet-50 224 px, batch 256, channels_last: training images/s for fp16 and bf16, with and
   without torch.compile, with and without PGT (the loss is outside the compiled model: one compile serves both).
5. dali: DALI's GPU pipeline ('mixed' decode) on the generated JPEGs: images/s (skipped without DALI).
"""
from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, flush=True)


def throughput(args) -> list[dict]:
    from pgt_train import engine, models, optim
    from pgt_train.pgt import pgt_cross_entropy
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    results = []
    images = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(1000, (args.batch,), device=device)
    for compiled in (False, True):
        torch.manual_seed(0)
        net, plain = models.prepare(models.build_model("resnet50", num_classes=1000), device=device,
                                    channels_last=True, sync_bn=False, world_size=1, compile=compiled)
        opt = optim.build_optimizer(plain, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5,
                                    decay_norm_and_bias=False)
        for dtype_name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            for alpha in (None, 0.3):
                loss_fn = F.cross_entropy if alpha is None else (lambda z, y: pgt_cross_entropy(z, y, 0.3))

                def steps(n):
                    for _ in range(n):
                        with engine.autocast(device, dtype):
                            loss = loss_fn(net(images), targets)
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                        opt.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()

                start = time.perf_counter()
                steps(args.warmup)  # cudnn autotune; compile on the first call of each dtype
                warm_s = time.perf_counter() - start
                rates = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    steps(args.steps)
                    rates.append(args.batch * args.steps / (time.perf_counter() - start))
                r = {"model": "resnet50", "batch": args.batch, "dtype": dtype_name, "compile": compiled,
                     "pgt": alpha is not None, "img_per_s_min": min(rates), "img_per_s_median": statistics.median(rates),
                     "img_per_s_max": max(rates), "warmup_s": warm_s}
                log(f"  resnet50 {dtype_name} compile={compiled!s:<5} pgt={r['pgt']!s:<5} "
                    f"{r['img_per_s_median']:8.0f} img/s (min {r['img_per_s_min']:.0f}, max {r['img_per_s_max']:.0f})")
                results.append(r)
        del net, plain, opt
        torch.cuda.empty_cache()
    return results


def exactness() -> dict:
    from pgt_train.pgt import pgt_cross_entropy
    torch.manual_seed(0)
    out = {}
    for n, c in ((8, 10), (256, 1000)):
        z = torch.randn(n, c, device="cuda") * 3
        y = torch.randint(c, (n,), device="cuda")
        leaf = z.clone().half().requires_grad_()  # fp16 logits as autocast produces them
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = pgt_cross_entropy(leaf, y, 0.3)
        scaler.scale(loss).backward()
        grad = leaf.grad.double() / scaler.get_scale()
        z64 = leaf.detach().double()
        p = torch.softmax(0.3 * z64, dim=1)  # p^a / sum p^a
        expected = (p - F.one_hot(y, c).double()) / n
        err = (grad - expected).abs().max().item()
        out[f"N{n}_C{c}_max_abs_err"] = err
        out[f"N{n}_C{c}_ok"] = err <= 2e-3 * expected.abs().max().item() + 1e-7
        log(f"  PGT grad N={n} C={c} fp16+GradScaler(2^16) vs float64 closed form: max abs err {err:.2e}")
    return out


# ---------------------------------------------------------------------------------------------
# End to end: generated ImageNet-like JPEGs through each loader into a ResNet-50 training step

PHOTO_SIZES = ((500, 375), (500, 375), (500, 375), (375, 500), (500, 333), (500, 400))  # ImageNet's usual shapes


def _octaves(rng, h: int, w: int, octaves) -> np.ndarray:
    """Sum of Gaussian noise fields upsampled (bicubic) from cell-sized grids: 1/f-like texture."""
    out = np.zeros((h, w), np.float32)
    for cell, amp in octaves:
        grid = rng.normal(0, amp, (h // cell + 2, w // cell + 2)).astype(np.float32)  # PIL reads float32 as mode F
        out += np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC)) if cell > 1 else grid[:h, :w]
    return out


def photo_like_jpeg(job: tuple[str, int, float]) -> int:
    """Writes one ~500x375 JPEG (quality 90) with photographic statistics, not flat shapes: luminance
    texture at five scales, a slowly varying tint, and 3-8 hard-edged objects carrying their own texture.
    detail 45 (x0.4-1.6 per image) gave 112 KiB on average (79-135) over 20 images. Returns its size."""
    from PIL import ImageDraw, ImageFilter
    path, seed, scale = job
    rng = np.random.default_rng(seed)
    w, h = (max(8, round(v * scale)) for v in PHOTO_SIZES[rng.integers(len(PHOTO_SIZES))])
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
    pixels = np.clip(canvas * (1 - alpha) + objects * alpha, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    Path(path).write_bytes(buf.getvalue())
    return buf.tell()


def imagenet_like_folder(root: Path, *, unique: int, train_entries: int, val_entries: int, classes: int,
                         scale: float = 1.0) -> dict:
    """<root>/pool holds `unique` generated JPEGs (in parallel); train/ and val/ hold hard links to them
    (symlinks where links fail), `train_entries` spread over `classes` folders, so an epoch is long enough
    for warm-up plus the timed steps without generating every file. Reused when already complete."""
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    jobs = [(str(pool / f"{i:06d}.jpg"), i, scale) for i in range(unique)]
    todo = [j for j in jobs if not Path(j[0]).is_file()]
    start = time.perf_counter()
    if todo:
        with multiprocessing.get_context("fork").Pool(min(len(todo), os.cpu_count() or 2)) as workers:
            workers.map(photo_like_jpeg, todo, chunksize=8)
    sizes = [Path(j[0]).stat().st_size for j in jobs]
    for split, n in (("train", train_entries), ("val", val_entries)):
        for i in range(n):
            folder = root / split / f"class_{i % classes:04d}"
            link = folder / f"{split}_{i:07d}.jpg"
            if link.exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target = pool / f"{(i * 7919) % unique:06d}.jpg"  # a prime stride: neighbours are different files
            try:
                os.link(target, link)
            except OSError:
                link.symlink_to(target)
    return {"root": str(root), "unique_files": unique, "train_entries": train_entries, "val_entries": val_entries,
            "classes": classes, "mean_kib": statistics.mean(sizes) / 1024, "min_kib": min(sizes) / 1024,
            "max_kib": max(sizes) / 1024, "generated": len(todo), "seconds": time.perf_counter() - start}


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def cores_busy(before, after) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


class TrainStep:
    """One pgt-train training step outside the engine: ResNet autocast forward, PGT (alpha 0.3) loss,
    GradScaler backward, timm's fused SGD; the same calls as the throughput section."""

    def __init__(self, args, device: torch.device, compiled: bool):
        from pgt_train import models, optim
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = True  # as pgt-train sets it on CUDA
        self.net, _ = models.prepare(models.build_model(args.model, num_classes=1000), device=device,
                                     channels_last=device.type == "cuda", sync_bn=False, world_size=1,
                                     compile=compiled)
        self.opt = optim.build_optimizer(self.net, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5,
                                         decay_norm_and_bias=False)
        self.dtype = torch.float16 if device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is not None)
        self.device = device

    def __call__(self, images, targets) -> None:
        from pgt_train import engine
        from pgt_train.pgt import pgt_cross_entropy
        with engine.autocast(self.device, self.dtype):
            loss = pgt_cross_entropy(self.net(images), targets, 0.3)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)


def e2e_loader(name: str, root: Path, args, device: torch.device, *, batch: int, workers: int, train=True,
               img_size: int | None = None, n_train: int = 0):
    """pgt-train's own loader `name` over the generated folder (or synthetic images), via build_loaders;
    'bare' is one batch of device tensors, repeated."""
    from pgt_train.config import DataConfig
    from pgt_train.data import build_loaders
    from pgt_train.dist import DistInfo
    size = img_size or args.img_size
    if name == "bare":
        images = torch.randn(batch, 3, size, size, device=device)
        layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        images = images.contiguous(memory_format=layout)
        return [(images, torch.randint(1000, (batch,), device=device))] * (args.e2e_warmup + args.e2e_steps)
    cfg = DataConfig(root=None if name == "synthetic" else str(root), loader=name, batch_size=batch, workers=workers,
                     img_size=size, train_size=max(n_train, batch), val_size=batch,
                     dali_device="gpu" if device.type == "cuda" else "cpu")
    train_loader, val_loader = build_loaders(cfg, num_classes=args.e2e_classes, seed=0,
                                             dist=DistInfo(device=device), channels_last=device.type == "cuda")
    return train_loader if train else val_loader


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_run(step: TrainStep, loader, args, device: torch.device) -> dict:
    """Warm-up steps (workers start, prefetch fills, cudnn autotunes), then the timed steps."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    batches = iter(loader)
    for _ in range(args.e2e_warmup):
        step(*next(batches))
    sync(device)
    cpu_before, start, images_seen = cpu_ticks(), time.perf_counter(), 0
    for _ in range(args.e2e_steps):
        images, targets = next(batches)
        step(images, targets)
        images_seen += images.shape[0]
    sync(device)
    seconds = time.perf_counter() - start
    busy = cores_busy(cpu_before, cpu_ticks())
    del batches
    return {"steps": args.e2e_steps, "images": images_seen, "seconds": seconds, "img_per_s": images_seen / seconds,
            "cpu_cores_busy": busy}


def levels(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images back to 0..255 grey levels."""
    from pgt_train.data.torch_loader import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return images.float() * std + mean


def nvjpeg_check(root: Path, args, device: torch.device) -> dict:
    """The nvjpeg loader on `device` against the torchvision loader (PIL, in workers), 2 batches per split.

    Same samples in the same order and the same crop boxes, so targets must be equal and pixels close:
    decoders (nvJPEG vs libjpeg-turbo) and resize kernels differ slightly. The mean difference of a
    mismatched pairing (each image against its batch neighbour) shows what "not the same crop" looks like.
    """
    out, ok = {}, True
    for split in ("train", "val"):
        kw = dict(batch=args.check_batch, workers=2, train=split == "train")
        pairs = zip(e2e_loader("torchvision", root, args, device, **kw), e2e_loader("nvjpeg", root, args, device, **kw))
        same_targets, diff, worst, mismatched = True, [], 0.0, []
        for (reference, ref_targets), (images, targets) in (pair for pair, _ in zip(pairs, range(2))):
            same_targets &= torch.equal(ref_targets.cpu(), targets.cpu())
            a, b = levels(reference), levels(images)
            diff.append((a - b).abs().mean().item())
            worst = max(worst, (a - b).abs().max().item())
            mismatched.append((a - b.roll(1, 0)).abs().mean().item())
        del pairs
        gc.collect()
        mean_diff, wrong = statistics.mean(diff), statistics.mean(mismatched)
        split_ok = same_targets and mean_diff <= 3.0 and mean_diff < 0.25 * wrong
        out[split] = {"same_targets": same_targets, "mean_abs_diff_levels": mean_diff, "max_abs_diff_levels": worst,
                      "mismatched_mean_abs_diff_levels": wrong, "ok": split_ok}
        log(f"  nvjpeg vs torchvision loader, {split}: targets equal {same_targets}, mean |diff| {mean_diff:.2f} "
            f"levels (max {worst:.0f}; a mismatched pairing: {wrong:.1f}) -> {'ok' if split_ok else 'MISMATCH'}")
        ok &= split_ok
    out["ok"] = ok
    return out


def dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def summarise(runs: list[dict], compiled: bool) -> None:
    """The issue's goals, in one line per mode: synthetic loader vs bare loop, each loader vs synthetic."""
    rate = {r["loader"]: r["img_per_s"] for r in runs if r["compile"] == compiled and "img_per_s" in r}
    if "bare" in rate and "synthetic" in rate:
        runs[[r["loader"] for r in runs].index("bare")]["ratio_to_synthetic"] = rate["bare"] / rate["synthetic"]
        parts = [f"synthetic loader {rate['synthetic'] / rate['bare']:.2f} of bare (goal >= 0.95)"]
        parts += [f"{name} {rate[name] / rate['synthetic']:.2f} of synthetic"
                  for name in ("torchvision", "nvjpeg", "dali") if name in rate]
        log(f"  {'compiled' if compiled else 'eager'}: " + "; ".join(parts) + " (nvjpeg goal >= 0.9)")


def end_to_end(args, device: torch.device, save) -> dict:
    n_train = (args.e2e_warmup + args.e2e_steps + 1) * args.batch  # one epoch covers warm-up and timed steps
    root = args.out / "imagenet_like"
    result = {"data": imagenet_like_folder(root, unique=args.e2e_unique, train_entries=n_train,
                                           val_entries=4 * args.check_batch, classes=args.e2e_classes,
                                           scale=args.jpeg_scale)}
    d = result["data"]
    log(f"  {d['unique_files']} generated JPEGs, {d['mean_kib']:.0f} KiB on average ({d['min_kib']:.0f}-"
        f"{d['max_kib']:.0f}), {d['train_entries']} train entries (hard links), {d['seconds']:.0f} s")
    save(result)
    result["nvjpeg_check"] = nvjpeg_check(root, args, device)
    save(result)
    names = ["bare", "synthetic", "torchvision", "nvjpeg"] + (["dali"] if dali_installed() else [])
    result["runs"] = []
    for compiled in args.modes:
        step = TrainStep(args, device, compiled)
        for name in names:
            run = {"loader": name, "compile": compiled, "model": args.model, "batch": args.batch,
                   "workers": 0 if name == "bare" else args.nvjpeg_workers if name == "nvjpeg" else args.workers}
            try:
                loader = e2e_loader(name, root, args, device, batch=args.batch, workers=run["workers"], n_train=n_train)
                run.update(timed_run(step, loader, args, device))
            except Exception as e:  # one loader failing must not hide the others
                run["error"] = f"{type(e).__name__}: {e}"
            loader = None
            gc.collect()  # shuts the DataLoader workers down before the next loader starts its own
            synthetic = next((r for r in result["runs"] if r["loader"] == "synthetic" and r["compile"] == compiled
                              and "img_per_s" in r), None)
            if "img_per_s" in run and (synthetic or name == "synthetic"):
                run["ratio_to_synthetic"] = run["img_per_s"] / (synthetic or run)["img_per_s"]
            mode = "compiled" if compiled else "eager"
            if "error" in run:
                log(f"  {mode:<8} {name:<11} failed: {run['error']}")
            else:
                busy, ratio = run["cpu_cores_busy"], run.get("ratio_to_synthetic")
                log(f"  {mode:<8} {name:<11} {run['img_per_s']:8.0f} img/s  "
                    f"{'  -  ' if ratio is None else f'{ratio:5.2f}'} of synthetic  "
                    f"{'?' if busy is None else f'{busy:4.1f}'} CPU cores busy  ({run['workers']} workers, "
                    f"{run['steps']} steps)")
            result["runs"].append(run)
            save(result)
        summarise(result["runs"], compiled)
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def dali(args, jpeg_root: Path) -> dict:
    """DALI's train pipeline alone on the generated JPEGs: 100 batches after 10 of warm-up."""
    if not dali_installed():
        log("  DALI is not installed here: DALI GPU figure skipped")
        return {"skipped": "nvidia-dali not installed"}
    train = e2e_loader("dali", jpeg_root, args, torch.device("cuda"), batch=args.batch, workers=8)
    train.set_epoch(0)
    batches = iter(train)
    for _ in range(10):
        next(batches)
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    for _ in range(100):
        n += next(batches)[0].shape[0]
    torch.cuda.synchronize()
    rate = n / (time.perf_counter() - start)
    log(f"  DALI gpu ('mixed' decode) on {jpeg_root}: {rate:.0f} img/s")
    return {"img_per_s": rate}


def short_training(out: Path) -> dict:
    run_dir = out / "resnet18_run"
    cmd = [sys.executable, "-m", "pgt_train", "--config", str(REPO / "configs/demo.yaml"), "run.device=cuda",
           "amp.dtype=fp16", "sched.epochs=3", "run.progress=false", f"run.dir={run_dir}",
           f"data.root={out / 'demo_data'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    rows = list(csv.DictReader(open(run_dir / "summary.csv"))) if (run_dir / "summary.csv").is_file() else []
    losses = [float(r["train_loss"]) for r in rows]
    result = {"returncode": proc.returncode, "seconds": time.perf_counter() - start, "train_loss": losses,
              "val_top1": [float(r["val_top1"]) for r in rows],
              "loss_fell": len(losses) >= 2 and losses[-1] < losses[0], "stderr_tail": proc.stderr[-2000:]}
    log(f"  pgt-train resnet18 fp16 on demo JPEGs: rc {proc.returncode}, train loss {losses}, "
        f"val top-1 {result['val_top1']}")
    return result


# Expected minutes on one H100 (end_to_end: ~2 eager + ~1.5 for compiling + ~2.5 compiled, torchvision runs
# being the longest at ~1 min each), used to skip a section that would end after --max-minutes.
SECTION_MINUTES = {"exactness": 0.2, "end_to_end": 6.0, "short_training": 1.0, "throughput": 2.0, "dali": 0.5}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="throughput: timed steps per repeat")
    p.add_argument("--warmup", type=int, default=10, help="throughput: warm-up steps")
    p.add_argument("--repeats", type=int, default=3, help="throughput: repeats")
    p.add_argument("--model", default="resnet50", help="end_to_end: timm model")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--e2e-steps", type=int, default=300, help="end_to_end: timed steps per loader")
    p.add_argument("--e2e-warmup", type=int, default=30, help="end_to_end: steps before the clock starts")
    p.add_argument("--e2e-unique", type=int, default=2000, help="end_to_end: distinct generated JPEGs")
    p.add_argument("--e2e-classes", type=int, default=100)
    p.add_argument("--jpeg-scale", type=float, default=1.0, help="generated JPEG side relative to ~500x375")
    p.add_argument("--check-batch", type=int, default=64, help="nvjpeg_check: batch size")
    p.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)),
                   help="loader workers for synthetic, torchvision and DALI")
    p.add_argument("--nvjpeg-workers", type=int, default=4, help="nvjpeg loader workers (they only read files)")
    p.add_argument("--modes", default="eager,compiled", help="end_to_end: eager and/or compiled")
    p.add_argument("--sections", default=",".join(SECTION_MINUTES))
    p.add_argument("--max-minutes", type=float, default=8.0,
                   help="a section starts only if it should end within this many minutes of the start")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny sizes on the CPU, end_to_end only: executes the code path, measures nothing")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.model, args.img_size, args.batch, args.check_batch = "resnet10t", 32, 8, 4
        args.e2e_steps, args.e2e_warmup, args.e2e_unique, args.e2e_classes, args.jpeg_scale = 2, 1, 12, 4, 0.2
        args.workers, args.nvjpeg_workers, args.modes, args.sections = 1, 1, "eager", "end_to_end"
    args.modes = [{"eager": False, "compiled": True}[m] for m in args.modes.split(",")]
    args.sections = args.sections.split(",")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if args.cpu_smoke:
        device = torch.device("cpu")
        report["cpu_smoke"] = True
        log(f"gpu_check --cpu-smoke (tiny sizes, figures mean nothing), torch {torch.__version__}")
    elif not torch.cuda.is_available():
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        log("gpu_check: CUDA is not available on this machine; nothing measured (report.json says so)")
        return 1
    else:
        device = torch.device("cuda")
        report["gpu"] = torch.cuda.get_device_name()
        log(f"gpu_check on {report['gpu']}, torch {torch.__version__}, {os.cpu_count()} CPU cores")

    def save(name=None, value=None):
        if name:
            report[name] = value
        (args.out / "report.json").write_text(json.dumps(report, indent=2))

    sections = {"exactness": exactness, "end_to_end": lambda: end_to_end(args, device, lambda r: save("end_to_end", r)),
                "short_training": lambda: short_training(args.out), "throughput": lambda: throughput(args),
                "dali": lambda: dali(args, args.out / "imagenet_like")}
    start = time.perf_counter()
    for name in args.sections:
        elapsed = (time.perf_counter() - start) / 60
        if elapsed + SECTION_MINUTES[name] > args.max_minutes:
            save(name, {"skipped": f"would end after --max-minutes {args.max_minutes} ({elapsed:.1f} min gone)"})
            log(f"{name}: skipped, {elapsed:.1f} of {args.max_minutes} minutes gone")
            continue
        log(f"{name}:")
        section_start = time.perf_counter()
        try:
            save(name, sections[name]())
        except Exception as e:  # report what failed and go on: one broken section must not hide the others
            save(name, {"error": f"{type(e).__name__}: {e}"})
            log(f"  {name} failed: {type(e).__name__}: {e}")
        report.setdefault("section_seconds", {})[name] = time.perf_counter() - section_start
        save()
    log(f"gpu_check done in {(time.perf_counter() - start) / 60:.1f} min; {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
