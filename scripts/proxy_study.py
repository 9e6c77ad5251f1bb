#!/usr/bin/env python
"""The paper's comparison at CPU scale: baseline vs PGT, BN and non-BN ResNet-18, several seeds, then pgt-report.

    python scripts/proxy_study.py [--recipes NAME ...] [--seeds 0 1 2] [--runs-root runs/proxy] [--out report/proxy]
                                  [--dry-run]

Runs every recipe in configs/proxy/ (except base.yaml; or only those named by --recipes) once per seed, one
after another, on the generated demo dataset (written once, shared by all runs), each in
<runs-root>/<recipe>/seed<k> with --resume auto, so rerunning skips finished runs. Then writes the report
(mean ± std over seeds) with pgt-report.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pgt_train import config
from pgt_train.errors import exit_quietly_on_closed_pipe
from pgt_train.writers import run_finished

ROOT = Path(__file__).resolve().parents[1]
PROXY = ROOT / "configs" / "proxy"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", metavar="NAME",
                   help="run only these recipes of configs/proxy/ (file names without .yaml); default: all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs-root", type=Path, default=Path("runs/proxy"))
    p.add_argument("--out", type=Path, default=Path("report/proxy"))
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    recipes = sorted(r for r in PROXY.glob("*.yaml") if r.name != "base.yaml")
    if args.recipes:
        unknown = sorted(set(args.recipes) - {r.stem for r in recipes})
        if unknown:
            print(f"proxy_study: --recipes: no recipe {', '.join(unknown)} in {PROXY}; choose from "
                  f"{', '.join(r.stem for r in recipes)}", file=sys.stderr)
            return 2
        recipes = [r for r in recipes if r.stem in args.recipes]
    start = time.perf_counter()
    for seed in args.seeds:  # seed-major: a partial study still has every recipe at the first seeds
        for recipe in recipes:
            run_dir = args.runs_root / recipe.stem / f"seed{seed}"
            overrides = [f"seed={seed}", f"run.dir={run_dir}", "run.progress=false"]
            cfg = config.load(recipe, overrides)
            cmd = [sys.executable, "-m", "pgt_train", "--config", str(recipe.relative_to(ROOT)), *overrides,
                   "--resume", "auto"]
            status = "skip" if run_finished(run_dir, cfg.sched.epochs) else "run"
            print(f"{recipe.stem} seed {seed}: {status}  {shlex.join(cmd)}", flush=True)
            if args.dry_run or status == "skip":
                continue
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                print(f"proxy_study: {recipe.stem} seed {seed} failed; rerun to resume", file=sys.stderr)
                return 1
    report = [sys.executable, "-m", "pgt_train.report", str(args.runs_root), "--out", str(args.out)]
    print(shlex.join(report), flush=True)
    if not args.dry_run:
        subprocess.run(report, cwd=ROOT, check=True)
        print(f"proxy study done in {(time.perf_counter() - start) / 60:.1f} min; see {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    exit_quietly_on_closed_pipe(main)  # `--dry-run | head -1`: exit 141, no traceback
