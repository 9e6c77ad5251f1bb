"""The table as data: one dict per group, report.csv's columns (absent values None); tables.py renders them."""
from __future__ import annotations

import numpy as np

from pgt_train import calibration

from pgt_train.report.model import Group, clip_text, trained_epochs
from pgt_train.report.paper import PaperRow, RowMatch, match_row
from pgt_train.report.stats import difference, find_baseline, finals, mean_std, versus_paper

SHOWN_DIFFS = 4  # differing settings named per not-comparable group; the rest are counted


def describe_group(group: Group) -> dict:
    s = group.settings
    return {"group": group.label, "runs": ";".join(str(r.path) for r in group.runs),
            "duplicates": ";".join(str(r.path) for r, _ in group.duplicates),
            "model": s["model.name"], "norm": s["model.norm"], "sched": s["sched.name"], "alpha": s["pgt.alpha"],
            "impl": s["pgt.impl"] if s["pgt.alpha"] is not None else None, "lr": s["optim.lr"],
            "label_smoothing": s["loss.label_smoothing"], "clip": clip_text(s), "batch": s["data.batch_size"],
            "epochs_trained": min(trained_epochs(r) for r in group.runs), "epochs": s["sched.epochs"],
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
    row = {"paper_row": None, "paper_alpha_disputed": None, "reading": None, "comparable": None,
           "nearest_row": None, "differs": None,
           "paper_train": None, "paper_test": None, "paper_train_diff": None, "paper_train_diff_se": None,
           "paper_test_diff": None, "paper_test_diff_se": None, "unfinished": None}
    if match is None:
        return row
    if match.diffs:
        return {**row, "comparable": "no", "nearest_row": match.row.id, "differs": format_diffs(match.diffs)}
    numbers = match.row.numbers
    row.update(paper_row=match.row.id, reading=match.reading, comparable="yes", paper_train=numbers["train"],
               paper_test=numbers["test"], paper_alpha_disputed=match.row.alpha_disputed or None)
    for name, column in (("train", "train_top1"), ("test", "val_top1")):
        row[f"paper_{name}_diff"], row[f"paper_{name}_diff_se"] = versus_paper(finals(group, column), numbers[name])
    trained, scheduled = min(trained_epochs(r) for r in group.runs), group.settings["sched.epochs"]
    if trained < scheduled:
        row["unfinished"] = f"trained {trained} of {scheduled} epochs"
    return row


def calibration_stats(group: Group) -> dict:
    """Final-epoch mean over seeds of the NLL (val_loss) and every calibration column; NaN where a run has none."""
    return {name: float(np.mean(finals(group, name))) for name in ("val_loss", *calibration.COLUMNS)}


def table_rows(groups: list[Group], *, rows: list[PaperRow], table: int | None) -> list[dict]:
    """One dict per group: the groups comparable with a paper row first when --table (in the paper's row order)."""
    out = []
    for group in groups:
        out.append({**describe_group(group), **accuracy_stats(group, find_baseline(group, groups)),
                    **paper_stats(group, match_row(group, rows)), **calibration_stats(group)})
    if table:
        order = {row.id: i for i, row in enumerate(rows)}
        out.sort(key=lambda r: (r["comparable"] != "yes", order.get(r["paper_row"], 0)))
    return out
