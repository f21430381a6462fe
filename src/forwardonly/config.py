"""Typed configs: dataclasses loaded from YAML plus ``key=value`` overrides.

Every config in forwardonly is a (possibly nested) dataclass. :func:`load_config`
reads a YAML file, applies dotted ``key=value`` overrides from the command line,
converts each value to the field's type, and rejects unknown keys with the list
of valid ones. Errors name the file and line of the offending key.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-4

    @dataclass
    class Cfg:
        optim: Optim = field(default_factory=Optim)
        steps: int = 100

    cfg = load_config(Cfg, "run.yaml", ["optim.lr=3e-5", "steps=10"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import UserError


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value, tp, key: str, loc: str):
    """Convert ``value`` (from YAML or an override string) to type ``tp``."""
    tp, optional = _strip_optional(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):  # e.g. float | Literal["auto"]: a choice, else the rest
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        choices = [c for a in args if typing.get_origin(a) is typing.Literal for c in typing.get_args(a)]
        if value in choices:
            return value
        errors = []
        for a in args:
            if typing.get_origin(a) is typing.Literal:
                continue
            try:
                return _coerce(value, a | None if optional else a, key, loc)
            except UserError as e:
                errors.append(e)
        shown = " or ".join([*(getattr(a, "__name__", str(a)) for a in args
                               if typing.get_origin(a) is not typing.Literal), *map(repr, choices)])
        raise UserError(f"{loc}: {key}={value!r} is not a valid {shown}")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional or tp is Any:
            return None
        raise UserError(f"{loc}: {key}=None is not allowed (expected {getattr(tp, '__name__', tp)})")
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{loc}: {key}={value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key, loc) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise UserError(f"{loc}: {key} must be a mapping, got {value!r}")
        return dict(value)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{loc}: {key}={value!r} is not a valid {getattr(tp, '__name__', tp)}"
        ) from None
    return value


def _lines(node, prefix="") -> dict[str, int]:
    """Map dotted keys of a YAML mapping node to their 1-based line numbers."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_lines(v, key + "."))
    return out


def _build(cls, data: dict, lines: dict[str, int], source: str, prefix: str = "", owner: str = "",
           also: list[str] = ()):
    if not isinstance(data, dict):
        raise UserError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    types_ = _field_types(cls)
    section = getattr(cls, "SECTION", None)
    own = {k: v for k, v in data.items() if k in types_ and k != section} if section else data
    kwargs = {}
    for key, value in own.items():
        full = f"{prefix}{key}"
        loc = f"{source}:{lines[full]}" if full in lines else source
        if key not in types_:
            valid = ", ".join(sorted(prefix + k for k in [*types_, *also]))
            where = f" of {owner}" if owner else ""
            raise UserError(f"{loc}: unknown key '{full}'{where}; valid keys: {valid}")
        tp, optional = _strip_optional(types_[key])
        if dataclasses.is_dataclass(tp):  # a nested section (``None`` turns an optional one off)
            if isinstance(value, str):
                value = None if value.strip().lower() in ("none", "null", "") else yaml.safe_load(value)
            if value is None and optional:
                kwargs[key] = None
            else:
                kwargs[key] = _build(tp, value or {}, lines, source, full + ".")
        else:
            kwargs[key] = _coerce(value, types_[key], full, loc)
    if section:  # the other keys are the typed section's, chosen by the values above (e.g. optim.name)
        try:
            sec_cls, what, fixed = cls.section_type(data)
        except ValueError as e:
            key = f"{prefix}name"
            raise UserError(f"{source}:{lines[key]}: {e}" if key in lines else f"{source}: {e}") from None
        rest = {k: v for k, v in data.items() if k not in own}
        kwargs[section] = _build(sec_cls, {**fixed, **rest}, lines, source, prefix, owner=what,
                                 also=[k for k in types_ if k != section])
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        msg = str(e)
        if prefix and msg.split("=", 1)[0] in types_:  # "bits=3 is not supported" -> "model.quant.bits=3 ..."
            msg = prefix + msg
        line = lines.get(msg.split("=", 1)[0]) if "=" in msg else None  # "optim.lr=-1.0 must be ...": its line
        raise UserError(f"{source}:{line}: {msg}" if line else f"{source}: {msg}") from None


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        node = tree.get(p)
        if not isinstance(node, dict):
            node = tree[p] = {}
        tree = node
    tree[parts[-1]] = value


def _named_section(cls, key: str) -> bool:
    """Whether dotted ``key`` of ``cls`` is a section (a nested dataclass) that has a ``name`` field."""
    tp = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return False
        tp = _field_types(tp).get(part)
    return dataclasses.is_dataclass(tp) and "name" in _field_types(tp)


def _shorthand(cls, tree, prefix: str = ""):
    """``model: NAME`` (or ``model=NAME``) as ``model: {name: NAME}`` for sections that have a name."""
    if cls is None or not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if _named_section(cls, key):
            v = {"name": v} if not isinstance(v, dict) and v is not None else _shorthand(cls, v, key + ".")
        out[k] = v
    return out


def parse_overrides(overrides: list[str], cls=None) -> dict:
    """``["a.b=1", "model=x"]`` as a nested dict; with ``cls``, ``section=NAME`` sets ``section.name``."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item or item.startswith("-"):
            raise UserError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if cls is not None and _named_section(cls, key):
            key += ".name"
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """Build a ``cls`` from YAML ``path`` (optional), ``base`` dict and ``overrides``.

    Raises :class:`UserError` naming the file and line for unknown keys, values
    of the wrong type, and values the dataclass's ``__post_init__`` rejects.
    """
    data: dict = dict(base or {})
    lines: dict[str, int] = {}
    source = "<config>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        text = read_text(path, "config")
        try:
            node = yaml.compose(text)
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a config must be a mapping of keys to values")
        lines = _lines(node)
        data = _merge(data, _shorthand(cls, loaded))
    if overrides:
        over = parse_overrides(overrides, cls)
        data = _merge(data, over)
        for k in _flatten(over):
            lines[k] = lines.get(k, 0) or 0
        source_over = source + " (with overrides)" if path is not None else "command line"
        try:
            return _build(cls, data, {k: v for k, v in lines.items() if v}, source)
        except UserError as e:
            if any(str(e).find(f"'{k}'") >= 0 or f" {k}=" in str(e) for k in _flatten(over)):
                raise UserError(str(e).replace(source, source_over, 1)) from None
            raise
    return _build(cls, data, lines, source)


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file's content as UTF-8 (see :func:`forwardonly.io.read_text_file`)."""
    from .io import read_text_file

    return read_text_file(path, what)


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def to_dict(cfg) -> dict:
    """A config as plain data (for result JSON and checkpoints); a typed section's keys sit beside its
    owner's, as in YAML, so that the result loads back with :func:`load_config`."""
    out = {}
    section = getattr(type(cfg), "SECTION", None)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == section and value is not None:
            out.update(to_dict(value))
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, list) \
                else (list(value) if isinstance(value, tuple) else value)
    return out


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
