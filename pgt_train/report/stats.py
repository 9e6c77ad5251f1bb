"""Statistics over a group's seeds: final values, mean ± sample std, the difference to a baseline or to the
paper's number with its standard error, and which group is a PGT group's baseline."""
from __future__ import annotations

import math
import statistics

from pgt_train.report.model import IGNORED_AGAINST_BASELINES, Group, Run, identity_key


def is_baseline(group: Group) -> bool:
    return group.settings["pgt.alpha"] is None or group.settings["pgt.alpha"] == 1.0


def find_baseline(group: Group, groups: list[Group]) -> Group | None:
    """The group with PGT off (α off before α = 1) equal to `group` in every defining setting but α and impl."""
    if is_baseline(group):
        return None
    def key(g: Group) -> tuple:
        return identity_key(g.settings, ignore=IGNORED_AGAINST_BASELINES)
    candidates = [g for g in groups if is_baseline(g) and key(g) == key(group)]
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
