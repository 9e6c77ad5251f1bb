"""The run's configuration: a frozen dataclass tree loaded from YAML.

A recipe is a YAML file whose `base:` (one path or a list, relative to the file) is merged first, in order;
overlay files (a reading) next; dotted overrides from the command line (`optim.lr=0.2 pgt.alpha=null`) last,
their values parsed as YAML. Unknown keys, wrong types and out-of-range values raise ConfigError with one line
that names the key (and the nearest valid one) or the file and line.

    schema.py     the keys: one field each, with type, default, choices, range, identity flag and doc
    fields.py     param() and the walkers that read a field's declaration back; range syntax
    safe_yaml.py  reading files that may be hostile (size, file kind, aliases, depth, duplicate keys)
    compose.py    `base:`, overlays, overrides, readings, load()
    validate.py   dict -> Config: strict keys, types, choices, ranges, rules across keys
    identity.py   what makes a run (defining settings), for resume and reports
"""
from pgt_train.config.compose import (READINGS, READINGS_DIR, apply_override, derive, load, load_tree, merge,
                                      reading_path)
from pgt_train.config.errors import ConfigError
from pgt_train.config.fields import Key, number_type, in_range, keys, param, parse_range, section
from pgt_train.config.identity import canonical, defining_settings, diff_defining, flat_settings, flatten, is_defining
from pgt_train.config.safe_yaml import (MAX_LOAD_BYTES, MAX_LOAD_FILES, MAX_YAML_BYTES, MAX_YAML_DEPTH, RecipeLoader,
                                        RefusedYAML, read_text, read_yaml)
from pgt_train.config.schema import (CHOICES, NOT_DEFINING, RANGES, AmpConfig, ClipConfig, Config, DataConfig,
                                     DemoConfig, DiagConfig, LossConfig, ModelConfig, OptimConfig, PGTConfig,
                                     RunConfig, SchedConfig, to_dict, to_yaml)
from pgt_train.config.validate import build, coerce, from_dict, numeric_fields, validate

__all__ = [
    "READINGS", "READINGS_DIR", "apply_override", "derive", "load", "load_tree", "merge", "reading_path",
    "ConfigError", "Key", "number_type", "in_range", "keys", "param", "parse_range", "section",
    "canonical", "defining_settings", "diff_defining", "flat_settings", "flatten", "is_defining",
    "MAX_LOAD_BYTES", "MAX_LOAD_FILES", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "RecipeLoader", "RefusedYAML",
    "read_text", "read_yaml", "CHOICES", "NOT_DEFINING", "RANGES", "AmpConfig", "ClipConfig", "Config",
    "DataConfig", "DemoConfig", "DiagConfig", "LossConfig", "ModelConfig", "OptimConfig", "PGTConfig", "RunConfig",
    "SchedConfig", "to_dict", "to_yaml", "build", "coerce", "from_dict", "numeric_fields", "validate",
]
