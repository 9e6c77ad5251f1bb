"""The ablation that separates PGT's two ingredients (docs/what-pgt-is.md): beside a PGT row (a),
(b) its exact twin: cross-entropy on α·z at every LR / α and weight decay × α (pgt.form temperature), equal to (a);
(c) the temperature alone: cross-entropy on α·z at the row's own LRs and weight decay;
(d) the step size alone: plain cross-entropy at the twin's LRs / α and weight decay × α.

`arms` gives each arm's overrides (scripts/reproduce.py, scripts/proxy_study.py run them); `classify` tells, from
a run's settings, which arm of a row it is (pgt-report's ablation tables). One definition for both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from pgt_train.config.twin import SCALED, scaled

ABLATIONS = ("temperature",)  # --ablation's choices
# The step-size keys: the twin's scaled keys less the clipping threshold, which acts on the gradient, not the step.
# (c) keeps the twin's threshold (it differs from (b) only in step size); (d) keeps the row's (its gradient is PGT's
# scale, not α times it).
STEP_KEYS = {key: power for key, (_, power) in SCALED.items() if not key.startswith("clip.")}
ARM_NAMES = {"a": "PGT (the row)", "b": "twin: CE on α·z, LR / α, wd × α", "c": "temperature alone: CE on α·z",
             "d": "step size alone: CE, LR / α, wd × α", "baseline": "baseline: CE"}
SUFFIXES = {"a": "", "b": "-twin", "c": "-temperature", "d": "-stepsize"}


@dataclass(frozen=True)
class Arm:
    letter: str  # a, b, c, d
    overrides: tuple  # key=value strings applied after the row's own
    suffix: str  # appended to the row's run folder


def _values(settings: dict, alpha: float, inverse: bool) -> list[str]:
    """key=value for every step key at the twin's value (or its inverse: the value whose twin is the row's)."""
    return [f"{key}={scaled(settings[key], alpha, -power if inverse else power):.12g}"  # 0.02, not 0.020000000000000004
            for key, power in STEP_KEYS.items()]


def arms(settings: dict) -> list[Arm]:
    """(a)-(d) for a PGT row's flat settings (config.flat_settings); [] when PGT is off. (c) is the twin of a row whose
    step keys were multiplied by α's inverse powers, so the twin's derivation lands on the row's own values."""
    alpha = settings["pgt.alpha"]
    if alpha is None:
        return []
    exact = ("pgt.impl=exact",) if settings["pgt.impl"] != "exact" else ()  # the twin's loss is the closed form
    return [Arm("a", (), SUFFIXES["a"]),
            Arm("b", ("pgt.form=temperature",), SUFFIXES["b"]),
            Arm("c", ("pgt.form=temperature", *exact, *_values(settings, alpha, inverse=True)), SUFFIXES["c"]),
            Arm("d", ("pgt.alpha=null", *_values(settings, alpha, inverse=False)), SUFFIXES["d"])]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def classify(row: dict, other: dict) -> Optional[str]:
    """Which arm of the PGT row `row` the settings `other` are ("b", "c", "d" or "baseline"), or None. Both are
    flat settings; the caller has checked that they agree on every defining setting outside ARM_KEYS."""
    alpha = row["pgt.alpha"]
    if alpha is None or row.get("pgt.form", "backward") != "backward":
        return None
    at_row = all(_close(other[k], row[k]) for k in STEP_KEYS)
    at_twin = all(_close(other[k], scaled(row[k], alpha, p)) for k, p in STEP_KEYS.items())
    if other["pgt.alpha"] is None:
        return "baseline" if at_row else "d" if at_twin else None
    if other["pgt.alpha"] != alpha or other.get("pgt.form") != "temperature":
        return None
    return "b" if at_twin else "c" if at_row else None


# Defining settings in which the arms of one row differ from it (with the seed and the PGT arithmetic)
ARM_KEYS = ("seed", "pgt.alpha", "pgt.form", "pgt.impl", "pgt.authors_fp16", *SCALED,
            *(f"pgt.twin_of.{name}" for name, _ in SCALED.values()))
