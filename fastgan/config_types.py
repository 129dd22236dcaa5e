"""The config's type checks: a value coerced to a dataclass field's annotated type (YAML and --set give ints for
floats, strings for 1e-4, lists for tuples), and a built config's fields checked against their metadata (choices,
min / gt / max, note), each error naming the field's dotted path."""
from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import reprlib
import typing
from typing import Any, Mapping, Union

from ._errors import ConfigError

# a value as error messages quote it, cut to a line: YAML aliases can nest a few hundred bytes of config into a
# value whose full repr runs to megabytes (each level of aliases multiplies it)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 20
_REPR.maxlevel = 3
SHOWN_MAX = 300


def _shown(value) -> str:
    try:
        text = _REPR.repr(value)
    except ValueError:
        # an integer past Python's 4300 digits of text (0x followed by 5000 f's): repr raised over the field's
        # error, which then named no field
        text = (f"an integer of {value.bit_length()} bits" if isinstance(value, int) else
                f"a {type(value).__name__} holding an integer too long to print")
    return text if len(text) <= SHOWN_MAX else f"{text[:SHOWN_MAX - 3]}..."


# torch takes sizes and seeds as int64_t: a larger Python int overflows inside torch with a message that names no
# field, so validation stops it here.
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType") or \
            type(tp).__name__ == "UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _type_name(tp) -> str:
    opt, inner = _is_optional(tp)
    if opt:
        return f"{_type_name(inner)} or null"
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {int: "integers", float: "numbers", str: "strings"}
            return "a list of " + plural.get(args[0], _type_name(args[0]))
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp, value, path: str):
    """value converted to type tp (YAML and --set give ints for floats, strings for 1e-4, lists for tuples)."""
    opt, inner = _is_optional(tp)
    if value is None:
        if opt:
            return None
        if dataclasses.is_dataclass(tp):
            return _from_dict(tp, {}, path)  # a section header with no keys under it (`run:`): all defaults
        raise ConfigError(f"{path}: must be {_type_name(tp)}, got null")
    tp = inner
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {len(value)} values {_shown(list(value))}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: must be true or false, got {_shown(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be an integer, got {_shown(value)}")
        if isinstance(value, numbers.Integral):  # numpy's integers too (fastgan.train's dict or TrainConfig)
            return int(value)
        num = _number(value)
        if num is not None and float(num).is_integer():
            return int(num)
        raise ConfigError(f"{path}: must be an integer, got {_shown(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be a number, got {_shown(value)}")
        num = _number(value)
        if num is None:
            raise ConfigError(f"{path}: must be a number, got {_shown(value)}")
        try:
            return float(num)
        except OverflowError:  # an integer past float's range (10**400): a traceback naming no field
            raise ConfigError(f"{path}: must be a finite number (a float: within about ±1.8e308), got "
                              f"{_shown(value)}") from None
    if tp is str:
        if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):  # a pathlib.Path for run.out_dir
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {_shown(value)}")
        if "\0" in value:  # no file name or choice holds one: the OS refused it later, naming no field
            raise ConfigError(f"{path}: must not hold a NUL character, got {_shown(value)}")
        return _builtin(value)  # np.str_, a (str, Enum) member: their characters
    return value


def _number(value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy's scalars too (np.float32)
        return value if isinstance(value, (int, float)) else float(value)
    if isinstance(value, str):
        try:
            return int(value, 10)  # exactly: float() would round 9007199254740993
        except ValueError:
            pass
        try:
            return float(value)  # a quoted number ("1e-4")
        except ValueError:
            return None
    return None


def _from_dict(cls, data, path: str):
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: must be a mapping of keys to values, got {_shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(_unknown_key(full, key, fields))
        kwargs[key] = _coerce(hints[key], value, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise ConfigError(msg if path and msg.startswith(path) else f"{path or 'config'}: {msg}") from None


def _unknown_key(full: str, key, fields) -> str:
    msg = f"{full}: unknown key; allowed keys: {', '.join(fields)}"
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    return msg + (f" (did you mean {close[0]!r}?)" if close else "")


def _check_value(tp, value, path: str, meta: Mapping) -> None:
    opt, inner = _is_optional(tp)
    if value is None:
        if not opt:
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got None")
        return
    tp = inner
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: must be a {tp.__name__}, got {type(value).__name__}")
        _check_tree(value, path)
        return
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, tuple):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(args) != len(value):
            raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown(value)}")
        for i, (a, v) in enumerate(zip(args, value)):
            _check_value(a, v, f"{path}[{i}]", meta)
        return
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(tp, lambda v: True)
    if not ok(value):
        raise ConfigError(f"{path}: must be {_type_name(tp)}, got {_shown(value)}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: must be one of {tuple(choices)}, got {_shown(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: must be a finite number, got {_shown(value)}")
        note = f" ({meta['note']})" if "note" in meta else ""
        low = ("[", meta["min"]) if "min" in meta else ("(", meta["gt"]) if "gt" in meta else None
        if low is not None and "max" in meta:
            inside = (value >= low[1] if low[0] == "[" else value > low[1]) and value <= meta["max"]
            if not inside:
                raise ConfigError(f"{path}: must be in {low[0]}{low[1]}, {meta['max']}]{note}, got {_shown(value)}")
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{path}: must be >= {meta['min']}{note}, got {_shown(value)}")
        if "gt" in meta and not value > meta["gt"]:
            raise ConfigError(f"{path}: must be > {meta['gt']}{note}, got {_shown(value)}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{path}: must be <= {meta['max']}{note}, got {_shown(value)}")
        if isinstance(value, int) and value > INT64_MAX:
            raise ConfigError(f"{path}: must be <= {INT64_MAX} (2**63 - 1, the largest integer torch takes), "
                              f"got {_shown(value)}")
        if isinstance(value, int) and value < INT64_MIN:
            raise ConfigError(f"{path}: must be >= {INT64_MIN} (-2**63, the smallest integer torch takes), "
                              f"got {_shown(value)}")


def _check_tree(obj, path: str = "") -> None:
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(hints[f.name], getattr(obj, f.name), f"{path}.{f.name}" if path else f.name, f.metadata)


def check_section(obj, path: str) -> None:
    """The field checks of validate() on one section (e.g. a ModelConfig given to fastgan.models directly)."""
    _check_tree(obj, path)


def _builtin(v):
    """numpy's scalars and str subclasses as the builtins, Paths as strings (a TrainConfig built in Python may hold
    them: YAML cannot write them); anything else as it is."""
    if v is None or type(v) in (bool, int, float, str):
        return v
    if isinstance(v, str):
        return str.__str__(v)  # the characters (str() of a (str, Enum) member is 'Name.member')
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, os.PathLike) and isinstance(os.fspath(v), str):
        return os.fspath(v)
    return v
