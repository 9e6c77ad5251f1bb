"""What makes a run: the one definition that resume, pgt-report's seed groups, paper rows and baselines use.
A key defines the run unless its field (or its section) says `defining=False` (schema.py)."""
from __future__ import annotations

import functools
from typing import Any

from pgt_train.config.schema import NOT_DEFINING, Config, to_dict

_NOT_DEFINING = frozenset(NOT_DEFINING)


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested mapping -> {"section.key": value}; lists become tuples so that settings can be compared and hashed."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def flat_settings(source: "Config | dict") -> dict:
    """Every key of a Config, or of a saved config tree (nested or dotted), as dotted key -> value. A tree from an
    older version gets today's defaults for the keys it lacks; keys today's Config no longer has are dropped."""
    given = flatten(to_dict(source) if isinstance(source, Config) else source)
    return {key: given.get(key, default) for key, default in _default_settings()}


@functools.lru_cache(maxsize=1)
def _default_settings() -> tuple:
    return tuple(flatten(to_dict(Config())).items())


def is_defining(key: str) -> bool:
    """Whether a dotted key defines the run; a key the schema does not know counts as defining."""
    return key not in _NOT_DEFINING


def canonical(settings: dict) -> dict:
    """Values that train the same run compare equal: which reader decodes an image folder (torchvision, dali, ...)
    does not define the run, synthetic images do; pgt.impl means nothing while PGT is off (plain cross-entropy)."""
    out = dict(settings)
    out["data.loader"] = "synthetic" if out["data.loader"] == "synthetic" else "image folder"
    if out["pgt.alpha"] is None:
        out["pgt.impl"] = None
    if out["pgt.impl"] != "authors":  # only `authors` reproduces fp16 steps
        out["pgt.authors_fp16"] = None
    return out


def defining_settings(source: "Config | dict") -> dict:
    """What makes a run: dotted key -> value for every defining key, `seed` included. Two configs with the same
    defining settings train the same run: resume requires it; pgt-report groups seeds on it less `seed`."""
    return {key: value for key, value in canonical(flat_settings(source)).items() if is_defining(key)}


def diff_defining(a: "Config | dict", b: "Config | dict", *, ignore: tuple = ()) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every defining key, less `ignore`, on which a and b differ; config order."""
    da, db = defining_settings(a), defining_settings(b)
    return [(key, da[key], db[key]) for key in da if key not in ignore and da[key] != db[key]]
