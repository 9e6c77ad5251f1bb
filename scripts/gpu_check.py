"""One GPU check, at most ~8 minutes on one H100: exactness, loaders end to end, throughput, DALI, a real training.

    python scripts/gpu_check.py [--out gpu_check/]      (scripts/gpu_check.sh wraps it and keeps the log)
    python scripts/gpu_check.py --cpu-smoke --out DIR   (tiny sizes on the CPU: runs the end-to-end code path)

Needs only the repo and its pip dependencies: no dataset (it generates JPEGs, uses synthetic tensors).
Writes <out>/report.json after every section (and every end-to-end run). Without CUDA it says so in one
line and exits 1. Sections run in this order; one that would start after --max-minutes is skipped.
1. exactness: the PGT gradient on the GPU under fp16 autocast and a GradScaler, against the float64 closed form.
   skipped_step: an fp16 overflow step with fused SGD leaves parameters and momentum buffers unchanged.
2. end_to_end: ImageNet-like JPEGs (~500x375, ~110 KiB, generated), ResNet-50 fp16 channels_last batch
   256 with PGT, eager and compiled: the bare loop (benchmarking.bare_steps) on tensors already on the GPU
   as the reference, then pgt-train's own engine.train_step fed by the synthetic loader, the
   torchvision loader (its CPU tensor path, data/cpu_crop.py; in eager mode also `torchvision:pil`, the PIL
   path it replaced, at half the steps), the nvjpeg loader (and DALI where installed); 200 timed steps each after
   warm-up, images/s, the ratio to the synthetic loader, and the CPU cores busy meanwhile (/proc/stat).
   First, nvjpeg_check: the nvjpeg loader's batches against the torchvision loader's (same samples,
   same crops; pixel difference against a mismatched pairing).
3. dali: DALI's GPU pipeline ('mixed' decode) on the generated JPEGs: images/s (skipped without DALI).
4. throughput: ResNet-50 224 px, batch 256, channels_last: training images/s for fp16 and bf16, with and
   without torch.compile, with and without PGT (the loss is outside the compiled model: one compile serves both).
5. short_training: pgt-train itself, ResNet-18 with AMP on the generated demo JPEGs; the loss must fall.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pgt_train import models, optim
from pgt_train.benchmarking import (PHOTO_SHAPES, bare_steps, engine_steps, images_per_second, machine_banner,
                                    make_jpeg_folder, spread, timed)
from pgt_train.pgt import pgt_cross_entropy
from pgt_train.trainer import AMP_DTYPES
from pgt_train.writers import read_summary

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, flush=True)


def throughput(args) -> list[dict]:
    """The bare loop (benchmarking.bare_steps) on one batch already on the GPU; loss outside the compiled model."""
    device = torch.device("cuda")
    results = []
    batch = (torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last),
             torch.randint(1000, (args.batch,), device=device))
    for compiled in (False, True):
        training = Training("resnet50", device, compiled)
        for dtype_name in ("fp16", "bf16"):
            training.use_dtype(dtype_name)
            for pgt in (False, True):
                if time.perf_counter() > args.deadline:
                    log(f"  resnet50 {dtype_name} compile={compiled} pgt={pgt}: skipped, --max-minutes reached")
                    continue
                loss_fn = Training.pgt_loss if pgt else F.cross_entropy
                # warm-up: cudnn autotune; compile on the first call of each dtype
                warm_s = timed(lambda: training.bare(batch, args.warmup, loss_fn), device)
                rates = [args.batch * args.steps / timed(lambda: training.bare(batch, args.steps, loss_fn), device)
                         for _ in range(args.repeats)]
                low, median, high = spread(rates)
                r = {"model": "resnet50", "batch": args.batch, "dtype": dtype_name, "compile": compiled, "pgt": pgt,
                     "img_per_s_min": low, "img_per_s_median": median, "img_per_s_max": high, "warmup_s": warm_s}
                log(f"  resnet50 {dtype_name} compile={compiled!s:<5} pgt={pgt!s:<5} "
                    f"{median:8.0f} img/s (min {low:.0f}, max {high:.0f})")
                results.append(r)
        del training
        torch.cuda.empty_cache()
    return results


def exactness() -> dict:
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

def skipped_step(device: torch.device) -> dict:
    """An fp16 overflow step with fused SGD + GradScaler must change nothing: parameters and momentum buffers
    as before it (a report against torch 2.11 says fused SGD advanced momentum on skipped steps)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 10)
    x, y = torch.randn(8, 16, device=device), torch.randint(0, 4, (8,), device=device)

    def step(overflow: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16):
            loss = F.cross_entropy(model(x), y) * (float("inf") if overflow else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step(overflow=False)  # creates the momentum buffers
    params = [p.detach().clone() for p in model.parameters()]
    momenta = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    scale = scaler.get_scale()
    step(overflow=True)
    same_params = all(torch.equal(a, p) for a, p in zip(params, model.parameters()))
    same_momenta = all(torch.equal(a, opt.state[p]["momentum_buffer"]) for a, p in zip(momenta, model.parameters()))
    result = {"ok": same_params and same_momenta and scaler.get_scale() == scale / 2, "params_unchanged": same_params,
              "momentum_unchanged": same_momenta, "scale_before": scale, "scale_after": scaler.get_scale()}
    log(f"  fused SGD, fp16 overflow step skipped: params unchanged {same_params}, momentum unchanged "
        f"{same_momenta}, scale {scale:g} -> {scaler.get_scale():g}: {'ok' if result['ok'] else 'FAILED'}")
    return result


def imagenet_like_folder(root: Path, *, unique: int, train_entries: int, val_entries: int, classes: int,
                         scale: float = 1.0) -> dict:
    """<root>/pool holds `unique` generated JPEGs (benchmarking.make_jpeg_folder's photographic texture, ImageNet's
    usual shapes times `scale`, quality 90, one process per core); train/ and val/ hold hard links to them
    (symlinks where links fail), `train_entries` spread over `classes` folders, so an epoch is long enough
    for warm-up plus the timed steps without generating every file. Reused when already complete."""
    files = [root / "pool" / "train" / "all" / f"train_{i}.jpg" for i in range(unique)]
    start, generate = time.perf_counter(), not all(f.is_file() for f in files)
    if generate and (root / "pool").exists():  # nothing is overwritten
        raise FileExistsError(f"{root / 'pool'} holds an incomplete set of generated JPEGs (an interrupted run?): "
                              f"delete that folder or choose another --out")
    if generate:
        shapes = [tuple(max(8, round(side * scale)) for side in shape) for shape in PHOTO_SHAPES]
        make_jpeg_folder(root / "pool", classes=["all"], train=unique, val=0, texture="photo", sides=shapes,
                         quality=90, processes=os.cpu_count() or 2)
    sizes = [f.stat().st_size for f in files]
    for split, n in (("train", train_entries), ("val", val_entries)):
        for i in range(n):
            folder = root / split / f"class_{i % classes:04d}"
            link = folder / f"{split}_{i:07d}.jpg"
            if link.exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target = files[(i * 7919) % unique]  # a prime stride: neighbours are different files
            try:
                os.link(target, link)
            except OSError:
                link.symlink_to(target)
    return {"root": str(root), "unique_files": unique, "train_entries": train_entries, "val_entries": val_entries,
            "classes": classes, "mean_kib": statistics.mean(sizes) / 1024, "min_kib": min(sizes) / 1024,
            "max_kib": max(sizes) / 1024, "generated": unique if generate else 0,
            "seconds": time.perf_counter() - start}


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


class Training:
    """A model as pgt-train prepares it (channels_last on CUDA, optionally compiled), timm's fused SGD, the
    per-step scheduler, a GradScaler and an autocast dtype (fp32 on the CPU): trained by the bare loop or by
    pgt-train's engine, with the PGT loss (alpha 0.3) unless told otherwise."""

    def __init__(self, model_name: str, device: torch.device, compiled: bool, dtype_name: str = "fp16"):
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = True  # as pgt-train sets it on CUDA
        self.net, plain = models.prepare(models.build_model(model_name, num_classes=1000), device=device,
                                         channels_last=device.type == "cuda", sync_bn=False, world_size=1,
                                         compile=compiled)
        self.opt = optim.build_optimizer(plain, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5,
                                         decay_norm_and_bias=False)
        self.scheduler = optim.build_scheduler(self.opt, name="cosine", epochs=10**6, warmup_epochs=0, warmup_lr=0.0,
                                               milestones=(), gamma=0.1, min_lr=0.0, steps_per_epoch=1)
        self.device, self.step = device, 0
        self.use_dtype(dtype_name)

    def use_dtype(self, name: str) -> None:
        self.dtype = AMP_DTYPES[name] if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    @staticmethod
    def pgt_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return pgt_cross_entropy(logits, targets, 0.3)

    def bare(self, batch, steps: int, loss_fn=None) -> int:
        """`steps` steps of the bare loop on one (images, targets) batch; returns the images trained."""
        bare_steps(self.net, self.opt, self.scaler, [batch], loss_fn or self.pgt_loss, steps=steps,
                   device=self.device, amp_dtype=self.dtype)
        return steps * batch[0].shape[0]

    def engine(self, batches, steps: int) -> int:
        """`steps` steps of engine.train_step on the next batches of the iterator `batches` (metrics and
        scheduler as in a run); returns the images trained."""
        images = engine_steps(self.net, batches, loss_fn=self.pgt_loss, optimizer=self.opt, scheduler=self.scheduler,
                              scaler=self.scaler, amp_dtype=self.dtype, steps=steps, start_step=self.step)
        self.step += steps
        return images


def e2e_loader(name: str, root: Path, args, device: torch.device, *, batch: int, workers: int, train=True,
               img_size: int | None = None, n_train: int = 0):
    """pgt-train's own loader `name` over the generated folder (or synthetic images), via build_loaders;
    'bare' is one (images, targets) batch of device tensors."""
    from pgt_train.config import DataConfig
    from pgt_train.data import build_loaders
    from pgt_train.dist import DistInfo
    size = img_size or args.img_size
    if name == "bare":
        images = torch.randn(batch, 3, size, size, device=device)
        layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        images = images.contiguous(memory_format=layout)
        return images, torch.randint(1000, (batch,), device=device)
    name, _, variant = name.partition(":")  # nvjpeg:<decoder backend> (data/decoders.py); torchvision:pil
    cfg = DataConfig(root=None if name == "synthetic" else str(root), loader=name, batch_size=batch, workers=workers,
                     img_size=size, train_size=max(n_train, batch), val_size=batch,
                     dali_device="gpu" if device.type == "cuda" else "cpu")
    train_path = variant if name == "torchvision" and variant else "auto"  # pil: the PIL path it replaced
    train_loader, val_loader = build_loaders(cfg, num_classes=args.e2e_classes, seed=0, train_path=train_path,
                                             dist=DistInfo(device=device), channels_last=device.type == "cuda")
    for loader in (train_loader, val_loader) if name == "nvjpeg" and variant else ():
        from pgt_train.data.decoders import get_decoder
        loader.loader.decoder.decode_files = get_decoder(variant)  # NvjpegLoader's BatchDecoder
    return train_loader if train else val_loader


def timed_run(training: Training, name: str, loader, args, device: torch.device) -> dict:
    """Warm-up steps (workers start, prefetch fills, cudnn autotunes, compile), then the timed steps: the bare
    loop on one device batch for 'bare', pgt-train's engine drawing from the loader otherwise."""
    if name == "bare":
        def train(steps):
            return training.bare(loader, steps)
    else:
        loader.set_epoch(0)
        batches = iter(loader)

        def train(steps):
            return training.engine(batches, steps)
    train(args.e2e_warmup)
    steps = max(2, args.e2e_steps // 2) if name == "torchvision:pil" else args.e2e_steps  # a reference: fewer
    cpu_before, images_seen = cpu_ticks(), []
    seconds = timed(lambda: images_seen.append(train(steps)), device)
    busy = cores_busy(cpu_before, cpu_ticks())
    return {"steps": steps, "images": images_seen[0], "seconds": seconds,
            "img_per_s": images_seen[0] / seconds, "cpu_cores_busy": busy}


def levels(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images back to 0..255 grey levels."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device).view(1, 3, 1, 1) * 255
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
                  for name in rate if name not in ("bare", "synthetic")]
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
    from pgt_train.data.decoders import available_backends
    backends = [f"nvjpeg:{b}" for b in available_backends() if b != "pil"]  # pil: the CPU fallback, not timed
    names = ["bare", "synthetic", "torchvision", "torchvision:pil"] + backends + (["dali"] if dali_installed() else [])
    result["runs"] = []
    for compiled in args.modes:
        training = Training(args.model, device, compiled)
        # the CPU train path against the PIL path it replaced: a CPU figure, timed once (eager), at half the steps
        for name in (n for n in names if not (compiled and n == "torchvision:pil")):
            if time.perf_counter() > args.deadline:
                result["runs"].append({"loader": name, "compile": compiled, "skipped": "--max-minutes reached"})
                log(f"  {'compiled' if compiled else 'eager':<8} {name:<11} skipped: --max-minutes reached")
                continue
            run = {"loader": name, "compile": compiled, "model": args.model, "batch": args.batch,
                   "loop": "bare" if name == "bare" else "engine",
                   "workers": (0 if name == "bare" else args.nvjpeg_workers if name.startswith("nvjpeg")
                               else args.workers)}
            try:
                loader = e2e_loader(name, root, args, device, batch=args.batch, workers=run["workers"], n_train=n_train)
                run.update(timed_run(training, name, loader, args, device))
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
                    f"{run['steps']} steps, {run['loop']} loop)")
            result["runs"].append(run)
            save(result)
        summarise(result["runs"], compiled)
        del training
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
    for _ in itertools.islice(batches, 10):  # pipeline build, prefetch
        pass
    rate = images_per_second(itertools.islice(batches, 100), torch.device("cuda"))  # the same epoch goes on
    log(f"  DALI gpu ('mixed' decode) on {jpeg_root}: {rate:.0f} img/s")
    return {"img_per_s": rate}


def short_training(out: Path) -> dict:
    run_dir = out / "resnet18_run"
    cmd = [sys.executable, "-m", "pgt_train", "--config", str(REPO / "configs/demo.yaml"), "run.device=cuda",
           "amp.dtype=fp16", "sched.epochs=3", "run.progress=false", f"run.dir={run_dir}",
           f"data.root={out / 'demo_data'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    rows = read_summary(run_dir / "summary.csv")
    losses = [float(r["train_loss"]) for r in rows]
    result = {"returncode": proc.returncode, "seconds": time.perf_counter() - start, "train_loss": losses,
              "val_top1": [float(r["val_top1"]) for r in rows],
              "loss_fell": len(losses) >= 2 and losses[-1] < losses[0], "stderr_tail": proc.stderr[-2000:]}
    log(f"  pgt-train resnet18 fp16 on demo JPEGs: rc {proc.returncode}, train loss {losses}, "
        f"val top-1 {result['val_top1']}")
    return result


# Expected minutes on one H100 (estimates: docs/speed.md says which were measured), in the order they run: the
# loaders end to end first (end_to_end at 200 timed steps a loader: ~1.5 eager + ~1.5 for compiling + ~1.5
# compiled, the torchvision runs the longest at ~40 s each, the PIL path's reference ~0.3 at 100 steps, eager
# only), the extras last (throughput at one repeat of each setting). Together they fit the default
# --max-minutes (tests/test_scripts.py); a section that would end after it is skipped, and end_to_end and
# throughput also start no run in their last half minute (args.deadline).
SECTION_MINUTES = {"exactness": 0.2, "skipped_step": 0.1, "end_to_end": 4.8, "dali": 0.5, "throughput": 1.2,
                   "short_training": 1.0}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="throughput: timed steps per repeat")
    p.add_argument("--warmup", type=int, default=10, help="throughput: warm-up steps")
    p.add_argument("--repeats", type=int, default=1, help="throughput: repeats")
    p.add_argument("--model", default="resnet50", help="end_to_end: timm model")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--e2e-steps", type=int, default=200, help="end_to_end: timed steps per loader")
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
                   help="tiny sizes on the CPU, skipped_step and end_to_end only: executes the code path, "
                        "measures nothing")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.model, args.img_size, args.batch, args.check_batch = "resnet10t", 32, 8, 4
        args.e2e_steps, args.e2e_warmup, args.e2e_unique, args.e2e_classes, args.jpeg_scale = 2, 1, 12, 4, 0.2
        args.workers, args.nvjpeg_workers, args.modes, args.sections = 1, 1, "eager", "skipped_step,end_to_end"
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
    elif not torch.cuda.is_available():
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        log("gpu_check: CUDA is not available on this machine; nothing measured (report.json says so)")
        return 1
    else:
        device = torch.device("cuda")
        report["gpu"] = torch.cuda.get_device_name()
    report["machine"] = machine_banner(device)
    log(f"gpu_check{' --cpu-smoke (tiny sizes, figures mean nothing)' if args.cpu_smoke else ''}\n{report['machine']}")

    def save(name=None, value=None):
        if name:
            report[name] = value
        (args.out / "report.json").write_text(json.dumps(report, indent=2))

    sections = {"exactness": exactness, "skipped_step": lambda: skipped_step(device),
                "end_to_end": lambda: end_to_end(args, device, lambda r: save("end_to_end", r)),
                "short_training": lambda: short_training(args.out), "throughput": lambda: throughput(args),
                "dali": lambda: dali(args, args.out / "imagenet_like")}
    start = time.perf_counter()
    args.deadline = start + 60 * args.max_minutes - 30  # no new timed run in the last half minute
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
