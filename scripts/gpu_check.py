"""One GPU check, at most ~8 minutes on one H100: throughput, exactness, DALI, and a short real training.

    python scripts/gpu_check.py [--out gpu_check/]      (scripts/gpu_check.sh wraps it and keeps the log)

Needs only the repo and its pip dependencies: no dataset (it generates JPEGs, uses synthetic tensors).
Writes <out>/report.json. Without CUDA it says so in one line and exits 1.
1. ResNet-50 224 px, batch 256, channels_last: training images/s for fp16 and bf16, with and without
   torch.compile, with and without PGT (the loss is outside the compiled model, so one compile serves both).
2. The PGT gradient on the GPU under fp16 autocast and a GradScaler, against the float64 closed form.
3. DALI's GPU pipeline ('mixed' decode) on generated ImageNet-sized JPEGs: images/s (skipped without DALI).
4. pgt-train itself: ResNet-18 with AMP on the generated demo JPEGs for 100+ steps; the loss must fall.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def dali(args, jpeg_root: Path) -> dict:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        log("  DALI is not installed here: DALI GPU figure skipped")
        return {"skipped": "nvidia-dali not installed"}
    from pgt_train import config
    from pgt_train.data import build_loaders
    from pgt_train.dist import DistInfo
    cfg = config.load(None, [f"data.root={jpeg_root}", "data.loader=dali", "data.dali_device=gpu",
                             f"data.batch_size={args.batch}", "data.workers=8", "model.num_classes=10"]).data
    train, _ = build_loaders(cfg, num_classes=10, seed=0, dist=DistInfo(device=torch.device("cuda")),
                             channels_last=True)
    rates = []
    for epoch in range(3):
        train.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for images, _ in train:
            n += images.shape[0]
        torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - start))
    log(f"  DALI gpu ('mixed' decode) on {jpeg_root}: {statistics.median(rates[1:]):.0f} img/s")
    return {"img_per_s": rates[1:]}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        log("gpu_check: CUDA is not available on this machine; nothing measured (report.json says so)")
        return 1
    report["gpu"] = torch.cuda.get_device_name()
    log(f"gpu_check on {report['gpu']}, torch {torch.__version__}")
    sections = (("exactness", exactness), ("throughput", lambda: throughput(args)),
                ("dali", lambda: dali(args, jpegs(args.out))), ("short_training", lambda: short_training(args.out)))
    for name, fn in sections:
        log(f"{name}:")
        try:
            report[name] = fn()
        except Exception as e:  # report what failed and go on: one broken section must not hide the others
            report[name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"  {name} failed: {type(e).__name__}: {e}")
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
    return 0


def jpegs(out: Path) -> Path:
    """1,000 generated 448 px JPEGs (ImageNet-like decode cost) for the DALI figure."""
    from pgt_train.data.demo import make_demo_dataset
    return make_demo_dataset(out / "jpegs", num_classes=10, train_per_class=100, val_per_class=2, image_size=448,
                             workers=os.cpu_count() or 2)


if __name__ == "__main__":
    sys.exit(main())
