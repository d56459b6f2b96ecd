"""One typed config shared by every command.

    >>> cfg = load_config(overrides=["selection.sample_num=500", "optim.lr=1e-3"])   # defaults ← --set
    >>> cfg.selection.sample_num, cfg.optim.lr
    (500, 0.001)
    >>> load_config(overrides=["selection.sample_nmu=500"])
    Traceback (most recent call last):
    ...
    dcs_cli.errors.ConfigError: unknown config key 'selection.sample_nmu'; valid keys in selection: ...
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as out_dir:
    ...     save_resolved(cfg, out_dir).name          # what every run folder and checkpoint keeps
    'config.yaml'

With a path, `load_config(path, overrides)` reads that YAML file under the overrides, as

    dcs train --config configs/synthetic.yaml --set selection.sample_num=500

does; `base` (a checkpoint's saved config) goes under both. Each component owns its section (a dataclass
in its own package, every field documented with `opt`); this module composes them, loads YAML, applies
`--set a.b=value` overrides and validates. Unknown keys and wrong types raise `ConfigError` naming the
dotted key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

# Each component's package owns its section; `opt`/`require` live in config_fields to avoid import cycles.
from dcs_cli.config_fields import opt, require  # noqa: F401 - re-exported for section modules
from dcs_cli.data.config import DataConfig
from dcs_cli.errors import ConfigError
from dcs_cli.fsutil import missing
from dcs_cli.models.config import HeadConfig, ModelConfig
from dcs_cli.paramserver.config import ParamServerConfig
from dcs_cli.selection.config import SelectionConfig
from dcs_cli.train.config import DistConfig, OptimConfig, OutputConfig


@dataclass
class Config:
    """The whole configuration; one section per component."""

    data: DataConfig = opt(DataConfig(), "where training and validation data come from")
    model: ModelConfig = opt(ModelConfig(), "backbone and embedding size")
    head: HeadConfig = opt(HeadConfig(), "classifier head: softmax, cosface or arcface")
    selection: SelectionConfig = opt(SelectionConfig(), "which classes each mini-batch trains")
    optim: OptimConfig = opt(OptimConfig(), "optimiser, schedule and epochs")
    paramserver: ParamServerConfig = opt(ParamServerConfig(), "the class store as a server")
    dist: DistConfig = opt(DistConfig(), "multi-process and multi-node settings")
    output: OutputConfig = opt(OutputConfig(), "where results go and how often")


# --------------------------------------------------------------------------------------------- typing


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float) or raise ConfigError."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not valid; choose one of: {', '.join(map(str, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of keys; got {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            number = float(value)  # PyYAML (YAML 1.1) reads `1e-4` as a string
        if number is not None:
            if not math.isfinite(number):  # no setting means anything at inf or nan
                raise ConfigError(f"{key} = {value!r} must be a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        kind = ("a boolean" if isinstance(value, bool) else "a date" if isinstance(value, (date, datetime))
                else "a number" if isinstance(value, (int, float)) else None)
        if kind:  # YAML changed the text (0123 → 83, yes → True): what the user meant is lost, so ask
            raise ConfigError(f"{key} = {value!r}: YAML reads this value as {kind}, not text; quote it "
                              f"in the config file, e.g. {key.rsplit('.', 1)[-1]}: \"...\"")
    elif tp is Any:
        return value
    raise ConfigError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; valid keys{' in ' + prefix if prefix else ''}: "
                              f"{', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required field
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


# --------------------------------------------------------------------------------------------- loading


def _field_type(keys: list[str]):
    """The annotation of the config field at `keys`, or None when they name no field."""
    tp = Config
    for key in keys:
        if not dataclasses.is_dataclass(tp) or key not in (hints := _hints(tp)):
            return None
        tp = hints[key]
    return tp


def _is_text(tp) -> bool:
    """True for `str` and `Optional[str]` fields."""
    return tp is str or (get_origin(tp) in (Union, types.UnionType) and set(get_args(tp)) == {str, type(None)})


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (['a', 'b'], value); the value is read as YAML (`1e-3`, `true`, `[21, 27]`), except
    that a text field takes the text as given (`data.train_list=0123` stays '0123') unless it is quoted."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set selection.sample_num=1000")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key must be dotted names like optim.lr")
    if _is_text(_field_type(key.split("."))) and not raw.strip().startswith(("'", '"')):
        return key.split("."), raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _duplicate_key(node, seen_nodes: set | None = None) -> str | None:
    """Where a mapping of the composed YAML `node` (no object is constructed) gives a key twice, or None
    (PyYAML's loaders would keep the last value silently); `<<: *base` merge keys may be overridden."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of a node already walked
        return None
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                mark = first.setdefault((key_node.tag, key_node.value), key_node.start_mark)
                if mark is not key_node.start_mark:
                    return (f"line {key_node.start_mark.line + 1}: key {key_node.value!r} appears twice in one "
                            f"mapping (first on line {mark.line + 1}); keep one")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        for child in children:
            found = _duplicate_key(child, seen_nodes)
            if found:
                return found
    return None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} {missing(path)}; pass a YAML file to --config (see configs/)")
    try:
        text = path.read_text(encoding="utf-8-sig")
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if duplicate:
            raise ConfigError(f"{path} {duplicate}")
        data = yaml.safe_load(text)  # plain data only: a config file never runs code
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8); pass a config from configs/ or "
                          "a run's config.yaml") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    return data


def config_from_dict(data: dict) -> Config:
    cfg = _from_dict(Config, data)
    validate(cfg)
    return cfg


# Keys a checkpoint's saved config may hold that dcs no longer has; dropped from `base` so the run resumes.
RETIRED_KEYS = {("selection", "fill_correction")}


def _without_retired(base: dict) -> dict:
    data = dict(base)
    for section, key in RETIRED_KEYS:
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section] = {k: v for k, v in data[section].items() if k != key}
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None, values: dict | None = None) -> Config:
    """Defaults ← `base` (e.g. a checkpoint's config) ← YAML file ← `--set` overrides ← `values` (typed
    values by dotted key, e.g. a command's own options: {"dist.nproc": 2}), then validate once."""
    data: dict = _without_retired(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    patches = [parse_override(text) for text in overrides or []]
    patches += [(key.split("."), value) for key, value in (values or {}).items()]
    for keys, value in patches:
        patch: dict = value
        for key in reversed(keys):
            patch = {key: patch}
        data = _merge(data, patch)
    return config_from_dict(data)


def validate(cfg) -> None:
    """Run every section's `validate(key)` so that impossible values are named by their dotted key."""

    def walk(obj, prefix: str):
        check = getattr(obj, "validate", None)
        if callable(check):
            check(prefix)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}.{f.name}" if prefix else f.name)

    walk(cfg, "")


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_resolved(cfg, folder: str | Path) -> Path:
    """Write the resolved config as `folder/config.yaml` (atomically)."""
    from dcs_cli.fsutil import write_text_atomic

    target = Path(folder) / "config.yaml"
    write_text_atomic(target, dump_yaml(cfg))
    return target


def describe(cls=Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every field, for docs; a test checks that none lacks its help."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
