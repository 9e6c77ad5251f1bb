"""The paper's rows: numbers from pgt_train/reference/paper_results.yaml, settings from the recipes that
configs/paper/index.yaml links to each row, under each reading (configs/reading/); and which row a group equals."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pgt_train import config
from pgt_train.errors import UserError
from pgt_train.report.model import IGNORED_AGAINST_PAPER_ROWS, Group

PAPER_RESULTS = Path(__file__).resolve().parents[1] / "reference" / "paper_results.yaml"


@dataclass(frozen=True)
class PaperRow:
    id: str  # T<table>#<row>
    table: int
    numbers: dict  # the row of paper_results.yaml: train, test (and gap, note)
    readings: dict  # reading name -> the row recipe's defining settings under that reading
    alpha_disputed: str = ""  # the paper_results.yaml `disagreements` entry that disputes this row's α, if any


@dataclass(frozen=True)
class RowMatch:
    row: PaperRow
    reading: str
    diffs: list = field(default_factory=list)  # (key, ours, the row's), ignored keys aside; empty: comparable


def find_configs(given: Path | None) -> Path | None:
    """The configs/ folder holding paper/index.yaml: --configs, else the repository's (the package's parent in a
    source checkout), else ./configs (the Docker image's working folder); None when there is none."""
    if given is not None:
        if not (given / "paper" / "index.yaml").is_file():
            raise UserError(f"--configs {given}: no paper/index.yaml in it (pass the repository's configs/ folder)")
        return given
    for candidate in (Path(__file__).resolve().parents[2] / "configs", Path("configs")):
        if (candidate / "paper" / "index.yaml").is_file():
            return candidate
    return None


def reading_overlays(configs: Path) -> dict:
    """Reading name -> overlay file; {"recipe": None} (the recipes as they are) when there are no reading files."""
    names = getattr(config, "READINGS", ("paper", "code"))
    found = {name: configs / "reading" / f"{name}.yaml" for name in names}
    return {name: path for name, path in found.items() if path.is_file()} or {"recipe": None}


def alpha_disputes(paper: dict) -> dict:
    """Row id -> "id: reading" of the disagreement (paper_results.yaml) over that row's α."""
    return {row: f"{d['id']}: {d['reading']}" for d in paper.get("disagreements", []) if d["about"] == "alpha"
            for row in d["rows"]}


def load_paper_rows(configs: Path | None, *, table: int | None) -> list[PaperRow]:
    """Every row of the asked table (all three when None), its recipe read under each reading."""
    if configs is None:
        return []
    return list(_paper_rows(configs.resolve(), table, _yaml_stamp(configs.resolve())))


def _yaml_stamp(configs: Path) -> tuple:
    """(path, mtime, size) of every YAML file the rows are read from: an edited recipe is read again."""
    files = sorted([PAPER_RESULTS, *configs.rglob("*.yaml")])
    return tuple((str(p), st.st_mtime_ns, st.st_size) for p in files for st in [p.stat()])


@functools.lru_cache(maxsize=4)
def _paper_rows(configs: Path, table: int | None, stamp: tuple) -> tuple[PaperRow, ...]:
    # Reading ~60 recipes with their bases, twice over, costs seconds in pure-Python YAML; a process that
    # reports more than once (tests, a notebook) reads them once. `stamp` is only the cache key.
    paper = yaml.safe_load(PAPER_RESULTS.read_text())
    disputed = alpha_disputes(paper)
    index = yaml.safe_load((configs / "paper" / "index.yaml").read_text())
    overlays = reading_overlays(configs)
    rows = []
    for n in [table] if table else [1, 2, 3]:
        numbers = {r["row"]: r for r in paper[f"table{n}"]}
        for entry in index[f"table{n}"]:
            recipe = configs.parent / entry["recipe"]
            readings = {name: config.defining_settings(config.load(recipe, overlays=[path] if path else []))
                        for name, path in overlays.items()}
            row_id = f"T{n}#{entry['row']}"
            rows.append(PaperRow(row_id, n, numbers[entry["row"]], readings, disputed.get(row_id, "")))
    return tuple(rows)


def match_row(group: Group, rows: list[PaperRow]) -> RowMatch | None:
    """The first row (Tables 1, 2, 3 in turn) whose recipe the group equals on every defining setting but
    IGNORED_AGAINST_PAPER_ROWS, under some reading; else the nearest row, with the differences; None without paper
    rows."""
    candidates = [RowMatch(row, reading, config.diff_defining(group.settings, identity,
                                                              ignore=IGNORED_AGAINST_PAPER_ROWS))
                  for row in rows for reading, identity in row.readings.items()]
    return min(candidates, key=lambda m: len(m.diffs), default=None)


def comparable(match: RowMatch | None) -> bool:
    return match is not None and not match.diffs
