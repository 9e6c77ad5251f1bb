"""Composing a run's config: a recipe file with its `base:` chain, overlay files (a reading), then dotted
overrides from the command line, merged in that order into one dict and checked into a Config. Nothing is written
before `load` returns, so a bad config never leaves a run folder behind."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pgt_train.config.twin import derive as derive_twin
from pgt_train.config.errors import ConfigError
from pgt_train.config.safe_yaml import new_budget, parse_override_value, read_yaml
from pgt_train.config.schema import Config, to_dict
from pgt_train.config.validate import from_dict

READINGS = ("paper", "code")  # configs/reading/<name>.yaml: the paper's words, the authors' code
READINGS_DIR = Path(__file__).resolve().parents[2] / "configs" / "reading"


def reading_path(name: str) -> Path:
    """The overlay file of a named reading (`--reading paper|code`)."""
    if name not in READINGS:
        raise ConfigError(f"--reading: '{name}' is not one of: {', '.join(READINGS)}")
    path = READINGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"--reading {name}: {path} not found (the readings live in the repository's configs/reading/)")
    return path


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base`: mappings key by key, any other value replaced whole (a list too)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_tree(path: Path, seen: tuple[Path, ...] = (), budget: Optional[dict] = None) -> dict:
    """A recipe file merged over its `base:` files (each relative to the file naming it, merged in order)."""
    budget = new_budget() if budget is None else budget
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `base:` inherits from itself in a cycle")
    try:
        data = read_yaml(path, budget)
    except ConfigError as e:
        raise ConfigError(f"{e} (named in `base:` of {seen[-1]})" if seen else str(e)) from None
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: `base:` must be a path or a list of paths")
    merged: dict = {}
    for base in bases:
        merged = merge(merged, load_tree(path.parent / base, seen + (path,), budget))
    return merge(merged, data)


def apply_override(tree: dict, item: str) -> dict:
    """`tree` with one `key.sub=value` override merged in, the value read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like key.sub=value, e.g. optim.lr=0.2")
    nested: Any = parse_override_value(key.strip(), raw)
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return merge(tree, nested)


def derive(tree: dict) -> dict:
    """The one place where settings computed from other settings are filled in, e.g. the LRs and weight decay that
    pgt.form temperature implies. `tree` is a validated Config as a full dict (config.to_dict); the tree returned
    is validated again. It runs once per `load`, never in `from_dict`, so a saved config.yaml read back with
    from_dict is not derived twice; read back as a recipe (`--config run/config.yaml`) it is, so a derivation must
    recognise values it derived before (config/twin.py keeps them in pgt.twin_of). It raises ConfigError for a
    combination it cannot derive."""
    return derive_twin(tree)


def _where(path, overrides, overlays) -> str:
    """Where a bad value came from, for the end of the error line."""
    if overlays:
        path = f"{path or 'defaults'} + {' + '.join(str(o) for o in overlays)}"
    if overrides:
        shown = " ".join(o if len(o) <= 100 else f"{o[:60]}...({len(o)} characters)" for o in overrides)
        return f" [from {path or 'defaults'} with overrides {shown}]"
    return f" [in {path}]" if path else ""


def load(path: str | Path | None, overrides: list[str] = (), overlays: list[str | Path] = ()) -> Config:
    """Resolves a recipe file (with its bases), then overlay files, then dotted overrides into a validated Config.

    An overlay is a recipe-like YAML (its own `base:` allowed) merged over the whole recipe, e.g. a reading
    (configs/reading/code.yaml) that any table row can take; overrides still win over it.
    """
    tree = load_tree(Path(path)) if path is not None else {}
    for overlay in overlays:
        tree = merge(tree, load_tree(Path(overlay)))
    for item in overrides:
        tree = apply_override(tree, item)
    try:
        checked = to_dict(from_dict(tree))  # derive sees every key, defaults included, already validated
        return from_dict(derive(checked))
    except ConfigError as e:
        raise ConfigError(f"{e}{_where(path, overrides, overlays)}") from None
