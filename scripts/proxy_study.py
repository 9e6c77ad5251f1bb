#!/usr/bin/env python
"""The paper's comparison at CPU scale: baseline vs PGT, BN and non-BN ResNet-18, several seeds, then pgt-report.

    python scripts/proxy_study.py [--recipes NAME ...] [--seeds 0 1 2] [--runs-root runs/proxy] [--out report/proxy]
                                  [--ablation temperature] [--dry-run] [key=value ...]

Runs every recipe in configs/proxy/ (except base.yaml; or only those named by --recipes) once per seed, one
after another, on the generated demo dataset (written once, shared by all runs), each in
<runs-root>/<recipe>/seed<k> with --resume auto, so rerunning skips finished runs. Then writes the report
(mean ± std over seeds) with pgt-report. Trailing key=value overrides apply to every run (e.g. a smaller proxy).
--ablation temperature runs, beside each PGT recipe, its arms (b)-(d) (pgt_train/ablation.py: the twin, the
temperature alone, the step size alone) in <runs-root>/<recipe>-<arm>/seed<k>; an arm the settings refuse is
left out with one line saying why.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pgt_train import ablation, config
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
    p.add_argument("--ablation", choices=ablation.ABLATIONS, help="add the arms (b)-(d) beside each PGT recipe")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o or o.startswith("-")]
    if bad:
        print(f"proxy_study: '{bad[0]}' is not a key=value override (options go before the overrides)",
              file=sys.stderr)
        return 2
    recipes = sorted(r for r in PROXY.glob("*.yaml") if r.name != "base.yaml")
    if args.recipes:
        unknown = sorted(set(args.recipes) - {r.stem for r in recipes})
        if unknown:
            print(f"proxy_study: --recipes: no recipe {', '.join(unknown)} in {PROXY}; choose from "
                  f"{', '.join(r.stem for r in recipes)}", file=sys.stderr)
            return 2
        recipes = [r for r in recipes if r.stem in args.recipes]
    try:
        plan = [run for recipe in recipes for run in recipe_runs(recipe, args.overrides, args.ablation)]
    except config.ConfigError as e:
        print(f"proxy_study: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    for seed in args.seeds:  # seed-major: a partial study still has every recipe at the first seeds
        for name, recipe, overrides in plan:
            if run_one(args, name, recipe, [*overrides, f"seed={seed}"], seed) != 0:
                return 1
    report = [sys.executable, "-m", "pgt_train.report", str(args.runs_root), "--out", str(args.out)]
    print(shlex.join(report), flush=True)
    if not args.dry_run:
        subprocess.run(report, cwd=ROOT, check=True)
        print(f"proxy study done in {(time.perf_counter() - start) / 60:.1f} min; see {args.out / 'report.md'}")
    return 0


def recipe_runs(recipe: Path, overrides: list[str], ablation_name: str | None) -> list[tuple[str, Path, list[str]]]:
    """(name, recipe, overrides) of the recipe, and with --ablation of its arms; a refused arm: one line, left out."""
    runs = [(recipe.stem, recipe, list(overrides))]
    if ablation_name is None:
        return runs
    settings = config.flat_settings(config.load(recipe, overrides))
    for arm in ablation.arms(settings)[1:]:  # (a) is the recipe itself
        arm_overrides = [*overrides, *arm.overrides]
        try:
            config.load(recipe, arm_overrides)
        except config.ConfigError as e:
            print(f"proxy_study: {recipe.stem} ({arm.letter}) left out: {e}", flush=True)
            continue
        runs.append((recipe.stem + arm.suffix, recipe, arm_overrides))
    return runs


def run_one(args, name: str, recipe: Path, overrides: list[str], seed: int) -> int:
    run_dir = args.runs_root / name / f"seed{seed}"
    overrides = [*overrides, f"run.dir={run_dir}", "run.progress=false"]
    cfg = config.load(recipe, overrides)
    cmd = [sys.executable, "-m", "pgt_train", "--config", str(recipe.relative_to(ROOT)), *overrides, "--resume", "auto"]
    status = "skip" if run_finished(run_dir, cfg.sched.epochs) else "run"
    print(f"{name} seed {seed}: {status}  {shlex.join(cmd)}", flush=True)
    if args.dry_run or status == "skip":
        return 0
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        print(f"proxy_study: {name} seed {seed} failed; rerun to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_quietly_on_closed_pipe(main)  # `--dry-run | head -1`: exit 141, no traceback
