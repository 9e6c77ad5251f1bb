#!/usr/bin/env python
"""Runs every row of one paper table (or one alpha grid) from configs/paper/index.yaml, one after another.

    python scripts/reproduce.py --table 1 --gpus 4 --data /data/imagenet [--runs-root runs/paper] [--dry-run]
    python scripts/reproduce.py --grid resnet18 --gpus 4 --data /data/imagenet

Each row trains in its own run folder (the recipe's run.dir, moved under --runs-root) with --resume auto, so
rerunning the same command skips finished rows, resumes the interrupted one and starts the rest.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from pgt_train import config

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "configs" / "paper" / "index.yaml"
RECIPE_RUNS_ROOT = Path("runs/paper")  # every recipe's run.dir lies under this; --runs-root replaces it


def fail(message: str) -> None:
    print(f"reproduce: error: {message}", file=sys.stderr)
    sys.exit(2)


def rows_of(index: dict, table: str | None, grid: str | None) -> list[tuple[str, str, list[str]]]:
    """(label, recipe path relative to the repo, overrides) for each run of the table or grid."""
    if table is not None:
        rows = index.get(f"table{table}")
        if rows is None:
            fail(f"no table '{table}' in {INDEX.relative_to(ROOT)} (valid: 1, 2, 3)")
        return [(" ".join(f"{k}={'null' if v is None else v}" for k, v in r.items() if k != "recipe"), r["recipe"], [])
                for r in rows]
    spec = index["grids"].get(grid)
    if spec is None:
        fail(f"no grid '{grid}' in {INDEX.relative_to(ROOT)} (valid: {', '.join(index['grids'])})")
    return [(f"alpha={a}", spec["recipe"], [*spec["overrides"], f"pgt.alpha={a}", f"run.dir={spec['run_dir']}/alpha{a}"])
            for a in spec["alphas"]]


def finished(run_dir: Path, epochs: int) -> bool:
    """summary.csv counts epochs from 1, so a run is done once it has the row of epoch == sched.epochs."""
    summary = run_dir / "summary.csv"
    if not summary.is_file():
        return False
    with open(summary, newline="") as f:
        return any(int(r["epoch"]) == epochs for r in csv.DictReader(f))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Reproduce a table (or an alpha grid) of the PGT paper, row by row.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", help="1, 2 or 3")
    what.add_argument("--grid", help="resnet18 or resnet50 (Figs. 10-11, 50 epochs)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (torchrun when > 1)")
    p.add_argument("--data", help="ImageNet folder with train/ and val/ (default: each recipe's data.root)")
    p.add_argument("--runs-root", default=str(RECIPE_RUNS_ROOT), help="where the run folders go (default: runs/paper)")
    p.add_argument("--dry-run", action="store_true", help="print each command and what it would do, run nothing")
    args = p.parse_args(argv)
    if args.gpus < 1:
        fail(f"--gpus must be >= 1, got {args.gpus}")

    index = yaml.safe_load(INDEX.read_text())
    launcher = [sys.executable, "-m"] if args.gpus == 1 else ["torchrun", f"--nproc_per_node={args.gpus}", "-m"]
    plan = []
    for label, recipe, overrides in rows_of(index, args.table, args.grid):
        # Resolve first: a broken recipe stops us before the first run, not hours into the table.
        cfg = config.load(ROOT / recipe, overrides)
        run_dir = Path(args.runs_root) / Path(cfg.run.dir).relative_to(RECIPE_RUNS_ROOT)
        overrides = [o for o in overrides if not o.startswith("run.dir=")] + [f"run.dir={run_dir}"]
        if args.data:
            overrides.append(f"data.root={args.data}")
        data_root = args.data or cfg.data.root
        if not args.dry_run and not Path(data_root).is_dir():
            fail(f"data folder not found: {data_root} (pass --data /path/to/imagenet)")
        status = ("skip" if finished(run_dir, cfg.sched.epochs) else
                  "resume" if (run_dir / "last.pth").is_file() else "start")
        cmd = [*launcher, "pgt_train", "--config", os.path.relpath(ROOT / recipe), *overrides, "--resume", "auto"]
        plan.append((label, status, run_dir, cmd))

    for i, (label, status, run_dir, cmd) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {label}: {status} {run_dir}\n    {shlex.join(cmd)}", flush=True)
        if args.dry_run or status == "skip":
            continue
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            print(f"reproduce: row {i} ({label}) failed with exit code {rc}; stopping. Rerun the same command to "
                  f"resume it (finished rows are skipped).", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except config.ConfigError as e:
        fail(str(e))
