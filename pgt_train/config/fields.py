"""How a config key is declared: `param()` puts a key's default, choices, range, whether it defines a run and its
one-line doc on the dataclass field itself; `keys()` walks a dataclass tree and reads them back. The field's
annotation is the key's type. Everything else (validation, run identity, the tables) is derived from these."""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Iterator, NamedTuple, Optional


def param(default, *, choices: Optional[tuple] = None, range: Optional[str] = None, defining: bool = True,
          doc: str) -> Any:
    """A config key. `choices`: the values allowed (None among them where null is); `range`: "[lo, hi]" for every
    int or float the key holds (parse_range); `defining=False`: the key says only where or how a run executes."""
    if range is not None:
        parse_range(range)  # a malformed range fails when the schema is imported, not when a user hits it
    meta = {"choices": None if choices is None else tuple(choices), "range": range, "defining": defining, "doc": doc}
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, *, defining: bool = True, doc: str) -> Any:
    """A nested group of keys; `defining=False` makes every key under it non-defining."""
    return dataclasses.field(default_factory=cls, metadata={"defining": defining, "doc": doc})


class Key(NamedTuple):
    name: str  # dotted, e.g. "optim.lr"
    type: Any  # the field's annotation
    meta: typing.Mapping  # param()'s metadata
    defining: bool  # its own flag and every enclosing section's


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict:
    """A config dataclass's field annotations, resolved (they are strings under `from __future__ import annotations`);
    cached, as resolving them costs more than validating a whole recipe."""
    return typing.get_type_hints(cls)


def keys(cls: type, prefix: str = "", defining: bool = True) -> Iterator[Key]:
    """Every leaf key of a dataclass tree, in declaration order."""
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        name, tp = prefix + f.name, hints[f.name]
        flag = defining and f.metadata.get("defining", True)
        if dataclasses.is_dataclass(tp):
            yield from keys(tp, f"{name}.", flag)
        else:
            yield Key(name, tp, f.metadata, flag)


def number_type(tp) -> Optional[type]:
    """float where a value of annotation `tp` may hold a float (an int is accepted there too), else int where it
    may hold an int, else None (bool is not a number here). Looks inside Optional, unions and tuples."""
    inner = {number_type(a) for a in typing.get_args(tp)}  # a Literal's words and a tuple's ... give None
    for kind in (float, int):
        if tp is kind or kind in inner:
            return kind
    return None


def union_args(tp) -> tuple:
    """The members of `X | Y` or Optional[X]; () for any other annotation."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def _bound(text: str) -> float:
    base, _, exp = text.partition("^")
    return int(base) ** int(exp) if exp else float(text)


@functools.lru_cache(maxsize=None)
def parse_range(text: str) -> tuple[float, float, bool, bool]:
    """A range as written on a field: "[0, 1)" -> (0, 1, False, True), i.e. (lo, hi, lo open, hi open). A bracket
    ( or ) marks an open end; 2^k writes a power of two exactly."""
    m = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])", text)
    if m is None:
        raise ValueError(f"not a range: {text!r}")
    return _bound(m[2]), _bound(m[3]), m[1] == "(", m[4] == ")"


def in_range(value, text: str) -> bool:
    lo, hi, lo_open, hi_open = parse_range(text)
    return (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
