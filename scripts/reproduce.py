#!/usr/bin/env python
"""Runs every row of one paper table (or one alpha grid) from configs/paper/index.yaml, one after another.

    python scripts/reproduce.py --table 1 --gpus 4 --data /data/imagenet [--runs-root runs/paper] [--dry-run]
    python scripts/reproduce.py --grid resnet18 --gpus 4 --data /data/imagenet
    python scripts/reproduce.py --table 1 --reading code [--impl exact] ...   # the authors' code, not the paper's words
    python scripts/reproduce.py --figure 4c --gpus 4 --data /data/imagenet    # Fig. 4(c): PGT 60 epochs vs baseline 100
    python scripts/reproduce.py --grid cifar10_resnet20 --data /data/cifar10  # Fig. 13 (ImageFolder layout, 32 px)
    python scripts/reproduce.py --table 1 --reading code --hook-baselines      # baselines with the hook at α 1
    python scripts/reproduce.py --table 1 --reading code --step-epochs 90      # step rows stop at 90 epochs

Each row trains in its own run folder with --resume auto, so rerunning the same command skips finished rows,
resumes the interrupted one and starts the rest: <runs-root>/<reading>/<impl>/<the recipe's run.dir below
runs/paper>, where <impl> is `nopgt` for rows without PGT (one baseline per reading, shared by every --impl).
--reading picks configs/reading/<reading>.yaml (README, "Two readings"); --impl overrides pgt.impl (default:
the reading's own, exact for the paper and authors for the code). Several GPUs: python -m torch.distributed.run.
Output to a closed pipe (`--dry-run | head -1`) stops quietly with exit status 141, as SIGPIPE would.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from pgt_train import config
from pgt_train.errors import exit_quietly_on_closed_pipe
from pgt_train.pgt import IMPLS as PGT_IMPLS
from pgt_train.writers import run_finished

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "configs" / "paper" / "index.yaml"
RECIPE_RUNS_ROOT = Path("runs/paper")  # every recipe's run.dir lies under this; --runs-root replaces it


def fail(message: str) -> None:
    print(f"reproduce: error: {message}", file=sys.stderr)
    sys.exit(2)


def rows_of(index: dict, table: str | None, grid: str | None, figure: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(label, recipe path relative to the repo, overrides) for each run of the table, grid or figure."""
    if figure is not None:
        rows = index["figures"].get(f"fig{figure}")
        if rows is None:
            fail(f"no figure '{figure}' in {INDEX.relative_to(ROOT)} (valid: "
                 f"{', '.join(k.removeprefix('fig') for k in index['figures'])})")
        return [(r["label"], r["recipe"], []) for r in rows]
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Reproduce a table (or an alpha grid) of the PGT paper, row by row.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", help="1, 2 or 3")
    what.add_argument("--grid", help="resnet18 or resnet50 (Figs. 10-11, 50 epochs), cifar10_resnet20 (Fig. 13)")
    what.add_argument("--figure", help="4c (Fig. 4(c): PGT ResNet-50 in 60 epochs against the 100-epoch baseline)")
    p.add_argument("--reading", default="paper", help="paper (default) or code: configs/reading/<reading>.yaml")
    p.add_argument("--impl", help=f"pgt.impl of the PGT rows: {', '.join(PGT_IMPLS)} (default: the reading's)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (python -m torch.distributed.run when > 1)")
    p.add_argument("--data", help="ImageNet folder with train/ and val/ (default: each recipe's data.root)")
    p.add_argument("--runs-root", default=str(RECIPE_RUNS_ROOT), help="where the run folders go (default: runs/paper)")
    p.add_argument("--hook-baselines", action="store_true",
                   help="train the baseline rows with PGT at alpha 1 (the authors' checkpoints say alpha-1.0; their "
                        "hook runs for any nonzero --modify-softmax, timm/models/resnet.py:861), with the reading's "
                        "pgt.impl or --impl; exact at alpha 1 is plain cross-entropy, so it needs authors or official")
    p.add_argument("--step-epochs", type=int, help="train step-schedule rows this many epochs (90: the authors' "
                   "factory adds no cooldown to step, scheduler_factory.py:58-69); run folders get a -<N>ep suffix")
    p.add_argument("--dry-run", action="store_true", help="print each command and what it would do, run nothing")
    args = p.parse_args(argv)
    if args.gpus < 1:
        fail(f"--gpus must be >= 1, got {args.gpus}")
    if args.impl is not None and args.impl not in PGT_IMPLS:
        fail(f"--impl: '{args.impl}' is not one of: {', '.join(PGT_IMPLS)}")
    if args.step_epochs is not None and args.step_epochs < 1:
        fail(f"--step-epochs must be >= 1, got {args.step_epochs}")
    return args


def variant_overrides(args, recipe: str, overrides: list[str], overlay: Path) -> tuple[list[str], str]:
    """--hook-baselines and --step-epochs as overrides of one row, and the run folder suffix they need."""
    cfg = config.load(ROOT / recipe, overrides, [overlay])
    suffix = ""
    if args.hook_baselines and cfg.pgt.alpha is None:
        impl = args.impl or cfg.pgt.impl
        if impl == "exact":
            fail("--hook-baselines: pgt.impl exact at alpha 1 is plain cross-entropy (Eq. 8); pass --impl authors "
                 "or official, or --reading code")
        overrides = [*overrides, "pgt.alpha=1.0"]
    if args.step_epochs is not None and cfg.sched.name == "step":
        overrides, suffix = [*overrides, f"sched.epochs={args.step_epochs}"], f"-{args.step_epochs}ep"
    return overrides, suffix


def plan_row(args, recipe: str, overrides: list[str]) -> tuple[str, Path, list[str]]:
    """(status, run folder, command) of one row; the row's config is resolved here, so a broken recipe stops
    the script before the first run, not hours into the table."""
    overlay = config.reading_path(args.reading)
    overrides, suffix = variant_overrides(args, recipe, overrides, overlay)
    pgt_on = config.load(ROOT / recipe, overrides, [overlay]).pgt.alpha is not None
    if args.impl and pgt_on:
        overrides = [*overrides, f"pgt.impl={args.impl}"]
    cfg = config.load(ROOT / recipe, overrides, [overlay])
    run_dir = (Path(args.runs_root) / args.reading / (cfg.pgt.impl if pgt_on else "nopgt")
               / Path(cfg.run.dir + suffix).relative_to(RECIPE_RUNS_ROOT))
    overrides = [o for o in overrides if not o.startswith("run.dir=")] + [f"run.dir={run_dir}"]
    if args.data:
        overrides.append(f"data.root={args.data}")
    data_root = args.data or cfg.data.root
    if not args.dry_run and not Path(data_root).is_dir():
        fail(f"data folder not found: {data_root} (pass --data /path/to/imagenet)")
    status = ("skip" if run_finished(run_dir, cfg.sched.epochs) else
              "resume" if (run_dir / "last.pth").is_file() else "start")
    launcher = ([sys.executable, "-m"] if args.gpus == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}", "-m"])
    cmd = [*launcher, "pgt_train", "--config", os.path.relpath(ROOT / recipe), "--reading", args.reading,
           *overrides, "--resume", "auto"]
    return status, run_dir, cmd


def main(argv=None) -> int:
    args = parse_args(argv)
    index = yaml.safe_load(INDEX.read_text())
    plan = [(label, *plan_row(args, recipe, overrides))
            for label, recipe, overrides in rows_of(index, args.table, args.grid, args.figure)]

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


def _main_with_config_errors() -> int:
    try:
        return main()
    except config.ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    exit_quietly_on_closed_pipe(_main_with_config_errors)
