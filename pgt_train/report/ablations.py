"""The ablation groups of pgt-report: beside each PGT group (a), the groups that are its arms (pgt_train.ablation):
(b) the twin, (c) the temperature alone, (d) the step size alone, and the baseline. Matched on settings, never on
folder names: an arm agrees with its row on every defining setting outside ablation.ARM_KEYS."""
from __future__ import annotations

from pgt_train import ablation
from pgt_train.report.model import Group, identity_key

ORDER = ("a", "b", "c", "d", "baseline")


def find_arms(groups: list[Group]) -> list[tuple[Group, dict]]:
    """(PGT group, {arm letter: group}) for every PGT group (pgt.form backward) with at least one of (b)-(d)."""
    out = []
    for row in groups:
        if row.settings["pgt.alpha"] is None or row.settings.get("pgt.form", "backward") != "backward":
            continue
        key = identity_key(row.settings, ignore=ablation.ARM_KEYS)
        found = {"a": row}
        for other in groups:
            if other is row or identity_key(other.settings, ignore=ablation.ARM_KEYS) != key:
                continue
            letter = ablation.classify(row.settings, other.settings)
            if letter is not None and letter not in found:
                found[letter] = other
        if set(found) & {"b", "c", "d"}:
            out.append((row, {k: found[k] for k in ORDER if k in found}))
    return out
