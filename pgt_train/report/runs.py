"""Reading run folders (config.yaml + summary.csv, as pgt-train writes them) and grouping them: runs equal in every
defining setting but the seed form one group, one run per distinct seed."""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import numpy as np

from pgt_train import config
from pgt_train.errors import UserError
from pgt_train.report.model import IGNORED_IN_SEED_GROUPS, Group, Run, identity_key, trained_epochs
from pgt_train.writers import SUMMARY_COLUMNS, read_summary

REQUIRED_COLUMNS = ("epoch", "train_top1", "val_top1")


def number(text: str | None, *, where: str) -> float:
    if text in ("", None):  # diagnostics off, or a column this run's version did not write
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: not a number: {text!r}") from None


def read_settings(path: Path) -> dict:
    """A run's config.yaml as strictly as pgt-train reads a recipe (the hostile-YAML defences, known keys, types,
    choices and ranges), as config.flat_settings: a key an older version did not write gets today's default.
    Bad: UserError naming the file and the key, so the folder is no result."""
    try:
        return config.flat_settings(config.from_dict(config.read_yaml(path)))
    except config.ConfigError as e:
        where = "" if str(e).startswith(str(path)) else f"{path}: "  # YAML errors name the file and line already
        raise UserError(f"{where}{e}; not a config.yaml pgt-train writes, so no result") from None


def load_run(path: Path) -> Run:
    config_path, summary_path = path / "config.yaml", path / "summary.csv"
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if not config_path.is_file():
        raise UserError(f"{path}: no config.yaml, so not a pgt-train run folder")
    if not summary_path.is_file():
        raise UserError(f"{path}: no summary.csv (has the run finished an epoch?)")
    settings = read_settings(config_path)
    try:
        rows = read_summary(summary_path)
    except (csv.Error, UnicodeDecodeError) as e:  # e.g. NUL bytes before Python 3.11, or not text at all
        raise UserError(f"{summary_path}: not a summary.csv pgt-train writes ({e})") from None
    if not rows:
        raise UserError(f"{summary_path}: no epochs recorded yet")
    fieldnames = [c for c in rows[0] if c is not None]  # None: csv's key for cells beyond the header
    missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
    if missing:
        raise UserError(f"{summary_path}: missing column(s) {', '.join(missing)}")
    names = list(dict.fromkeys([*SUMMARY_COLUMNS, *fieldnames]))
    columns, notes = read_columns(rows, names, path=summary_path)
    return Run(path=path, settings=settings, columns=columns,
               notes=(*notes, *check_epochs(columns, path=summary_path)))


def parse_row(row: dict, names: list[str], *, where: str) -> list[float]:
    if None in row or None in row.values():  # more cells than the header, or fewer (csv's restkey / restval)
        raise UserError(f"{where}: {len([v for v in row.values() if v is not None])} cells for {len(row)} columns")
    return [number(row.get(c), where=f"{where} column {c}") for c in names]


def read_columns(rows: list[dict], names: list[str], *, path: Path) -> tuple[dict, list[str]]:
    """(column -> np.ndarray over rows, NaN where a cell is empty: an older run or diagnostics off; notes). The last
    row is dropped, with a note, when it is cut short (no line end: a writer killed mid-row, or still writing) or
    does not parse: it may be "7" of a "75.0" being written. Any other bad row is bad input."""
    values, notes = [], []
    for i, row in enumerate(rows):
        last = i == len(rows) - 1
        try:
            if last and not ends_with_line_end(path):
                raise UserError(f"{path} row {i + 1}: no line end")
            values.append(parse_row(row, names, where=f"{path} row {i + 1}"))
        except UserError as e:
            if not last:
                raise
            notes.append(f"{path}: last row not read ({str(e).removeprefix(f'{path} ')}): written half, by a writer "
                         f"that was killed or is still writing it")
    if not values:
        raise UserError(f"{path}: no complete epoch row yet")
    return dict(zip(names, np.array(values, dtype=float).T)), notes


def ends_with_line_end(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def check_epochs(columns: dict, *, path: Path) -> list[str]:
    """One run's rows hold whole epochs, each once, consecutive, each validated on at least one image: else the
    folder is no result (UserError). The first epoch may be past 1 (a run continued from another folder's
    checkpoint): a note says so."""
    epochs, val_images = columns["epoch"], columns["val_images"]
    if np.isnan(epochs).any() or (epochs != np.floor(epochs)).any() or (epochs < 1).any():
        raise UserError(f"{path}: the epoch column holds something other than epoch numbers 1, 2, ...")
    seen, counts = np.unique(epochs, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"{path}: epoch {seen[counts > 1][0]:.0f} is recorded {counts.max()} times "
                        f"({(counts > 1).sum()} epochs repeated): two processes wrote this run folder, so its rows "
                        f"are not one run's; not a result (train it again in a new run.dir)")
    if (np.diff(epochs) != 1).any():
        raise UserError(f"{path}: epochs {', '.join(f'{e:.0f}' for e in epochs)} are not consecutive; not one run's rows")
    if (val_images == 0).any():
        raise UserError(f"{path}: epoch {epochs[val_images == 0][0]:.0f} was validated on 0 images (no readable "
                        f"validation image), so its test top-1 is no result")
    if epochs[0] > 1:
        return [f"{path.parent}: holds epochs {epochs[0]:.0f}-{epochs[-1]:.0f}; epochs 1-{epochs[0] - 1:.0f} were "
                f"trained in another folder (continued from its checkpoint), so best test and curves start at epoch "
                f"{epochs[0]:.0f}"]
    return []


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
        if best is None or trained_epochs(run) > trained_epochs(best):
            kept[run.settings["seed"]] = run
    duplicates = tuple((r, kept[r.settings["seed"]]) for r in members if kept[r.settings["seed"]] is not r)
    return tuple(kept.values()), duplicates


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs equal in every defining setting but the seed form one group, in the paper's order."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        by_key.setdefault(identity_key(run.settings, ignore=IGNORED_IN_SEED_GROUPS), []).append(run)
    # Labels are paths relative to the folder that holds all runs: short and unique.
    root = os.path.commonpath([str(r.path.resolve().parent) for r in runs])
    groups = []
    for members in by_key.values():
        kept, duplicates = distinct_seeds(members)
        groups.append(Group(label=group_label([r.path.resolve() for r in kept], root=root), runs=kept,
                            duplicates=duplicates))
    return sorted(groups, key=sort_key)
