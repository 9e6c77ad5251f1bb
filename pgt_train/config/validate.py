"""A merged dict -> a checked Config: strict keys (with the nearest valid one), each value checked against its
field's type, choices and range, then the rules that relate two keys. Each failure is one ConfigError line that
names the key."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import reprlib
import typing

from pgt_train.config.errors import ConfigError
from pgt_train.config.fields import in_range, type_hints, union_args
from pgt_train.config.schema import CHOICES, RANGES, Config, SchedConfig


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _got(value) -> str:
    return f"got {reprlib.repr(value)} ({type(value).__name__})"


def _coerce_union(value, args: tuple, key: str):
    """None where the union allows it, else the first member that accepts the value."""
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    if len(inner) == 1:
        return coerce(value, inner[0], key)
    for tp in inner:
        try:
            return coerce(value, tp, key)
        except ConfigError:
            continue
    raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in inner)}, {_got(value)}")


def _coerce_tuple(value, args: tuple, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {reprlib.repr(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}: expected a list of {len(args)} values, got {reprlib.repr(list(value))}")
    return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def coerce(value, tp, key: str):
    """`value` checked against the annotation `tp`; ints are accepted for floats, lists for tuples, nothing else
    is converted (a bool is not an int, "8" is not a number)."""
    if union_args(tp):
        return _coerce_union(value, union_args(tp), key)
    origin = typing.get_origin(tp)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), key)
    if origin is typing.Literal:
        if any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            return value
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif tp in (int, bool, str) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, {_got(value)}")


def build(cls, data: dict, prefix: str = ""):
    """The dataclass `cls` from a nested dict; an unknown key names the nearest valid one."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else f" (valid: {', '.join(names)})"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def numeric_fields(node, prefix: str = ""):
    """(RANGES key, key as shown, value) of every int or float in the tree (bools not), a list's elements each."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from numeric_fields(value, f"{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, key, value
        elif isinstance(value, tuple):
            yield from ((key, f"{key}[{i}]", v) for i, v in enumerate(value)
                        if isinstance(v, (int, float)) and not isinstance(v, bool))


def _fail(key: str, why: str):
    raise ConfigError(f"{key}: {why}")


def _validate_fields(cfg) -> None:
    """Every key against its own field: its choices, and every number finite and inside its range."""
    for key, choices in CHOICES.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if value not in choices:
            _fail(key, f"'{value}' is not one of: {', '.join('null' if c is None else c for c in choices)}")
    for key, shown, value in numeric_fields(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            _fail(shown, f"must be a finite number, got {value}")
        if key in RANGES and not in_range(value, RANGES[key]):
            _fail(shown, f"must lie in {RANGES[key]}, got {reprlib.repr(value)}")


def _validate_sched(s: SchedConfig) -> None:
    if s.warmup_epochs >= s.epochs:
        _fail("sched.warmup_epochs", f"{s.warmup_epochs} must be below sched.epochs ({s.epochs})")
    if s.name == "cosine" and s.warmup_epochs + s.cooldown_epochs >= s.epochs:
        _fail("sched.cooldown_epochs", f"warmup ({s.warmup_epochs}) + cooldown ({s.cooldown_epochs}) leave no "
                                       f"cosine epochs in sched.epochs ({s.epochs}); the cooldown is counted inside "
                                       f"sched.epochs")
    if list(s.milestones) != sorted(set(s.milestones)):
        _fail("sched.milestones", f"must be increasing positive epochs, got {list(s.milestones)}")


def _validate_training(cfg: Config) -> None:
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        _fail("optim.nesterov", "Nesterov needs optim.momentum > 0")
    if cfg.model.dtype == "float64" and cfg.amp.dtype != "none":
        _fail("model.dtype", f"float64 parameters cannot train under amp.dtype {cfg.amp.dtype} (autocast would "
                             f"compute in half precision): set amp.dtype=none")
    if cfg.model.dtype == "float64" and cfg.data.loader == "dali":
        _fail("model.dtype", "float64 needs a loader that hands float64 images: data.loader dali emits float32 "
                             "or float16 only; use torchvision, nvjpeg or synthetic")
    if cfg.pgt.form == "temperature" and cfg.pgt.alpha is None:
        _fail("pgt.form", "temperature needs PGT on: set pgt.alpha (in (0, 1]), or pgt.form=backward")
    if cfg.pgt.form == "temperature" and cfg.pgt.impl != "exact":
        _fail("pgt.form", f"temperature is defined for pgt.impl exact only, got {cfg.pgt.impl}: set pgt.impl=exact")


def _validate_data(cfg: Config) -> None:
    data, demo = cfg.data, cfg.data.demo
    for key in ("crop_scale", "crop_ratio"):
        lo, hi = getattr(data, key)
        if lo > hi:
            _fail(f"data.{key}", f"must be [min, max] with min <= max, got {[lo, hi]}")
    if data.train_crop == "pad_crop" and data.loader in ("nvjpeg", "dali"):
        _fail("data.train_crop", f"pad_crop runs on the CPU transforms only: use data.loader: torchvision "
                                 f"(got {data.loader})")
    if data.val_resize is not None and data.val_resize < data.img_size:
        _fail("data.val_resize", f"{data.val_resize} is below data.img_size ({data.img_size}): the val "
                                 f"center crop must fit inside the resized image")
    if data.decoder != "auto" and data.loader != "nvjpeg":
        _fail("data.decoder", f"chooses data.loader nvjpeg's decoder; with data.loader {data.loader} it would "
                              f"be ignored: set data.loader: nvjpeg, or leave data.decoder at auto")
    if data.loader != "synthetic" and not data.root:
        _fail("data.root", f"is required for data.loader: {data.loader} (a folder holding train/ and val/)")
    if demo.enabled and data.loader == "synthetic":
        _fail("data.demo.enabled", "the demo writes JPEG files; use data.loader: torchvision, nvjpeg or dali")
    if demo.enabled and demo.classes != cfg.model.num_classes:
        _fail("model.num_classes", f"is {cfg.model.num_classes} but data.demo.classes is {demo.classes}")


def validate(cfg: Config) -> None:
    _validate_fields(cfg)
    _validate_sched(cfg.sched)
    _validate_training(cfg)
    _validate_data(cfg)


def from_dict(tree: dict) -> Config:
    """Builds and validates a Config from a plain (already merged) dict."""
    cfg = build(Config, tree)
    validate(cfg)
    return cfg
