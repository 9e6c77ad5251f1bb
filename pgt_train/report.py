"""pgt-report: the paper's tables and figures from finished run folders.

    pgt-report RUN_DIR... [--out DIR] [--table 1|2|3] [--configs DIR]

A RUN_DIR is a run folder (config.yaml + summary.csv, as pgt-train writes them) or a folder above run folders
(`pgt-report runs/paper/table1`). What makes a run is config.defining_settings, the definition resume enforces:
- runs equal in every defining setting but the seed form one group: mean ± sample std over its distinct seeds (n);
  a second run of a seed already in the group is a duplicate, counted once and named in the report;
- a group stands beside a row of the paper's Tables 1-3 only if it equals that row's recipe (configs/paper/index.yaml)
  on every defining setting but seed and pgt.impl, under one reading (configs/reading/<reading>.yaml over the
  recipe); any other group is listed as not comparable, with the settings that differ from the nearest row;
- a PGT group's baseline is the group with PGT off (or α = 1) equal to it in every defining setting but α and impl.
Writes DIR/report.md, DIR/report.csv (one row per group) and the PNG figures. The figures need matplotlib
(pip install "pgt-train[report]"); without it the tables are still written and one line says what to install.
Bad input: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pgt_train import config
from pgt_train.errors import UserError
from pgt_train.writers import SUMMARY_COLUMNS, read_summary

PAPER_RESULTS = Path(__file__).parent / "reference" / "paper_results.yaml"
TABLE_TITLES = {1: "batch-normalised networks", 2: "ResNet-18 without BN", 3: "ResNet-50 ablation"}
REQUIRED_COLUMNS = ("epoch", "train_top1", "val_top1")
# Defining keys in which runs may differ and still be: seeds of one group; the run of a paper row (the paper
# reports single runs; pgt.impl is a column, the same run in other arithmetic); a PGT group and its baseline.
SEED_FREE = ("seed",)
ROW_FREE = ("seed", "pgt.impl")
BASELINE_FREE = ("seed", "pgt.alpha", "pgt.impl")
SHOWN_DIFFS = 4  # differing settings named per not-comparable group; the rest are counted
CLIP_NAMES = {"norm": "GC", "value": "value", "agc": "AGC"}  # the paper's names for norm clipping and AGC
PLOTS_EXTRA = 'pip install "pgt-train[report]"'


@dataclass(frozen=True, eq=False)
class Run:
    path: Path
    settings: dict  # config.flat_settings of its config.yaml: every key, defaults where an older run lacks one
    columns: dict  # summary.csv column -> np.ndarray over epochs (NaN where empty)


@dataclass(frozen=True, eq=False)
class Group:
    label: str
    runs: tuple  # of Run: one per distinct seed, equal in every other defining setting
    duplicates: tuple = ()  # of (Run, the Run in `runs` with its seed): the same run again, not counted

    @property
    def settings(self) -> dict:
        return self.runs[0].settings


@dataclass(frozen=True)
class PaperRow:
    id: str  # T<table>#<row>
    table: int
    numbers: dict  # the row of paper_results.yaml: train, test (and gap, note)
    readings: dict  # reading name -> the row recipe's defining settings under that reading


@dataclass(frozen=True)
class RowMatch:
    row: PaperRow
    reading: str
    diffs: list = field(default_factory=list)  # (key, ours, the row's), ROW_FREE aside; empty: comparable


@dataclass(frozen=True)
class Plot:
    file: str  # name inside the report folder
    caption: str  # what it shows and which paper figure it mirrors
    skipped: str = ""  # why it was not drawn; empty when it was


# ---------------------------------------------------------------------------------------------
# loading and grouping


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


def identity_key(settings: dict, *, ignore: tuple = ()) -> tuple:
    """The defining settings less `ignore`, hashable: equal keys, same experiment."""
    return tuple((k, v) for k, v in config.defining_settings(settings).items() if k not in ignore)


def alpha_value(settings: dict) -> float:
    """α for plotting: PGT off is plain cross-entropy, the same as α = 1."""
    alpha = settings["pgt.alpha"]
    return 1.0 if alpha is None else float(alpha)


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


# ---------------------------------------------------------------------------------------------
# the paper's rows: numbers from paper_results.yaml, settings from the recipes of configs/paper/index.yaml


def find_configs(given: Path | None) -> Path | None:
    """The configs/ folder holding paper/index.yaml: --configs, else the repository's (the package's parent in a
    source checkout), else ./configs (the Docker image's working folder); None when there is none."""
    if given is not None:
        if not (given / "paper" / "index.yaml").is_file():
            raise UserError(f"--configs {given}: no paper/index.yaml in it (pass the repository's configs/ folder)")
        return given
    for candidate in (Path(__file__).resolve().parents[1] / "configs", Path("configs")):
        if (candidate / "paper" / "index.yaml").is_file():
            return candidate
    return None


def reading_overlays(configs: Path) -> dict:
    """Reading name -> overlay file; {"recipe": None} (the recipes as they are) when there are no reading files."""
    names = getattr(config, "READINGS", ("paper", "code"))
    found = {name: configs / "reading" / f"{name}.yaml" for name in names}
    return {name: path for name, path in found.items() if path.is_file()} or {"recipe": None}


def load_paper_rows(configs: Path | None, *, table: int | None) -> list[PaperRow]:
    if configs is None:
        return []
    paper = yaml.safe_load(PAPER_RESULTS.read_text())
    index = yaml.safe_load((configs / "paper" / "index.yaml").read_text())
    overlays = reading_overlays(configs)
    rows = []
    for n in [table] if table else [1, 2, 3]:
        numbers = {r["row"]: r for r in paper[f"table{n}"]}
        for entry in index[f"table{n}"]:
            recipe = configs.parent / entry["recipe"]
            readings = {name: config.defining_settings(config.load(recipe, overlays=[path] if path else []))
                        for name, path in overlays.items()}
            rows.append(PaperRow(f"T{n}#{entry['row']}", n, numbers[entry["row"]], readings))
    return rows


def match_row(group: Group, rows: list[PaperRow]) -> RowMatch | None:
    """The first row (Tables 1, 2, 3 in turn) whose recipe the group equals on every defining setting but ROW_FREE,
    under some reading; else the nearest row, with the differences; None without paper rows."""
    candidates = [RowMatch(row, reading, config.diff_defining(group.settings, identity, ignore=ROW_FREE))
                  for row in rows for reading, identity in row.readings.items()]
    return min(candidates, key=lambda m: len(m.diffs), default=None)


def comparable(match: RowMatch | None) -> bool:
    return match is not None and not match.diffs


# ---------------------------------------------------------------------------------------------
# statistics


def is_baseline(group: Group) -> bool:
    return group.settings["pgt.alpha"] is None or group.settings["pgt.alpha"] == 1.0


def find_baseline(group: Group, groups: list[Group]) -> Group | None:
    """The group with PGT off (α off before α = 1) equal to `group` in every defining setting but α and impl."""
    if is_baseline(group):
        return None
    key = identity_key(group.settings, ignore=BASELINE_FREE)
    candidates = [g for g in groups if is_baseline(g) and identity_key(g.settings, ignore=BASELINE_FREE) == key]
    return min(candidates, key=lambda g: g.settings["pgt.alpha"] is not None, default=None)


def final(run: Run, column: str) -> float:
    return float(run.columns[column][-1])


def finals(group: Group, column: str) -> list[float]:
    return [final(r, column) for r in group.runs]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1) over seeds; std is NaN for a single run."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def difference(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """Difference of two groups' means and its standard error sqrt(s1²/n1 + s2²/n2); NaN error when either side
    is a single run (no spread to combine)."""
    diff = statistics.fmean(ours) - statistics.fmean(theirs)
    if len(ours) < 2 or len(theirs) < 2:
        return diff, math.nan
    return diff, math.sqrt(statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs))


def versus_paper(ours: list[float], paper: float) -> tuple[float, float]:
    """Our mean minus the paper's number, and our standard error s/sqrt(n): the paper reports one run and no
    spread, so the error covers our seeds only; NaN for a single run."""
    diff = statistics.fmean(ours) - paper
    return diff, statistics.stdev(ours) / math.sqrt(len(ours)) if len(ours) > 1 else math.nan


def clip_text(settings: dict) -> str:
    mode = settings["clip.mode"]
    return "" if mode == "none" else f"{CLIP_NAMES[mode]} {settings['clip.value']:g}"


# ---------------------------------------------------------------------------------------------
# the table: one row per group, as a dict (report.csv's columns; absent values None)


def describe_group(group: Group) -> dict:
    s = group.settings
    return {"group": group.label, "runs": ";".join(str(r.path) for r in group.runs),
            "duplicates": ";".join(str(r.path) for r, _ in group.duplicates),
            "model": s["model.name"], "norm": s["model.norm"], "sched": s["sched.name"], "alpha": s["pgt.alpha"],
            "impl": s["pgt.impl"] if s["pgt.alpha"] is not None else None, "lr": s["optim.lr"],
            "label_smoothing": s["loss.label_smoothing"], "clip": clip_text(s), "batch": s["data.batch_size"],
            "epochs_trained": min(len(r.columns["epoch"]) for r in group.runs), "epochs": s["sched.epochs"],
            "seeds": len(group.runs), "seed_list": ";".join(str(r.settings["seed"]) for r in group.runs)}


def accuracy_stats(group: Group, baseline: Group | None) -> dict:
    train, test = finals(group, "train_top1"), finals(group, "val_top1")
    best = [float(np.nanmax(r.columns["val_top1"])) for r in group.runs]
    row = {}
    for name, values in (("train_top1", train), ("test_top1", test), ("best_test_top1", best),
                         ("gap", [a - b for a, b in zip(train, test)])):
        row[name], row[f"{name}_std"] = mean_std(values)
    row["baseline"] = baseline.label if baseline else None
    for name, column in (("train", "train_top1"), ("test", "val_top1")):
        diff, error = difference(finals(group, column), finals(baseline, column)) if baseline else (None, None)
        row[f"{name}_diff"], row[f"{name}_diff_se"] = diff, error
    return row


def format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def format_diffs(diffs: list, *, shown: int = SHOWN_DIFFS) -> str:
    parts = [f"{key} {format_value(ours)} (row: {format_value(theirs)})" for key, ours, theirs in diffs[:shown]]
    more = f" and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return ", ".join(parts) + more


def paper_stats(group: Group, match: RowMatch | None) -> dict:
    """The paper row this group stands beside (only when comparable), or the nearest row and what differs."""
    row = {"paper_row": None, "reading": None, "comparable": None, "nearest_row": None, "differs": None,
           "paper_train": None, "paper_test": None, "paper_train_diff": None, "paper_train_diff_se": None,
           "paper_test_diff": None, "paper_test_diff_se": None, "unfinished": None}
    if match is None:
        return row
    if match.diffs:
        return {**row, "comparable": "no", "nearest_row": match.row.id, "differs": format_diffs(match.diffs)}
    numbers = match.row.numbers
    row.update(paper_row=match.row.id, reading=match.reading, comparable="yes", paper_train=numbers["train"],
               paper_test=numbers["test"])
    for name, column in (("train", "train_top1"), ("test", "val_top1")):
        row[f"paper_{name}_diff"], row[f"paper_{name}_diff_se"] = versus_paper(finals(group, column), numbers[name])
    trained, scheduled = min(len(r.columns["epoch"]) for r in group.runs), group.settings["sched.epochs"]
    if trained < scheduled:
        row["unfinished"] = f"trained {trained} of {scheduled} epochs"
    return row


def table_rows(groups: list[Group], *, rows: list[PaperRow], table: int | None) -> list[dict]:
    """One dict per group: the groups comparable with a paper row first when --table (in the paper's row order)."""
    out = []
    for group in groups:
        out.append({**describe_group(group), **accuracy_stats(group, find_baseline(group, groups)),
                    **paper_stats(group, match_row(group, rows))})
    if table:
        order = {row.id: i for i, row in enumerate(rows)}
        out.sort(key=lambda r: (r["comparable"] != "yes", order.get(r["paper_row"], 0)))
    return out


# ---------------------------------------------------------------------------------------------
# report.md and report.csv


def absent(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value, *, std=math.nan, sign=False, digits=2) -> str:
    if absent(value):
        return "—"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def fmt_delta(value, error) -> str:
    """A difference with its standard error, or saying that a single run leaves none."""
    if absent(value):
        return "—"
    return f"{value:+.2f} (single run)" if absent(error) else f"{value:+.2f} ± {error:.2f}"


def paper_number(value) -> str:
    return "—" if value is None else f"{value:.3f}".rstrip("0").rstrip(".")  # as printed: 79.68, 77.216


def paper_cell(r: dict) -> str:
    if r["comparable"] == "no":
        return "not comparable"
    return r["paper_row"] + ("*" if r["unfinished"] else "") if r["paper_row"] else "—"


def table_cells(r: dict) -> list[str]:
    epochs = str(r["epochs"]) if r["epochs_trained"] == r["epochs"] else f"{r['epochs_trained']}/{r['epochs']}"
    duplicates = len(r["duplicates"].split(";")) if r["duplicates"] else 0
    return [r["group"], r["reading"] or "—", r["model"] + (" (no BN)" if r["norm"] == "none" else ""), r["sched"],
            "—" if r["alpha"] is None else f"{r['alpha']:g}", r["impl"] or "—", f"{r['lr']:g}",
            f"{r['label_smoothing']:g}", r["clip"] or "—", str(r["batch"]), epochs,
            str(r["seeds"]) + (f" (+{duplicates} dup.)" if duplicates else ""),
            fmt(r["train_top1"], std=r["train_top1_std"]), fmt(r["test_top1"], std=r["test_top1_std"]),
            fmt(r["best_test_top1"], std=r["best_test_top1_std"]), fmt_delta(r["train_diff"], r["train_diff_se"]),
            fmt_delta(r["test_diff"], r["test_diff_se"]), fmt(r["gap"], std=r["gap_std"]), paper_cell(r),
            paper_number(r["paper_train"]), paper_number(r["paper_test"]),
            fmt_delta(r["paper_train_diff"], r["paper_train_diff_se"]),
            fmt_delta(r["paper_test_diff"], r["paper_test_diff_se"])]


def format_table(rows: list[dict]) -> str:
    header = ["Run", "Reading", "Model", "Sched", "α", "Impl", "LR", "LS", "Clip", "Batch", "Epochs", "n",
              "Train top-1", "Test top-1", "Best test", "Δ train", "Δ test", "Gap", "Paper row", "Paper train",
              "Paper test", "Δ train vs paper", "Δ test vs paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:  # empty cells for absent values; NaN (a single seed's std) too
            writer.writerow({k: "" if absent(v) else v for k, v in r.items()})


EXPLANATION = (
    "Epochs: trained/scheduled when a run stopped early. n: distinct seeds (a second run of the same seed and "
    "settings is a duplicate, counted once). Δ train / Δ test: difference to the baseline, the group with PGT off "
    "equal in every other defining setting (LR included; α and pgt.impl aside), ± the standard error of the "
    "difference √(s₁²/n₁ + s₂²/n₂); \"single run\": a side has n = 1, so there is no spread to give. Gap: "
    "train − test. Paper row: T<table>#<row> of pgt_train/reference/paper_results.yaml, given only for a group "
    "equal to that row's recipe (configs/paper/index.yaml) in every defining setting, seed and pgt.impl aside "
    "(pgt_train/config.py, NOT_DEFINING, lists the settings that do not define a run); Reading: the overlay of "
    "configs/reading/ under which it is equal. Δ vs paper: ours − paper, ± our standard error s/√n (the paper "
    "reports one run per row and no spread).")


def notes(rows: list[dict], groups: list[Group], *, paper_rows: bool) -> list[str]:
    lines = []
    unfinished = [f"- {r['group']} ({r['paper_row']}*): {r['unfinished']}" for r in rows if r["unfinished"]]
    if unfinished:
        lines += ["", "\\* Unfinished: the paper's number is for the whole schedule.", "", *unfinished]
    apart = [f"- {r['group']}: nearest row {r['nearest_row']}; differs in {r['differs']}"
             for r in rows if r["comparable"] == "no"]
    if apart:
        lines += ["", "### Not comparable with a paper row", "",
                  "Each differs from every row's recipe, under every reading, in a defining setting:", "", *apart]
    if not paper_rows:
        lines += ["", "Paper rows: not compared, no configs/paper/index.yaml found (run pgt-report from the "
                      "repository or pass --configs DIR)."]
    duplicates = [f"- {g.label}: {dup.path} repeats seed {dup.settings['seed']} of {kept.path} with the same "
                  f"settings; counted once" for g in groups for dup, kept in g.duplicates]
    if duplicates:
        lines += ["", "### Duplicate runs", "", *duplicates]
    return lines


def figure_lines(plots: list[Plot], plots_note: str) -> list[str]:
    lines = ["", "## Figures", ""]
    for plot in plots:
        if not plot.skipped:
            lines += [f"![{plot.caption}]({plot.file})", "", f"*{plot.file}: {plot.caption}*", ""]
    skipped = [f"- {p.file} skipped: {p.skipped}" for p in plots if p.skipped]
    if skipped:
        lines += ["Skipped figures:", "", *skipped, ""]
    if plots_note:
        lines += [plots_note, ""]
    return lines


def format_report(rows: list[dict], *, plots: list[Plot], plots_note: str, table: int | None, groups: list[Group],
                  skipped_runs: list[str], paper_rows: bool) -> str:
    n_runs = sum(len(g.runs) + len(g.duplicates) for g in groups)
    title = f"Comparison with the paper's Table {table} ({TABLE_TITLES[table]})" if table else "Runs"
    shown = [r for r in rows if r["comparable"] == "yes"] if table else rows
    lines = ["# PGT report", "", f"{n_runs} runs in {len(groups)} groups (runs equal in every defining setting but "
             "the seed). Accuracies are top-1 in %; test = the validation set; mean ± sample std over the distinct "
             "seeds where n > 1.", "", f"## {title}", "", format_table(shown), "", EXPLANATION,
             *notes(rows, groups, paper_rows=paper_rows), *figure_lines(plots, plots_note),
             "## Run folders", "", *[f"- {g.label}: {', '.join(str(r.path) for r in g.runs)}" for g in groups]]
    if skipped_runs:
        lines += ["", "Skipped folders:", "", *[f"- {s}" for s in skipped_runs]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the command line


def draw_figures(groups: list[Group], *, out: Path) -> tuple[list[Plot], str]:
    """(plots, a note when none could be drawn). matplotlib is the optional `report` extra: imported only here."""
    try:
        report_plots = importlib.import_module("pgt_train.report_plots")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "matplotlib":
            raise
        return [], f"Figures not drawn: matplotlib is not installed ({PLOTS_EXTRA} to draw them)."
    return report_plots.draw_all(groups, out=out), ""


def no_match_message(rows: list[dict], table: int) -> str:
    nearest = next((r for r in rows if r["comparable"] == "no"), None)
    hint = f" (nearest: {nearest['group']} vs {nearest['nearest_row']}, differs in {nearest['differs']})" if nearest else ""
    return f"no run matches a row of the paper's Table {table} in every defining setting{hint}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pgt-report", description="Tables and figures of the PGT paper from run folders.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run folders, or folders above them (e.g. runs/paper/table1)")
    p.add_argument("--out", type=Path, default=Path("report"), help="where report.md, report.csv and the PNGs go "
                                                                     "(default: ./report)")
    p.add_argument("--table", type=int, choices=(1, 2, 3), help="compare only with this paper table, list only its rows")
    p.add_argument("--configs", type=Path, metavar="DIR", help="the repository's configs/ folder, for the paper "
                                                               "rows' recipes (default: found beside the package, "
                                                               "else ./configs)")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[list[Group], list[dict], list[str], bool]:
    """(groups, table rows, skipped folders, whether paper rows were found); UserError on bad input."""
    runs, skipped_runs = load_runs(args.run_dirs)
    groups = group_runs(runs)
    configs = find_configs(args.configs)
    if args.table and configs is None:
        raise UserError(f"--table {args.table} needs the paper recipes: no configs/paper/index.yaml found "
                        f"(pass --configs DIR)")
    paper_rows = load_paper_rows(configs, table=args.table)
    rows = table_rows(groups, rows=paper_rows, table=args.table)
    if args.table and not any(r["comparable"] == "yes" for r in rows):
        raise UserError(no_match_message(rows, args.table))
    return groups, rows, skipped_runs, bool(paper_rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        groups, rows, skipped_runs, paper_rows = build(args)
        args.out.mkdir(parents=True, exist_ok=True)
    except UserError as e:
        print(f"pgt-report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"pgt-report: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    plots, plots_note = draw_figures(groups, out=args.out)
    write_csv(rows, args.out / "report.csv")
    (args.out / "report.md").write_text(format_report(rows, plots=plots, plots_note=plots_note, table=args.table,
                                                      groups=groups, skipped_runs=skipped_runs,
                                                      paper_rows=paper_rows))
    for note in skipped_runs:
        print(f"pgt-report: skipped {note}", file=sys.stderr)
    if plots_note:
        print(f"pgt-report: {plots_note}", file=sys.stderr)
    drawn = sum(not p.skipped for p in plots)
    print(f"pgt-report: wrote {args.out / 'report.md'}, report.csv and {drawn} figures "
          f"({len(plots) - drawn} skipped) for {sum(len(g.runs) for g in groups)} runs in {len(groups)} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
