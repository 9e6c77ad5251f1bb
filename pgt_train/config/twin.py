"""pgt.form temperature: PGT's exact twin, plain cross-entropy on α·z at every LR / α and weight decay × α.

Why it takes PGT's steps: d/dz CE(softmax(α·z), q) = α·(softmax(α·z) − q), α times PGT's gradient, and so is every
parameter gradient (backprop is linear in the logits' gradient). torch's SGD adds weight_decay·w to that gradient,
then momentum or Nesterov, then multiplies by the LR: all linear, so with weight_decay·α the twin's direction and
momentum buffer are α times PGT's, and LR / α makes every step equal. The schedule is linear in the LRs it holds
(warmup from warmup_lr, the cosine down to min_lr, the step schedule's gamma factors), so each of them is scaled.
Clipping sees the gradient before weight decay, α times PGT's, so its threshold is scaled by α too (norm clipping,
whose 1e-6 does not scale, clips the gradient divided by α: engine.clip_gradients).

derive() works on the validated config as a dict tree (config.load calls it) and is idempotent: the PGT-side values are kept in pgt.twin_of, and a
tree that already holds them (a run folder's config.yaml read back as a recipe, or by a resume) is checked, not
scaled again. Where the twin's steps are not PGT's to round-off, it refuses (docs/fidelity.md says why for each).
"""
from __future__ import annotations

import copy

from pgt_train.config.errors import ConfigError

# dotted key -> (the pgt.twin_of field that keeps its PGT-side value, power of α the twin multiplies it by).
# Every LR-like key of optim and sched must be here: tests/test_twin.py fails on one that is not.
SCALED = {
    "optim.lr": ("lr", -1),
    "sched.warmup_lr": ("warmup_lr", -1),
    "sched.min_lr": ("min_lr", -1),
    "optim.weight_decay": ("weight_decay", 1),
    "clip.value": ("clip_value", 1),
}
# timm's adaptive_clip_grad divides by max(‖g‖, 1e-6) per unit, and clips only where ‖g‖ >= λ·max(‖w‖, 1e-3): when
# the twin's λ·α is at least 1e-3, every clipped unit has ‖g‖ >= 1e-6 in both runs and the 1e-6 floor never acts
AGC_MIN_TWIN_FACTOR = 1e-3


def scaled(value: float, alpha: float, power: int) -> float:
    """The twin's value of a PGT-side setting: value / α or value × α (the one formula derive and its check use)."""
    return value / alpha if power < 0 else value * alpha


def check_exact(tree: dict) -> None:
    """ConfigError where the twin's steps would not be PGT's (the trainer's other settings are linear in the
    gradient or do not touch it: docs/fidelity.md lists them)."""
    clip = tree["clip"]
    if clip["mode"] == "agc" and clip["value"] < AGC_MIN_TWIN_FACTOR:
        raise ConfigError(f"clip.value: AGC's factor × pgt.alpha is {clip['value']:.3g} in the twin, below "
                          f"{AGC_MIN_TWIN_FACTOR:g}, where timm's 1e-6 floor on the gradient norm could act in one "
                          f"run and not the other; use a larger clip.value or pgt.alpha, or pgt.form backward")


def _recorded(tree: dict) -> dict:
    return {name: v for name, v in (tree["pgt"].get("twin_of") or {}).items() if v is not None}


def derive(tree: dict) -> dict:
    """The tree with pgt.form temperature's scaled values filled in and the PGT-side ones in pgt.twin_of.

    A key whose pgt.twin_of field is set is not scaled again; it must equal the twin of that field."""
    recorded, pgt = _recorded(tree), tree["pgt"]
    if pgt["form"] != "temperature":
        if recorded:
            raise ConfigError(f"pgt.twin_of: holds the PGT-side values of a temperature twin ({_shown(recorded)}), "
                              f"but pgt.form is {pgt['form']}; load the PGT recipe itself, or keep pgt.form temperature")
        return tree
    out, alpha = copy.deepcopy(tree), pgt["alpha"]
    for key, (name, power) in SCALED.items():
        section, leaf = key.split(".")
        value = out[section][leaf]
        if name not in recorded:
            out["pgt"]["twin_of"][name], out[section][leaf] = value, scaled(value, alpha, power)
        elif value != scaled(recorded[name], alpha, power):
            op = "/" if power < 0 else "×"
            raise ConfigError(
                f"{key}: {value!r} is not the twin of pgt.twin_of.{name} ({recorded[name]!r} {op} pgt.alpha {alpha!r} "
                f"= {scaled(recorded[name], alpha, power)!r}): this config's LRs and weight decay are already scaled "
                f"for pgt.form temperature; to change the PGT-side value pass {key}=<value> pgt.twin_of.{name}=null")
    check_exact(out)
    return out


def _shown(recorded: dict) -> str:
    return ", ".join(f"{name} {value!r}" for name, value in recorded.items())
