"""report.md and report.csv from the table's dicts (rows.py): cell formatting, the explanation, the notes."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from pgt_train.ablation import ARM_NAMES
from pgt_train.report.ablations import find_arms
from pgt_train.report.model import Group, Plot

TABLE_TITLES = {1: "batch-normalised networks", 2: "ResNet-18 without BN", 3: "ResNet-50 ablation"}


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


def fmt_seeds(value, std, seeds: int) -> str:
    """The seed band: ± the std over seeds, or "one seed" where there is no spread to give."""
    return fmt(value, std=std) + (" (one seed)" if seeds == 1 and not absent(value) else "")


def paper_cell(r: dict) -> str:
    if r["comparable"] == "no":
        return "not comparable"
    flags = ("*" if r["unfinished"] else "") + (" †" if r["paper_alpha_disputed"] else "")
    return r["paper_row"] + flags if r["paper_row"] else "—"


def table_cells(r: dict) -> list[str]:
    epochs = str(r["epochs"]) if r["epochs_trained"] == r["epochs"] else f"{r['epochs_trained']}/{r['epochs']}"
    duplicates = len(r["duplicates"].split(";")) if r["duplicates"] else 0
    return [r["group"], r["reading"] or "—", r["model"] + (" (no BN)" if r["norm"] == "none" else ""), r["sched"],
            "—" if r["alpha"] is None else f"{r['alpha']:g}", r["impl"] or "—", f"{r['lr']:g}",
            f"{r['label_smoothing']:g}", r["clip"] or "—", str(r["batch"]), epochs,
            str(r["seeds"]) + (f" (+{duplicates} dup.)" if duplicates else ""),
            fmt_seeds(r["train_top1"], r["train_top1_std"], r["seeds"]),
            fmt_seeds(r["test_top1"], r["test_top1_std"], r["seeds"]),
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


def source_lines(rows: list[dict], table: int | None) -> list[str]:
    """Under the table: where the paper's numbers come from, and each row whose α the paper's sources dispute."""
    tables = f"Table {table}" if table else "Tables 1-3"
    lines = [f"Paper numbers: the paper's {tables} (Das et al., \"Altering Backward Pass Gradients improves "
             "Convergence\"), as transcribed in pgt_train/reference/paper_results.yaml; where its abstract, text, "
             "figures and the authors' README disagree: docs/fidelity.md#where-the-papers-own-sources-disagree."]
    disputed = {r["paper_row"]: r["paper_alpha_disputed"] for r in rows if r["paper_alpha_disputed"]}
    lines += [f"† {row}: the paper's sources disagree on this row's α ({why})." for row, why in disputed.items()]
    return ["", *lines]


CALIBRATION_HEADER = ["Run", "α", "n", "NLL", "ECE", "Brier", "Mean conf.", "NLL α·z", "ECE α·z", "Brier α·z",
                      "Mean conf. α·z", "T*", "NLL at T*", "ECE at T*"]
CALIBRATION_NOTE = (
    "Calibration of the final epoch on the validation set, mean over seeds: of the deployed softmax(z) and, for "
    "PGT runs, of softmax(α·z), the distribution PGT trains towards the targets. NLL = val cross-entropy; ECE over "
    "15 equal-width confidence bins; Brier summed over classes (0-2); Mean conf. = mean max-probability. T*: the "
    "temperature minimising the NLL of softmax(z / T) on one fixed half of val (grid 2^(k/16), 1/16-64); NLL and "
    "ECE at T* are measured on the other half only (pgt_train/calibration.py).")


def calibration_lines(rows: list[dict]) -> list[str]:
    shown = [r for r in rows if not absent(r.get("val_ece"))]
    if not shown:
        return []
    lines = ["", "## Calibration", "", "| " + " | ".join(CALIBRATION_HEADER) + " |",
             "|" + "---|" * len(CALIBRATION_HEADER)]
    for r in shown:
        values = [fmt(r[k], digits=3) for k in ("val_loss", "val_ece", "val_brier", "val_conf_mean", "val_nll_alpha",
                                                "val_ece_alpha", "val_brier_alpha", "val_conf_mean_alpha",
                                                "val_temp_fit", "val_nll_tscaled", "val_ece_tscaled")]
        alpha = "—" if r["alpha"] is None else f"{r['alpha']:g}"
        lines.append("| " + " | ".join([r["group"], alpha, str(r["seeds"]), *values]) + " |")
    return [*lines, "", CALIBRATION_NOTE]


ABLATION_HEADER = ["Arm", "Run", "α", "form", "LR", "wd", "n", "Train top-1", "Test top-1", "Δ test vs (a)",
                   "ECE", "ECE α·z", "T*", "ECE at T*"]


def ablation_lines(rows: list[dict], groups: list[Group]) -> list[str]:
    """One table per PGT group that has arms (report.ablations): (a)-(d) and the baseline, side by side."""
    by_label = {r["group"]: r for r in rows}
    lines = []
    for row_group, arms in find_arms(groups):
        a = by_label[row_group.label]
        lines += ["", f"### {row_group.label}: α {a['alpha']:g}", "", "| " + " | ".join(ABLATION_HEADER) + " |",
                  "|" + "---|" * len(ABLATION_HEADER)]
        for letter, group in arms.items():
            r, s = by_label[group.label], group.settings
            diff = r["test_top1"] - a["test_top1"] if letter != "a" else None
            cells = [f"({letter}) {ARM_NAMES[letter]}" if letter != "baseline" else ARM_NAMES[letter], r["group"],
                     "—" if r["alpha"] is None else f"{r['alpha']:g}", s.get("pgt.form", "backward"),
                     f"{s['optim.lr']:.4g}", f"{s['optim.weight_decay']:.4g}", str(r["seeds"]),
                     fmt_seeds(r["train_top1"], r["train_top1_std"], r["seeds"]),
                     fmt_seeds(r["test_top1"], r["test_top1_std"], r["seeds"]), fmt(diff, sign=True, digits=3),
                     *(fmt(r[k], digits=3) for k in ("val_ece", "val_ece_alpha", "val_temp_fit", "val_ece_tscaled"))]
            lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["", "## Ablation: temperature and step size (pgt_train/ablation.py)", "",
            "(b) must equal (a) to round-off (docs/what-pgt-is.md); (c) keeps PGT's temperature and drops its step "
            "size, (d) the reverse. Δ test vs (a): difference of the seed means.", *lines]


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
    folder_notes = run_notes(groups)
    if folder_notes:
        lines += ["", "### Notes on run folders", "", *[f"- {n}" for n in folder_notes]]
    return lines


def run_notes(groups: list[Group]) -> list[str]:
    """What load_run noted about the rows of every run read, duplicates included."""
    return [note for g in groups for run in (*g.runs, *(dup for dup, _ in g.duplicates)) for note in run.notes]


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
             "seeds where n > 1.", "", f"## {title}", "", format_table(shown),
             *(source_lines(shown, table) if paper_rows else []), "", EXPLANATION,
             *calibration_lines(rows), *ablation_lines(rows, groups), *notes(rows, groups, paper_rows=paper_rows), *figure_lines(plots, plots_note),
             "## Run folders", "", *[f"- {g.label}: {', '.join(str(r.path) for r in g.runs)}" for g in groups]]
    if skipped_runs:
        lines += ["", "### Run folders not reported (no result)", "", *[f"- {s}" for s in skipped_runs]]
    return "\n".join(lines) + "\n"
