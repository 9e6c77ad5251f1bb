"""Reading run folders (config.yaml + summary.csv, as pgt-train writes them) and grouping them: runs equal in every
defining setting but the seed form one group, one run per distinct seed."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import yaml

from pgt_train import config
from pgt_train.errors import UserError
from pgt_train.report.model import SEED_FREE, Group, Run, identity_key
from pgt_train.writers import SUMMARY_COLUMNS, read_summary

REQUIRED_COLUMNS = ("epoch", "train_top1", "val_top1")


def number(text: str | None, *, where: str) -> float:
    if text in ("", None):  # diagnostics off, or a column this run's version did not write
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: not a number: {text!r}") from None


def read_config(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: malformed YAML") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: not a mapping of config keys")
    return tree


def load_run(path: Path) -> Run:
    config_path, summary_path = path / "config.yaml", path / "summary.csv"
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if not config_path.is_file():
        raise UserError(f"{path}: no config.yaml, so not a pgt-train run folder")
    if not summary_path.is_file():
        raise UserError(f"{path}: no summary.csv (has the run finished an epoch?)")
    tree = read_config(config_path)
    rows = read_summary(summary_path)
    if not rows:
        raise UserError(f"{summary_path}: no epochs recorded yet")
    fieldnames = [c for c in rows[0] if c is not None]  # None: csv's key for cells beyond the header
    missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
    if missing:
        raise UserError(f"{summary_path}: missing column(s) {', '.join(missing)}")
    # Every column this version writes, NaN where an older run (or diagnostics off) left it out.
    columns = {c: np.array([number(r.get(c), where=f"{summary_path} column {c}") for r in rows])
               for c in dict.fromkeys([*SUMMARY_COLUMNS, *fieldnames])}
    return Run(path=path, settings=config.flat_settings(tree), columns=columns)


def run_dirs_in(path: Path) -> list[Path]:
    """The folder itself if it is a run folder, else every run folder below it."""
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if (path / "config.yaml").is_file():
        return [path]
    found = sorted(c.parent for c in path.rglob("config.yaml"))
    if not found:
        raise UserError(f"{path}: no run folders in it (none holds a config.yaml)")
    return found


def load_runs(paths: list[Path]) -> tuple[list[Run], list[str]]:
    """(runs, notes on skipped folders). A folder named on the command line must be a good run; one found below a
    named parent is skipped with a note when it has no epoch yet (a table still being trained)."""
    runs, skipped, seen = [], [], set()
    for named in paths:
        for path in run_dirs_in(named):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                runs.append(load_run(path))
            except UserError as e:
                if path == named:
                    raise
                skipped.append(str(e))
    if not runs:
        raise UserError(f"no run with a finished epoch in {', '.join(map(str, paths))}")
    return runs, skipped


def sort_key(group: Group) -> tuple:
    # The paper's order: each baseline (α off) directly above its PGT runs.
    s = group.settings
    alpha = s["pgt.alpha"]
    return (s["model.name"], s["model.norm"], s["sched.name"], -s["data.batch_size"], s["optim.lr"],
            s["loss.label_smoothing"], s["clip.mode"], s["clip.value"], s["sched.epochs"], alpha is not None,
            alpha or 0.0, group.label)


def group_label(paths: list[Path], *, root: str) -> str:
    rel = [os.path.relpath(p, root) for p in paths]
    if len(rel) == 1:
        return rel[0]
    # seed0, seed1 ... or lr0.1_s0, lr0.1_s1 ...: keep the shared part, drop the trailing seed (and its _s)
    stem = re.sub(r"([/_\-.=](seed|s)?)?[_\-.=]*\d*$", "", os.path.commonprefix(rel))
    return stem or rel[0]


def distinct_seeds(members: list[Run]) -> tuple[tuple, tuple]:
    """(one run per seed, ((duplicate, the run kept for its seed), ...)). Of runs that share a seed (and every
    other defining setting) the one that trained the most epochs counts, the first of those on a tie."""
    kept: dict = {}
    for run in members:
        best = kept.get(run.settings["seed"])
        if best is None or len(run.columns["epoch"]) > len(best.columns["epoch"]):
            kept[run.settings["seed"]] = run
    duplicates = tuple((r, kept[r.settings["seed"]]) for r in members if kept[r.settings["seed"]] is not r)
    return tuple(kept.values()), duplicates


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs equal in every defining setting but the seed form one group, in the paper's order."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        by_key.setdefault(identity_key(run.settings, ignore=SEED_FREE), []).append(run)
    # Labels are paths relative to the folder that holds all runs: short and unique.
    root = os.path.commonpath([str(r.path.resolve().parent) for r in runs])
    groups = []
    for members in by_key.values():
        kept, duplicates = distinct_seeds(members)
        groups.append(Group(label=group_label([r.path.resolve() for r in kept], root=root), runs=kept,
                            duplicates=duplicates))
    return sorted(groups, key=sort_key)
