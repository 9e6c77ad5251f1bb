"""pgt-report: the paper's tables and figures from finished run folders.

    pgt-report RUN_DIR... [--out DIR] [--table 1|2|3]

A RUN_DIR is a run folder (config.yaml + summary.csv, as pgt-train writes them) or a folder above run folders
(`pgt-report runs/paper/table1`). Runs that differ only in their seed form one group, reported as mean ± sample
std. Writes DIR/report.md (the runs in the paper's table layout, the paper's numbers beside ours, the figures with
captions), DIR/report.csv (the same table, one row per group) and the PNG figures. Bad input: one line on stderr,
exit 2.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import yaml
# The object API (no pyplot): no global figure state, no GUI backend; savefig renders PNGs with Agg.
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from pgt_train import config
from pgt_train.errors import UserError
from pgt_train.pgt import power_softmax
from pgt_train.writers import SUMMARY_COLUMNS

PAPER_RESULTS = Path(__file__).parent / "reference" / "paper_results.yaml"
PAPER_SETUP = {"epochs": 100, "batch": 1024}  # Sec. 5.1; Table 2 rows name their own batch
TABLE_TITLES = {1: "batch-normalised networks", 2: "ResNet-18 without BN", 3: "ResNet-50 ablation"}
REQUIRED_COLUMNS = ("epoch", "train_top1", "val_top1")
# Where and how a run was made and logged, not what it trained: runs differing only here (and in seed) are one group.
NOT_SETTINGS = ("seed", "run.", "diag.", "data.workers")
# "The matching baseline": the same experiment with α off (Tables 1-3 pair rows this way).
BASELINE_KEYS = ("model.name", "model.norm", "sched.name", "data.batch_size", "loss.label_smoothing",
                 "clip.mode", "clip.value", "sched.epochs")
MAX_FILTER_RUNS = 4  # three layers each: at most 12 filter-norm files
EXAMPLE_LOGITS = (1.2, -0.4, 3.1, 0.3, -1.5, 2.2, 0.0, -0.8, 4.0, 0.9)  # an arbitrary C = 10 example for Fig. 2
TRANSFORM_ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.05)
CLIP_NAMES = {"norm": "GC", "value": "value", "agc": "AGC"}  # the paper's names for norm clipping and AGC
COLOURS = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors


@dataclass(frozen=True)
class Run:
    path: Path
    settings: dict  # the config flattened to dotted keys, defaults filled in for keys an older run lacks
    columns: dict  # summary.csv column -> np.ndarray over epochs (NaN where empty)


@dataclass(frozen=True)
class Group:
    label: str
    runs: tuple  # of Run, identical settings but for the seed

    @property
    def settings(self) -> dict:
        return self.runs[0].settings


@dataclass(frozen=True)
class Plot:
    file: str  # name inside the report folder
    caption: str  # what it shows and which paper figure it mirrors
    skipped: str = ""  # why it was not drawn; empty when it was


# ---------------------------------------------------------------------------------------------
# loading and grouping


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:  # tuples, not lists: settings are dict keys when grouping
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def number(text: str | None, *, where: str) -> float:
    if text in ("", None):  # diagnostics off, or a column this run's version did not write
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: not a number: {text!r}") from None


def load_run(path: Path) -> Run:
    config_path, summary_path = path / "config.yaml", path / "summary.csv"
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if not config_path.is_file():
        raise UserError(f"{path}: no config.yaml, so not a pgt-train run folder")
    if not summary_path.is_file():
        raise UserError(f"{path}: no summary.csv (has the run finished an epoch?)")
    try:
        tree = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{config_path}: malformed YAML") from None
    if not isinstance(tree, dict):
        raise UserError(f"{config_path}: not a mapping of config keys")
    with open(summary_path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    if not rows:
        raise UserError(f"{summary_path}: no epochs recorded yet")
    missing = [c for c in REQUIRED_COLUMNS if c not in reader.fieldnames]
    if missing:
        raise UserError(f"{summary_path}: missing column(s) {', '.join(missing)}")
    # Every column this version writes, NaN where an older run (or diagnostics off) left it out.
    columns = {c: np.array([number(r.get(c), where=f"{summary_path} column {c}") for r in rows])
               for c in dict.fromkeys([*SUMMARY_COLUMNS, *reader.fieldnames])}
    # Defaults under the saved tree: a run made before a key existed still has every setting.
    settings = {**flatten(config.to_dict(config.Config())), **flatten(tree)}
    return Run(path=path, settings=settings, columns=columns)


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


def setting_key(settings: dict, *, without: tuple = ()) -> tuple:
    return tuple(sorted((k, v) for k, v in settings.items() if not k.startswith(NOT_SETTINGS + without)))


def alpha_value(settings: dict) -> float:
    """α for plotting: PGT off is plain cross-entropy, the same as α = 1."""
    alpha = settings["pgt.alpha"]
    return 1.0 if alpha is None else float(alpha)


def sort_key(group: Group) -> tuple:
    # The paper's order: each baseline (α off) directly above its PGT runs.
    s = group.settings
    alpha = s["pgt.alpha"]
    return (s["model.name"], s["model.norm"], s["sched.name"], -s["data.batch_size"], s["loss.label_smoothing"],
            s["clip.mode"], s["clip.value"], s["sched.epochs"], alpha is not None, alpha or 0.0, group.label)


def group_label(paths: list[Path], *, root: str) -> str:
    rel = [os.path.relpath(p, root) for p in paths]
    if len(rel) == 1:
        return rel[0]
    # seed0, seed1 ... or lr0.1_s0, lr0.1_s1 ...: keep the shared part, drop the trailing seed
    stem = re.sub(r"[/_\-.=]*(seed)?[_\-.=]*\d*$", "", os.path.commonprefix(rel))
    return stem or rel[0]


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs that share every setting except the seed (and run bookkeeping) form one group, in the paper's order."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        by_key.setdefault(setting_key(run.settings), []).append(run)
    # Labels are paths relative to the folder that holds all runs: short and unique.
    root = os.path.commonpath([str(r.path.resolve().parent) for r in runs])
    groups = [Group(label=group_label([r.path.resolve() for r in members], root=root), runs=tuple(members))
              for members in by_key.values()]
    return sorted(groups, key=sort_key)


# ---------------------------------------------------------------------------------------------
# the table


def same_alpha(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or math.isclose(a, b))


def table2_method(settings: dict) -> str | None:
    """Table 2's method name from the clipping mode and α; None for value clipping, which the paper never ran."""
    clip = {"none": "", "norm": "gc", "agc": "agc"}.get(settings["clip.mode"])
    if clip is None:
        return None
    pgt = "pgt" if settings["pgt.alpha"] is not None else ""
    return "+".join(m for m in (clip, pgt) if m) or "baseline"


def matches_row(settings: dict, row: dict, *, table: int) -> bool:
    s = settings
    if not same_alpha(s["pgt.alpha"], row["alpha"]):
        return False
    if table == 1:
        return (s["model.name"] == row["model"] and s["sched.name"] == row["sched"] and s["model.norm"] == "bn"
                and s["loss.label_smoothing"] == 0 and s["clip.mode"] == "none")
    if table == 2:
        return (s["model.name"] == "resnet18" and s["model.norm"] == "none" and s["sched.name"] == "cosine"
                and s["loss.label_smoothing"] == 0 and s["data.batch_size"] == row["batch"]
                and table2_method(s) == row["method"])
    return (s["model.name"] == "resnet50" and s["model.norm"] == "bn" and s["sched.name"] == row["sched"]
            and s["clip.mode"] == "none" and math.isclose(s["loss.label_smoothing"], 0.1 if row["ls"] else 0.0))


def match_paper_row(settings: dict, *, paper: dict, table: int | None) -> tuple[str, dict] | None:
    """("T<table>#<row>", the paper's row) for the first row this run reproduces, Tables 1, 2, 3 in turn."""
    for n in [table] if table else [1, 2, 3]:
        for i, row in enumerate(paper[f"table{n}"], start=1):
            if matches_row(settings, row, table=n):
                return f"T{n}#{row.get('row', i)}", row
    return None


def setup_note(settings: dict, row: dict) -> str:
    """Where our run's budget differs from the paper's row, so a reader does not compare unlike numbers."""
    ours = {"epochs": settings["sched.epochs"], "batch": settings["data.batch_size"]}
    paper = {**PAPER_SETUP, "batch": row.get("batch", PAPER_SETUP["batch"])}
    return ", ".join(f"{k} {ours[k]} vs {paper[k]}" for k in ours if ours[k] != paper[k])


def is_baseline(group: Group) -> bool:
    return group.settings["pgt.alpha"] is None or group.settings["pgt.alpha"] == 1.0


def find_baseline(group: Group, groups: list[Group]) -> Group | None:
    if is_baseline(group):
        return None
    candidates = [g for g in groups if is_baseline(g)
                  and all(g.settings[k] == group.settings[k] for k in BASELINE_KEYS)]
    # Several (say, two learning rates): the one closest in every other setting; α off before α = 1.
    mine = set(setting_key(group.settings))
    return min(candidates, key=lambda g: (len(mine - set(setting_key(g.settings))), g.settings["pgt.alpha"] is not None),
               default=None)


def final(run: Run, column: str) -> float:
    return float(run.columns[column][-1])


def mean_final(group: Group, column: str) -> float:
    return statistics.fmean(final(r, column) for r in group.runs)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1) over seeds; std is NaN for a single run."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def clip_text(settings: dict) -> str:
    mode = settings["clip.mode"]
    return "" if mode == "none" else f"{CLIP_NAMES[mode]} {settings['clip.value']:g}"


def summarize(group: Group, *, baseline: Group | None, paper_match: tuple[str, dict] | None) -> dict:
    """One row of report.csv: numbers as floats, absent values as None."""
    s = group.settings
    train = [final(r, "train_top1") for r in group.runs]
    test = [final(r, "val_top1") for r in group.runs]
    best = [float(np.nanmax(r.columns["val_top1"])) for r in group.runs]
    row = {"group": group.label, "runs": ";".join(str(r.path) for r in group.runs),
           "model": s["model.name"], "norm": s["model.norm"], "sched": s["sched.name"], "alpha": s["pgt.alpha"],
           "label_smoothing": s["loss.label_smoothing"], "clip": clip_text(s), "batch": s["data.batch_size"],
           "epochs_trained": min(len(r.columns["epoch"]) for r in group.runs), "epochs": s["sched.epochs"],
           "seeds": len(group.runs), "seed_list": ";".join(str(r.settings["seed"]) for r in group.runs)}
    for name, values in (("train_top1", train), ("test_top1", test), ("best_test_top1", best),
                         ("gap", [a - b for a, b in zip(train, test)])):
        row[name], row[f"{name}_std"] = mean_std(values)
    row["baseline"] = baseline.label if baseline else None
    row["train_diff"] = row["train_top1"] - mean_final(baseline, "train_top1") if baseline else None
    row["test_diff"] = row["test_top1"] - mean_final(baseline, "val_top1") if baseline else None
    label, paper = paper_match or (None, {})
    row["paper_row"] = label
    row["paper_train"], row["paper_test"] = paper.get("train"), paper.get("test")
    row["paper_train_diff"] = row["train_top1"] - paper["train"] if paper else None
    row["paper_test_diff"] = row["test_top1"] - paper["test"] if paper else None
    row["paper_setup_differs"] = setup_note(s, paper) if paper else None
    return row


def table_rows(groups: list[Group], *, paper: dict, table: int | None) -> list[dict]:
    rows = []
    for group in groups:
        match = match_paper_row(group.settings, paper=paper, table=table)
        if table and not match:
            continue  # --table N lists only that table's rows
        rows.append(summarize(group, baseline=find_baseline(group, groups), paper_match=match))
    if table:  # in the paper's row order
        rows.sort(key=lambda r: int(r["paper_row"].split("#")[1]))
    return rows


def fmt(value, *, std=math.nan, sign=False, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def paper_number(value) -> str:
    return "—" if value is None else f"{value:.3f}".rstrip("0").rstrip(".")  # as printed: 79.68, 77.216


def format_table(rows: list[dict]) -> str:
    header = ["Run", "Model", "Sched", "α", "LS", "Clip", "Batch", "Epochs", "Seeds", "Train top-1", "Test top-1",
              "Best test", "Δ train", "Δ test", "Gap", "Paper row", "Paper train", "Paper test", "Δ train vs paper",
              "Δ test vs paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        epochs = str(r["epochs"]) if r["epochs_trained"] == r["epochs"] else f"{r['epochs_trained']}/{r['epochs']}"
        paper_row = r["paper_row"] + ("*" if r["paper_setup_differs"] else "") if r["paper_row"] else "—"
        cells = [r["group"], r["model"] + (" (no BN)" if r["norm"] == "none" else ""), r["sched"],
                 "—" if r["alpha"] is None else f"{r['alpha']:g}", f"{r['label_smoothing']:g}", r["clip"] or "—",
                 str(r["batch"]), epochs, str(r["seeds"]),
                 fmt(r["train_top1"], std=r["train_top1_std"]), fmt(r["test_top1"], std=r["test_top1_std"]),
                 fmt(r["best_test_top1"], std=r["best_test_top1_std"]), fmt(r["train_diff"], sign=True),
                 fmt(r["test_diff"], sign=True), fmt(r["gap"], std=r["gap_std"]), paper_row,
                 paper_number(r["paper_train"]), paper_number(r["paper_test"]),
                 fmt(r["paper_train_diff"], sign=True), fmt(r["paper_test_diff"], sign=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:  # empty cells for absent values; NaN (a single seed's std) too
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for k, v in r.items()})


# ---------------------------------------------------------------------------------------------
# figures: one function per figure, each returns the Plot records it made (or one saying why it skipped)


def colour(i: int):
    return COLOURS[i % len(COLOURS)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def describe(settings: dict) -> str:
    """A short legend name for an α sweep: the settings the table shows, without α."""
    s, clip = settings, clip_text(settings)
    ls = f" ls {s['loss.label_smoothing']:g}" if s["loss.label_smoothing"] else ""
    return (f"{s['model.name']}{' (no BN)' if s['model.norm'] == 'none' else ''} {s['sched.name']} "
            f"b{s['data.batch_size']}{ls}{' ' + clip if clip else ''} {s['sched.epochs']} ep")


def mean_curve(group: Group, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, mean over seeds) over the epochs every seed has reached."""
    n = min(len(r.columns["epoch"]) for r in group.runs)
    return group.runs[0].columns["epoch"][:n], np.mean([r.columns[column][:n] for r in group.runs], axis=0)


def log_axes(ax) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="mask")  # 0 % accuracy early on has no place on a log axis
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not 10^x, and some minor ticks labelled: accuracies span
        # less than a decade; the thresholds thin the minor labels out on axes that span more
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.tick_params(which="both", labelleft=True, labelsize="small")  # shared y: label both panels anyway


def plot_curves(groups: list[Group], *, out: Path) -> list[Plot]:
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for i, group in enumerate(groups):
        for ax, column in zip(axes, ("train_top1", "val_top1")):
            ax.plot(*mean_curve(group, column), color=colour(i), marker=".", markersize=4, label=group.label)
    for ax, title in zip(axes, ("train", "test (validation)")):
        log_axes(ax)
        ax.set(title=f"{title} top-1", xlabel="epoch", ylabel="top-1 accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(out / "curves.png", dpi=110)
    return [Plot("curves.png", "Train and test top-1 per epoch on log-log axes, mean over seeds (paper Fig. 4).")]


def filter_norm_layers(names: list[str]) -> list[str]:
    """First, middle and last conv; for ResNet-18 the middle one is conv #11, the layer of the paper's Fig. 5(a)."""
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def plot_filter_norm_layer(step: np.ndarray, norms: np.ndarray, *, title: str, threshold: float, path: Path) -> None:
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    # A random colour per filter, as the paper's Figs. 14-17; seeded so that a rerun draws the same picture.
    ax.set_prop_cycle(color=list(np.random.default_rng(0).random((norms.shape[1], 3)) * 0.85))
    ax.plot(step, norms.astype(np.float32), linewidth=0.5)
    ax.axhline(threshold, color="k", linestyle=":", linewidth=0.8)
    zeroed = int((norms[-1] < threshold).sum())
    ax.set(title=f"{title}\n{norms.shape[1]} filters, {zeroed} zeroed out at the end (norm < {threshold:g}, dotted)",
           xlabel="optimizer step", ylabel="filter L2 norm")
    ax.title.set_fontsize("small")
    fig.savefig(path, dpi=110)


def run_with_filter_norms(group: Group) -> Run | None:
    return next((r for r in group.runs if (r.path / "filter_norms.npz").is_file()), None)


def plot_filter_norms(groups: list[Group], *, out: Path) -> list[Plot]:
    # One run per group (a seed is enough to see zeroing out), the first groups in table order.
    with_norms = [(g, r) for g in groups if (r := run_with_filter_norms(g))][:MAX_FILTER_RUNS]
    if not with_norms:
        return [Plot("filter_norms_*.png", "Per-filter norms (paper Figs. 5-7)",
                     skipped="no run has filter_norms.npz (diagnostics off: diag.interval 0)")]
    plots = []
    for group, run in with_norms:
        with np.load(run.path / "filter_norms.npz") as saved:
            names = [k for k in saved.files if k != "step"]
            for name in filter_norm_layers(names):
                file = f"filter_norms_{slug(group.label)}_{slug(name)}.png"
                title = f"{group.label}: {name} (conv #{names.index(name) + 1} of {len(names)})"
                plot_filter_norm_layer(saved["step"], saved[name], title=title,
                                       threshold=run.settings["diag.zero_threshold"], path=out / file)
                plots.append(Plot(file, f"Norm of every filter of {name} vs step, one line per filter, "
                                        f"run {group.label} (paper Figs. 5-7, 14-17)."))
    return plots


def alpha_families(groups: list[Group]) -> list[list[Group]]:
    """Groups that differ only in α (an α sweep), for families with at least two α values."""
    by_key: dict[tuple, list[Group]] = {}
    for group in groups:
        by_key.setdefault(setting_key(group.settings, without=("pgt.alpha",)), []).append(group)
    return [sorted(fam, key=lambda g: alpha_value(g.settings)) for fam in by_key.values()
            if len({alpha_value(g.settings) for g in fam}) > 1]


def plot_series(ax, family: list[Group], column: str, *, color: tuple, label: str) -> None:
    """Mean ± std over seeds of a final value against α."""
    stats = [mean_std([final(r, column) for r in g.runs]) for g in family]
    ax.errorbar([alpha_value(g.settings) for g in family], [m for m, _ in stats],
                yerr=[0.0 if math.isnan(s) else s for _, s in stats], color=color, marker="o", capsize=3,
                label=label)


def plot_loss_logit_vs_alpha(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "loss_logit_vs_alpha.png", ("Final mean val logit norm and val cross-entropy against α "
                                                "(α off at 1), and loss against logit norm with a linear fit "
                                                "(paper Fig. 8a-c).")
    families = [f for f in alpha_families(groups)
                if all(not math.isnan(final(r, "logit_norm")) for g in f for r in g.runs)]
    if not families:
        return [Plot(file, caption, skipped="needs runs that differ only in α (two values or more) with logit_norm "
                                            "in summary.csv")]
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_norm, ax_loss, ax_fit = fig.subplots(1, 3)
    for i, family in enumerate(families):
        label = describe(family[0].settings)
        plot_series(ax_norm, family, "logit_norm", color=colour(i), label=label)
        plot_series(ax_loss, family, "val_loss", color=colour(i), label=label)
        runs = [r for g in family for r in g.runs]
        x, y = np.array([final(r, "logit_norm") for r in runs]), np.array([final(r, "val_loss") for r in runs])
        ax_fit.scatter(x, y, color=colour(i))
        if len(set(x)) > 1:  # a line needs two distinct logit norms
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax_fit.plot(xs, slope * xs + intercept, color=colour(i), label=f"{slope:.4g}x + {intercept:.4g}")
    ax_norm.set(title="(a) logit norm vs α", xlabel="α (off = 1)", ylabel="mean L2 norm of val logits")
    ax_loss.set(title="(b) final loss vs α", xlabel="α (off = 1)", ylabel="val cross-entropy")
    ax_fit.set(title="(c) loss vs logit norm (paper: 0.01074x + 0.25816)", xlabel="mean L2 norm of val logits",
               ylabel="val cross-entropy")
    ax_norm.legend(fontsize="small")
    if ax_fit.get_legend_handles_labels()[0]:
        ax_fit.legend(fontsize="small", title="linear fit")
    fig.savefig(out / file, dpi=110)
    return [Plot(file, caption)]


def plot_accuracy_vs_alpha(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "accuracy_vs_alpha.png", ("Final train and test top-1 against α (α off at 1), mean ± std over "
                                              "seeds (paper Figs. 10-13).")
    families = alpha_families(groups)
    if not families:
        return [Plot(file, caption, skipped="needs runs that differ only in α (two values or more)")]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, family in enumerate(families):
        for ax, column in zip(axes, ("train_top1", "val_top1")):
            plot_series(ax, family, column, color=colour(i), label=describe(family[0].settings))
    for ax, title in zip(axes, ("train", "test (validation)")):
        ax.set(title=f"final {title} top-1 vs α", xlabel="α (off = 1)", ylabel="top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(out / file, dpi=110)
    return [Plot(file, caption)]


def plot_transform_effect(*, out: Path) -> list[Plot]:
    logits = torch.tensor(EXAMPLE_LOGITS, dtype=torch.float64)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_raw, ax_sorted = fig.subplots(1, 2, sharey=True)
    classes = np.arange(1, len(EXAMPLE_LOGITS) + 1)
    order = np.argsort(-np.array(EXAMPLE_LOGITS))  # p^α is monotone in p: one order fits every α
    for i, alpha in enumerate(TRANSFORM_ALPHAS):
        p = power_softmax(logits, alpha).numpy()  # p^α / Σ p^α = softmax(α·z)
        ax_raw.plot(classes, p, marker="o", color=colour(i), label=f"α = {alpha:g}")
        ax_sorted.plot(classes, p[order], marker="o", color=colour(i), label=f"α = {alpha:g}")
    for ax, title in zip((ax_raw, ax_sorted), ("unordered", "ordered")):
        ax.axhline(1 / len(EXAMPLE_LOGITS), color="k", linestyle=":", linewidth=0.8, label="uniform 1/C")
        ax.set(title=f"p^α / Σ p^α, {title}", xlabel="class index" if ax is ax_raw else "rank", ylabel="probability",
               xticks=classes)
    ax_sorted.legend()
    fig.savefig(out / "transform_effect.png", dpi=110)
    return [Plot("transform_effect.png", "The transform p^α/Σp^α on one distribution over C = 10 classes for "
                                         "several α: flatter as α falls (paper Fig. 2).")]


def plot_zeroed(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "zeroed_filters.png", ("Zeroed-out conv filters and pooled features per epoch, mean over seeds "
                                           "(paper Figs. 5-7, Sec. 5.2).")
    columns = ("zeroed_filters", "zeroed_features")
    present = [g for g in groups if all(not np.isnan(r.columns[c]).all() for c in columns for r in g.runs)]
    if not present:
        return [Plot(file, caption, skipped="no run has zeroed_filters/zeroed_features in summary.csv "
                                            "(diagnostics off)")]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for group in present:
        i = groups.index(group)  # the same colour as in curves.png
        for ax, column in zip(axes, columns):
            ax.plot(*mean_curve(group, column), color=colour(i), marker=".", label=group.label)
    for ax, what in zip(axes, ("conv filters (all layers)", "pooled features")):
        ax.set(title=f"zeroed-out {what}", xlabel="epoch", ylabel="count (L2 norm < diag.zero_threshold)")
        ax.set_ylim(bottom=0)
        for axis in (ax.xaxis, ax.yaxis):  # epochs and counts are whole numbers
            axis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(out / file, dpi=110)
    return [Plot(file, caption)]


# ---------------------------------------------------------------------------------------------
# report.md and the command line


def format_report(rows: list[dict], *, plots: list[Plot], table: int | None, groups: list[Group],
                  skipped_runs: list[str]) -> str:
    n_runs = sum(len(g.runs) for g in groups)
    title = f"Comparison with the paper's Table {table} ({TABLE_TITLES[table]})" if table else "Runs"
    lines = ["# PGT report", "", f"{n_runs} runs in {len(groups)} groups (runs that differ only in seed). "
             "Accuracies are top-1 in %; test = the validation set; mean ± sample std over seeds where Seeds > 1.",
             "", f"## {title}", "", format_table(rows), "",
             "Epochs: trained/scheduled when a run stopped early. Δ train / Δ test: difference to the matching "
             "baseline (same model, norm, schedule, batch, label smoothing, clipping and epochs with α off; "
             "the closest one in the other settings if several). Gap: train − test. Paper row: T<table>#<row> of "
             "pgt_train/reference/paper_results.yaml (ImageNet-1K, 100 epochs, batch 1024 unless the row says "
             "otherwise); Δ vs paper = ours − paper."]
    notes = [f"- {r['group']} ({r['paper_row']}*): {r['paper_setup_differs']} (ours vs paper)"
             for r in rows if r["paper_setup_differs"]]
    if notes:
        lines += ["", "\\* Not the paper's budget, so the paper columns are context, not a target:", *notes]
    lines += ["", "## Figures", ""]
    for plot in plots:
        if not plot.skipped:
            lines += [f"![{plot.caption}]({plot.file})", "", f"*{plot.file}: {plot.caption}*", ""]
    skipped = [f"- {p.file} skipped: {p.skipped}" for p in plots if p.skipped]
    if skipped:
        lines += ["Skipped figures:", "", *skipped, ""]
    lines += ["## Run folders", "", *[f"- {g.label}: {', '.join(str(r.path) for r in g.runs)}" for g in groups]]
    if skipped_runs:
        lines += ["", "Skipped folders:", "", *[f"- {s}" for s in skipped_runs]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pgt-report", description="Tables and figures of the PGT paper from run folders.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run folders, or folders above them (e.g. runs/paper/table1)")
    p.add_argument("--out", type=Path, default=Path("report"), help="where report.md, report.csv and the PNGs go "
                                                                     "(default: ./report)")
    p.add_argument("--table", type=int, choices=(1, 2, 3), help="compare only with this paper table, list only its rows")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs, skipped_runs = load_runs(args.run_dirs)
        groups = group_runs(runs)
        paper = yaml.safe_load(PAPER_RESULTS.read_text())
        rows = table_rows(groups, paper=paper, table=args.table)
        if not rows:
            raise UserError(f"no run matches a row of the paper's Table {args.table}")
        args.out.mkdir(parents=True, exist_ok=True)
    except UserError as e:
        print(f"pgt-report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"pgt-report: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    plots = [*plot_curves(groups, out=args.out), *plot_filter_norms(groups, out=args.out),
             *plot_loss_logit_vs_alpha(groups, out=args.out), *plot_accuracy_vs_alpha(groups, out=args.out),
             *plot_transform_effect(out=args.out), *plot_zeroed(groups, out=args.out)]
    write_csv(rows, args.out / "report.csv")
    (args.out / "report.md").write_text(format_report(rows, plots=plots, table=args.table, groups=groups,
                                                      skipped_runs=skipped_runs))
    for note in skipped_runs:
        print(f"pgt-report: skipped {note}", file=sys.stderr)
    drawn = sum(not p.skipped for p in plots)
    print(f"pgt-report: wrote {args.out / 'report.md'}, report.csv and {drawn} figures "
          f"({len(plots) - drawn} skipped) for {len(runs)} runs in {len(groups)} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
