"""The command line: `pgt-report RUN_DIR... [--out DIR] [--table 1|2|3] [--configs DIR]` (the package docstring
says what it reads and writes). Bad input: one line on stderr, exit 2, nothing written."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pgt_train.errors import UserError
from pgt_train.report.model import Group, Plot
from pgt_train.report.paper import find_configs, load_paper_rows
from pgt_train.report.rows import table_rows
from pgt_train.report.runs import group_runs, load_runs
from pgt_train.report.tables import format_report, run_notes, write_csv

PLOTS_EXTRA = 'pip install "pgt-train[report]"'


def draw_figures(groups: list[Group], *, out: Path) -> tuple[list[Plot], str]:
    """(plots, a note when none could be drawn). matplotlib is the optional `report` extra: imported only here."""
    try:
        figures = importlib.import_module("pgt_train.report.figures")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "matplotlib":
            raise
        return [], f"Figures not drawn: matplotlib is not installed ({PLOTS_EXTRA} to draw them)."
    return figures.draw_all(groups, out=out), ""


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
    for note in run_notes(groups):
        print(f"pgt-report: note: {note}", file=sys.stderr)
    if plots_note:
        print(f"pgt-report: {plots_note}", file=sys.stderr)
    drawn = sum(not p.skipped for p in plots)
    print(f"pgt-report: wrote {args.out / 'report.md'}, report.csv and {drawn} figures "
          f"({len(plots) - drawn} skipped) for {sum(len(g.runs) for g in groups)} runs in {len(groups)} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
