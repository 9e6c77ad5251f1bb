"""The data model every other report module shares: a run, a group of seeds, a figure's record, and the settings
in which runs may differ and still be compared. Imports nothing from the rest of the report package."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgt_train import config

# Defining keys in which runs may differ and still be: seeds of one group; the run of a paper row (the paper
# reports single runs; pgt.impl is a column, the same run in other arithmetic); a PGT group and its baseline.
# pgt.authors_fp16 says which fp16 steps `authors` follows: part of the arithmetic, like pgt.impl.
IMPL_KEYS = ("pgt.impl", "pgt.authors_fp16")
IGNORED_IN_SEED_GROUPS = ("seed",)
IGNORED_AGAINST_PAPER_ROWS = ("seed", *IMPL_KEYS)
IGNORED_AGAINST_BASELINES = ("seed", "pgt.alpha", *IMPL_KEYS)
CLIP_NAMES = {"norm": "GC", "value": "value", "agc": "AGC"}  # the paper's names for norm clipping and AGC


@dataclass(frozen=True, eq=False)
class Run:
    path: Path
    settings: dict  # config.flat_settings of its config.yaml: every key, defaults where an older run lacks one
    columns: dict  # summary.csv column -> np.ndarray over epochs (NaN where empty)
    notes: tuple = ()  # what the report should say about this folder's rows (a dropped half-written row, ...)


@dataclass(frozen=True, eq=False)
class Group:
    label: str
    runs: tuple  # of Run: one per distinct seed, equal in every other defining setting
    duplicates: tuple = ()  # of (Run, the Run in `runs` with its seed): the same run again, not counted

    @property
    def settings(self) -> dict:
        return self.runs[0].settings


@dataclass(frozen=True)
class Plot:
    file: str  # name inside the report folder
    caption: str  # what it shows and which paper figure it mirrors
    skipped: str = ""  # why it was not drawn; empty when it was


def trained_epochs(run: Run) -> int:
    """The last epoch this run recorded: its epoch column, not its row count (a run continued from another
    folder's checkpoint holds the later epochs only)."""
    return int(run.columns["epoch"][-1])


def identity_key(settings: dict, *, ignore: tuple = ()) -> tuple:
    """The defining settings less `ignore`, hashable: equal keys, same experiment."""
    return tuple((k, v) for k, v in config.defining_settings(settings).items() if k not in ignore)


def alpha_value(settings: dict) -> float:
    """α for plotting: PGT off is plain cross-entropy, the same as α = 1."""
    alpha = settings["pgt.alpha"]
    return 1.0 if alpha is None else float(alpha)


def clip_text(settings: dict) -> str:
    mode = settings["clip.mode"]
    return "" if mode == "none" else f"{CLIP_NAMES[mode]} {settings['clip.value']:g}"
