"""Reading recipe files that may be hostile: only a regular file of bounded size is opened, and the YAML is parsed
by a SafeLoader that refuses aliases, deep nesting and duplicate keys. Every refusal is a one-line ConfigError
naming the file (and line), raised before anything is written."""
from __future__ import annotations

import collections.abc
import os
import re
import stat
from pathlib import Path
from typing import Optional

import yaml

from pgt_train.config.errors import ConfigError

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


def parse_yaml(text: str, where: str):
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


def new_budget() -> dict:
    """What one load may read in all, shared by read_yaml calls: {"files": n, "bytes": n} left."""
    return {"files": MAX_LOAD_FILES, "bytes": MAX_LOAD_BYTES}


def read_yaml(path: Path, budget: Optional[dict] = None) -> dict:
    """The top-level mapping of a YAML file (empty for an empty file), read with read_text and RecipeLoader.
    `budget` (new_budget()) is shared by every file of one load."""
    text = read_text(path)
    if budget is not None:
        budget["files"] -= 1
        budget["bytes"] -= len(text)
        if budget["files"] < 0 or budget["bytes"] < 0:
            raise ConfigError(f"{path}: `base:` reads more than {MAX_LOAD_FILES} files or "
                              f"{MAX_LOAD_BYTES // 1024} KiB in all (a `base:` that lists the same files over and over?)")
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override_value(key: str, raw: str):
    """The value of a `key=raw` override read as YAML with RecipeLoader's refusals; text that is not YAML stays a
    string (the type check then names the key if a string is wrong there)."""
    try:
        return yaml.load(raw, Loader=RecipeLoader) if raw.strip() else None  # RecipeLoader is a yaml.SafeLoader
    except RefusedYAML as e:
        raise ConfigError(f"override {key}: {e.problem}") from None
    except (yaml.YAMLError, ValueError, OverflowError):
        return raw
