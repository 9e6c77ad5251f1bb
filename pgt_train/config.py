"""The run's configuration: a frozen dataclass tree loaded from YAML.

A recipe is a YAML file whose `base:` (one path or a list, relative to the file) is merged first, in
order; dotted overrides from the command line (`optim.lr=0.2 pgt.alpha=null`) are applied last, their
values parsed as YAML. Unknown keys, wrong types and out-of-range values raise ConfigError with one line
that names the key (and the nearest valid one) or the file and line. Nothing is written before
`load` returns, so a bad config never leaves a run folder behind.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import math
import os
import re
import reprlib
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pgt_train.pgt import AUTHORS_FP16 as PGT_AUTHORS_FP16, IMPLS as PGT_IMPLS
from pgt_train.errors import UserError


class ConfigError(UserError):
    """A recipe or override the user must fix; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet50"  # any timm model name
    norm: str = "bn"  # bn | none (every norm layer replaced by identity, as the paper's non-BN ResNet-18)
    num_classes: int = 1000
    channels_last: Optional[bool] = None  # None: on for CUDA, off on the CPU
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    init_from: Optional[str] = None  # start from these weights (.pth checkpoint or .safetensors); --init-from
    # timm's default zero-inits the last BN gamma of every residual branch; the authors' code never did
    # (its guard tests the norm layer's class as if it were an instance: configs/reading/code.yaml)
    zero_init_last: bool = True


@dataclass(frozen=True)
class DemoConfig:
    """Procedurally generated JPEG ImageFolder written to data.root before training (no download)."""
    enabled: bool = False
    seed: int = 0  # the dataset's own seed: runs with different `seed` share one generated dataset
    classes: int = 10
    train_per_class: int = 300
    val_per_class: int = 60
    image_size: int = 72  # stored JPEG side; training crops data.img_size from it
    difficulty: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    root: Optional[str] = None  # ImageFolder root holding train/ and val/
    loader: str = "torchvision"  # torchvision | nvjpeg (decode on the device) | dali | synthetic
    batch_size: int = 1024  # GLOBAL batch: each of W processes takes batch_size / W per optimizer step
    accum_steps: int = 1  # micro-batches per optimizer step; the global batch stays batch_size
    workers: int = 8  # loader worker processes per rank
    img_size: int = 224  # train crop and val crop side
    val_resize: Optional[int] = None  # val resize before the center crop; None: img_size * 256 / 224
    # val resize filter: bilinear | bicubic | model (the authors' timm fork's default_cfg for model.name, its
    # crop_pct too when val_resize is null: bicubic for resnet50/101 and seresnet18/50, bilinear for resnet18;
    # see models.model_val_cfg). The authors validated through it (train.py:269-282, resnet.py:25-31)
    val_interpolation: str = "bilinear"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    # random_resized: RandomResizedCrop(img_size, crop_scale, crop_ratio) + flip (ImageNet) | pad_crop: a random
    # img_size crop of the image zero-padded by img_size / 8 + flip (CIFAR, the authors' ext_dataloaders.py:674-679);
    # pad_crop: data.loader torchvision only
    train_crop: str = "random_resized"
    train_size: int = 12800  # synthetic only: images per epoch
    val_size: int = 1000  # synthetic only
    dali_device: Optional[str] = None  # gpu | cpu; None: gpu when CUDA is present
    # data.loader nvjpeg's JPEG decoder (pgt_train/data/decoders.py): auto (the first that imports) or a backend
    decoder: str = "auto"
    skip_corrupt: bool = True  # an undecodable image is skipped with a warning (False: stop with an error)
    demo: DemoConfig = field(default_factory=DemoConfig)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.4  # absolute peak LR for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # False: timm's default, no decay on norm parameters and biases


@dataclass(frozen=True)
class SchedConfig:
    name: str = "cosine"  # step | cosine
    epochs: int = 100  # total, warmup and cooldown included
    warmup_epochs: int = 5  # linear from warmup_lr to optim.lr
    warmup_lr: float = 4e-4
    milestones: tuple[int, ...] = (30, 60, 90)  # step only: epochs (counted from 0, warmup included)
    gamma: float = 0.1  # step only: LR factor at each milestone
    min_lr: float = 0.0  # cosine only: LR at the end of the cosine (and through the cooldown)
    update: str = "step"  # step: LR set every optimizer step | epoch: held for each epoch (timm's t_in_epochs)
    cooldown_epochs: int = 0  # cosine only: the last N of `epochs` held at min_lr (timm's cooldown)
    # cosine only. true: the cosine starts when warmup ends and spans the epochs left; false: the cosine is
    # a function of the epoch counted from 0 and warmup overwrites its first warmup_epochs (timm's default)
    warmup_prefix: bool = True
    # the authors' loop: epoch 0 at the schedule's value for epoch 0, every later epoch e at its value for e + 1
    # (train.py:398 increments the epoch, :426 then steps the scheduler to epoch + 1); false: epoch e at e
    epoch_shift: bool = False


@dataclass(frozen=True)
class PGTConfig:
    alpha: Optional[float] = None  # in (0, 1]; None: PGT off (plain cross-entropy)
    # exact (Eq. 8) | authors (Eq. 8 on fp16-rounded p, as the authors' fp16 runs computed it) |
    # official (the paper's appendix hook itself; right only if loss scale == N^2). See pgt.IMPLS.
    impl: str = "exact"
    # impl authors only: which of the hook's fp16 steps are reproduced. p: p as the fp16 gradient carried it |
    # target: also the smoothed target built and added in fp16 (resnet.py:833-837) | hook: also the power, sum,
    # division and p' - q rounded to fp16 (resnet.py:839-843). See pgt.AUTHORS_FP16.
    authors_fp16: str = "p"


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class ClipConfig:
    mode: str = "none"  # none | norm | value | agc (timm's dispatch_clip_grad, on unscaled gradients)
    value: float = 1.0  # max norm, max |g|, or AGC's clipping factor lambda


@dataclass(frozen=True)
class AmpConfig:
    dtype: str = "fp16"  # fp16 (with GradScaler) | bf16 | none; the CPU always trains in fp32


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 50  # steps between host syncs for progress and non-finite checks
    compile: bool = False  # torch.compile the model
    progress: bool = True  # rank 0 progress bar
    max_nonfinite_steps: int = 100  # consecutive non-finite losses before the run stops
    checkpoint_every: int = 0  # steps between mid-epoch last.pth writes; 0: end of epoch only
    # DDP: the longest a collective may wait for another rank (a frozen or lost one) before the job ends with
    # exit 1 and a line naming it; also the longest rank 0 may take alone (a checkpoint save) while others wait
    dist_timeout_s: int = 600


@dataclass(frozen=True)
class DiagConfig:
    """The paper's Figs. 5-8 diagnostics, measured on rank 0 (see diagnostics.py)."""
    interval: int = 200  # optimizer steps between filter/feature norm snapshots; 0: off
    zero_threshold: float = 1e-3  # a filter or feature channel whose L2 norm is below this is "zeroed out"


@dataclass(frozen=True)
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    pgt: PGTConfig = field(default_factory=PGTConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    amp: AmpConfig = field(default_factory=AmpConfig)
    run: RunConfig = field(default_factory=RunConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)


CHOICES = {
    "model.norm": ("bn", "none"),
    "data.loader": ("torchvision", "nvjpeg", "dali", "synthetic"),
    "data.dali_device": ("gpu", "cpu", None),
    # auto, then decoders.BACKENDS' names (not imported: the data package imports this module;
    # tests/test_config.py holds the two lists equal)
    "data.decoder": ("auto", "torchvision", "torchcodec", "pil", "nvimgcodec"),
    "sched.name": ("step", "cosine"),
    "sched.update": ("step", "epoch"),
    "pgt.impl": PGT_IMPLS,  # one list, kept in pgt.py beside the implementations
    "pgt.authors_fp16": PGT_AUTHORS_FP16,
    "data.val_interpolation": ("bilinear", "bicubic", "model"),
    "data.train_crop": ("random_resized", "pad_crop"),
    "clip.mode": ("none", "norm", "value", "agc"),
    "amp.dtype": ("fp16", "bf16", "none"),
    "run.device": ("auto", "cpu", "cuda"),
}

# The range of every numeric key (ints and floats; a list's elements each; null is always allowed where the key
# is Optional): "[lo, hi]" with ( or ) for an open end, 2^k for powers of two. One table for all of them: a new
# numeric key without an entry fails tests/test_config.py. Checks that relate two keys follow in _validate_*.
RANGES = {
    "seed": "[0, 2^63)",
    "model.num_classes": "[2, 100000]",  # ImageNet-21k has 21,841; 10^8 would exhaust memory building the head
    "data.batch_size": "[1, 2^20]",
    "data.accum_steps": "[1, 1024]",
    "data.workers": "[0, 256]",
    "data.img_size": "[8, 4096]",
    "data.val_resize": "[8, 8192]",  # and >= data.img_size: the center crop must fit inside the resized image
    "data.crop_scale": "(0, 1]",
    "data.crop_ratio": "(0, 100]",
    "data.train_size": "[1, 2^30]",
    "data.val_size": "[1, 2^30]",
    "data.demo.seed": "[0, 2^63)",
    "data.demo.classes": "[2, 1000]",
    "data.demo.train_per_class": "[1, 100000]",
    "data.demo.val_per_class": "[1, 100000]",
    "data.demo.image_size": "[16, 1024]",
    "data.demo.difficulty": "[0, 1]",
    # LRs: any positive float32 (a diverging LR is the non-finite check's job, exit 3; tests drive it with 1e30)
    "optim.lr": "(0, 1e30]",
    "optim.momentum": "[0, 1)",
    "optim.weight_decay": "[0, 1]",
    "sched.epochs": "[1, 100000]",
    "sched.warmup_epochs": "[0, 100000]",
    "sched.warmup_lr": "[0, 1e30]",
    "sched.milestones": "[1, 100000]",
    "sched.gamma": "(0, 1]",
    "sched.min_lr": "[0, 1e30]",
    "sched.cooldown_epochs": "[0, 100000]",
    "pgt.alpha": "(0, 1]",  # pgt.check_alpha's rule (tests/test_config.py holds them together)
    "loss.label_smoothing": "[0, 1)",  # not torch's [0, 1]: at 1 the target is uniform and nothing is learned
    "clip.value": "(0, 1e6]",
    "run.log_interval": "[1, 2^31]",
    "run.max_nonfinite_steps": "[1, 2^31]",
    "run.checkpoint_every": "[0, 2^31]",
    "run.dist_timeout_s": "[1, 86400]",
    "diag.interval": "[0, 2^31]",
    "diag.zero_threshold": "[0, 1e6]",
}


def _bound(text: str) -> float:
    base, _, exp = text.partition("^")
    return int(base) ** int(exp) if exp else float(text)


@functools.lru_cache(maxsize=None)
def interval(text: str) -> tuple[float, float, bool, bool]:
    """"[0, 1)" -> (0, 1, False, True): (lo, hi, lo open, hi open)."""
    m = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])", text)
    if m is None:
        raise ValueError(f"not an interval: {text!r}")
    return _bound(m[2]), _bound(m[3]), m[1] == "(", m[4] == ")"


def in_range(value, text: str) -> bool:
    lo, hi, lo_open, hi_open = interval(text)
    return (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)


# ---------------------------------------------------------------------------------------------
# YAML files, base inheritance, overrides


# Limits that keep a hostile recipe from hanging or exhausting the machine; real recipes are a few KiB, a few
# files and 3 levels deep. Every file read counts against one load (a `base:` diamond re-reads its files).
MAX_YAML_BYTES = 256 * 1024  # one file
MAX_LOAD_BYTES = 1024 * 1024  # every file of one load together
MAX_LOAD_FILES = 64
MAX_YAML_DEPTH = 32  # nested mappings and lists


class RefusedYAML(yaml.MarkedYAMLError):
    """YAML that parses but is refused: an alias, nesting past MAX_YAML_DEPTH, a duplicate key."""


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader for recipes. It also reads 1e-4 and 5e4 as floats (YAML 1.1 wants 1.0e-4; users type 1e-4),
    and refuses aliases (`*name`: a few hundred bytes of nested aliases expand to a tree no merge can walk),
    nesting past MAX_YAML_DEPTH (the composer recurses) and a key given twice in one mapping."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise RefusedYAML(problem="aliases (*name) are not allowed in a recipe; write the values out, or "
                              "share them through `base:`", problem_mark=self.peek_event().start_mark)
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise RefusedYAML(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                  problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        first: dict = {}  # key -> where it was first given
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, collections.abc.Hashable):
                continue  # a list or mapping as a key: SafeLoader refuses it ("found unhashable key"), with its line
            if key in first:
                raise RefusedYAML(problem=f"duplicate key '{key}' (first given on line {first[key].line + 1})",
                                  problem_mark=key_node.start_mark)
            first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _parse_yaml(text: str, where: str):
    """The YAML value of `text`, or ConfigError naming `where` (a file, or an override) and the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # a yaml.SafeLoader (no aliases, depth and key checks)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{at}: {problem}" if isinstance(e, RefusedYAML) else f"{at}: malformed YAML: {problem}") from None
    except (ValueError, OverflowError) as e:  # a scalar PyYAML cannot convert: an int of 5,000 digits, a bad date
        raise ConfigError(f"{where}: malformed YAML: {str(e).splitlines()[0][:200]}") from None


def _is_devnull(st: os.stat_result) -> bool:
    null = os.stat(os.devnull)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _check_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: is {_kind(st.st_mode)}, not a YAML file")
    if st.st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {st.st_size} bytes, over the {MAX_YAML_BYTES // 1024} KiB a recipe may have")


def read_text(path: Path) -> str:
    """A config file's text. Only a regular file of at most MAX_YAML_BYTES is opened (/dev/null reads as empty):
    a FIFO would block forever and /dev/zero never ends. Checked before opening (open() itself can block or
    have side effects on a device) and again on the open file, which is opened non-blocking for the case
    where the path became a FIFO in between."""
    try:
        st = os.stat(path)
        if _is_devnull(st):
            return ""
        _check_file(path, st)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            _check_file(path, os.fstat(fd))
            data = f.read(MAX_YAML_BYTES + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: over the {MAX_YAML_BYTES // 1024} KiB a recipe may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_yaml(path: Path, budget: Optional[dict] = None) -> dict:
    """The top-level mapping of a YAML file (empty for an empty file), read with read_text and RecipeLoader.
    `budget` ({"files": n, "bytes": n} left) is shared by every file of one load."""
    text = read_text(path)
    if budget is not None:
        budget["files"] -= 1
        budget["bytes"] -= len(text)
        if budget["files"] < 0 or budget["bytes"] < 0:
            raise ConfigError(f"{path}: `base:` reads more than {MAX_LOAD_FILES} files or "
                              f"{MAX_LOAD_BYTES // 1024} KiB in all (a `base:` that lists the same files over and over?)")
    data = _parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_tree(path: Path, seen: tuple[Path, ...] = (), budget: Optional[dict] = None) -> dict:
    budget = {"files": MAX_LOAD_FILES, "bytes": MAX_LOAD_BYTES} if budget is None else budget
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
        merged = _merge(merged, _load_tree(path.parent / base, seen + (path,), budget))
    return _merge(merged, data)


def _apply_override(tree: dict, item: str) -> dict:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like key.sub=value, e.g. optim.lr=0.2")
    try:
        value = yaml.load(raw, Loader=RecipeLoader) if raw.strip() else None  # RecipeLoader: a yaml.SafeLoader
    except RefusedYAML as e:
        raise ConfigError(f"override {key.strip()}: {e.problem}") from None
    except (yaml.YAMLError, ValueError, OverflowError):
        value = raw  # not YAML: the string itself (the type check names the key if a string is wrong there)
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return _merge(tree, nested)


# ---------------------------------------------------------------------------------------------
# dict -> dataclasses, with type checks


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Checks `value` against the annotation `tp`; ints are accepted for floats, lists for tuples."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {reprlib.repr(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {reprlib.repr(list(value))}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {reprlib.repr(value)} ({type(value).__name__})")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else f" (valid: {', '.join(names)})"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
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


def _validate_sched(s: SchedConfig) -> None:
    if s.warmup_epochs >= s.epochs:
        raise ConfigError(f"sched.warmup_epochs: {s.warmup_epochs} must be below sched.epochs ({s.epochs})")
    if s.name == "cosine" and s.warmup_epochs + s.cooldown_epochs >= s.epochs:
        raise ConfigError(f"sched.cooldown_epochs: warmup ({s.warmup_epochs}) + cooldown ({s.cooldown_epochs}) leave "
                          f"no cosine epochs in sched.epochs ({s.epochs}); the cooldown is counted inside sched.epochs")
    if list(s.milestones) != sorted(set(s.milestones)):
        raise ConfigError(f"sched.milestones: must be increasing positive epochs, got {list(s.milestones)}")


def _fail(key: str, why: str):
    raise ConfigError(f"{key}: {why}")


def _validate(cfg: Config) -> None:
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            shown = ", ".join("null" if c is None else c for c in choices)
            _fail(key, f"'{value}' is not one of: {shown}")
    _validate_numbers(cfg)
    _validate_sched(cfg.sched)
    _validate_relations(cfg)
    _validate_data(cfg)


def _validate_numbers(cfg: Config) -> None:
    """Every number finite and inside its RANGES entry."""
    for key, shown, value in numeric_fields(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            _fail(shown, f"must be a finite number, got {value}")
        if key in RANGES and not in_range(value, RANGES[key]):
            _fail(shown, f"must lie in {RANGES[key]}, got {reprlib.repr(value)}")


def _validate_relations(cfg: Config) -> None:
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        _fail("optim.nesterov", "Nesterov needs optim.momentum > 0")


def _validate_data(cfg: Config) -> None:
    for key in ("crop_scale", "crop_ratio"):
        lo, hi = getattr(cfg.data, key)
        if lo > hi:
            _fail(f"data.{key}", f"must be [min, max] with min <= max, got {[lo, hi]}")
    if cfg.data.train_crop == "pad_crop" and cfg.data.loader in ("nvjpeg", "dali"):
        _fail("data.train_crop", f"pad_crop runs on the CPU transforms only: use data.loader: torchvision "
                                 f"(got {cfg.data.loader})")
    if cfg.data.val_resize is not None and cfg.data.val_resize < cfg.data.img_size:
        _fail("data.val_resize", f"{cfg.data.val_resize} is below data.img_size ({cfg.data.img_size}): the val "
                                 f"center crop must fit inside the resized image")
    if cfg.data.decoder != "auto" and cfg.data.loader != "nvjpeg":
        _fail("data.decoder", f"chooses data.loader nvjpeg's decoder; with data.loader {cfg.data.loader} it would "
                              f"be ignored: set data.loader: nvjpeg, or leave data.decoder at auto")
    if cfg.data.loader != "synthetic" and not cfg.data.root:
        _fail("data.root", f"is required for data.loader: {cfg.data.loader} (a folder holding train/ and val/)")
    demo = cfg.data.demo
    if demo.enabled and cfg.data.loader == "synthetic":
        _fail("data.demo.enabled", "the demo writes JPEG files; use data.loader: torchvision, nvjpeg or dali")
    if demo.enabled and demo.classes != cfg.model.num_classes:
        _fail("model.num_classes", f"is {cfg.model.num_classes} but data.demo.classes is {demo.classes}")


# ---------------------------------------------------------------------------------------------
# public API


def from_dict(tree: dict) -> Config:
    """Builds and validates a Config from a plain (already merged) dict."""
    cfg = _build(Config, tree, "")
    _validate(cfg)
    return cfg


READINGS = ("paper", "code")  # configs/reading/<name>.yaml: the paper's words, the authors' code
READINGS_DIR = Path(__file__).resolve().parents[1] / "configs" / "reading"


def reading_path(name: str) -> Path:
    """The overlay file of a named reading (`--reading paper|code`)."""
    if name not in READINGS:
        raise ConfigError(f"--reading: '{name}' is not one of: {', '.join(READINGS)}")
    path = READINGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"--reading {name}: {path} not found (the readings live in the repository's configs/reading/)")
    return path


def load(path: str | Path | None, overrides: list[str] = (), overlays: list[str | Path] = ()) -> Config:
    """Resolves a recipe file (with its bases), then overlay files, then dotted overrides into a validated Config.

    An overlay is a recipe-like YAML (its own `base:` allowed) merged over the whole recipe, e.g. a reading
    (configs/reading/code.yaml) that any table row can take; overrides still win over it.
    """
    tree = _load_tree(Path(path)) if path is not None else {}
    for overlay in overlays:
        tree = _merge(tree, _load_tree(Path(overlay)))
    for item in overrides:
        tree = _apply_override(tree, item)
    try:
        return from_dict(tree)
    except ConfigError as e:
        if overlays:
            path = f"{path or 'defaults'} + {' + '.join(str(o) for o in overlays)}"
        if overrides:
            shown = " ".join(o if len(o) <= 100 else f"{o[:60]}...({len(o)} characters)" for o in overrides)
            raise ConfigError(f"{e} [from {path or 'defaults'} with overrides {shown}]") from None
        raise ConfigError(f"{e} [in {path}]" if path else str(e)) from None


def to_dict(cfg: Config) -> dict:
    """Plain dict of builtins (tuples become lists) for YAML, checkpoints and reports."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
# what makes a run: the one definition that resume, pgt-report's seed groups, paper rows and baselines use

# Keys that only say where and how a run executes or what it logs, never what it trains. Every other key defines
# the run, so a key added later defines it unless it is listed here. A trailing "." names a whole section.
NOT_DEFINING = (
    "run.",  # folder, device, compile, progress, checkpoint cadence, non-finite patience
    "diag.",  # diagnostics measure the model; they do not change it
    "data.root",  # where the images lie; which data it is shows in model.num_classes, data.img_size, data.demo.*
    "data.workers", "data.dali_device", "data.decoder", "data.skip_corrupt",
    # The same global batch per optimizer step. Like the GPU count (which no config records), it changes only
    # how many images each BatchNorm sees at once.
    "data.accum_steps",
    "model.channels_last",  # memory layout
)


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
    return not any(key == p or (p.endswith(".") and key.startswith(p)) for p in NOT_DEFINING)


def _canonical(settings: dict) -> dict:
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
    return {key: value for key, value in _canonical(flat_settings(source)).items() if is_defining(key)}


def diff_defining(a: "Config | dict", b: "Config | dict", *, ignore: tuple = ()) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every defining key, less `ignore`, on which a and b differ; config order."""
    da, db = defining_settings(a), defining_settings(b)
    return [(key, da[key], db[key]) for key in da if key not in ignore and da[key] != db[key]]
