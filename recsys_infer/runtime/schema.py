"""JSON to frozen dataclasses and back, checked field by field against the type annotations.

The bundle's manifest is read and written through this codec only, so a wrong type anywhere
(``"M": "16"``, ``"towers": []``, ``true`` where a number belongs) is refused with the path of
the field, what was expected and what was found, instead of surfacing later as an
``AttributeError``. Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Any``,
``StrEnum`` subclasses, dataclasses, ``X | None``, ``tuple[X, ...]`` and ``Mapping[str, X]``.
A dataclass with a field named ``extra`` keeps the JSON fields it does not know there (newer
writers may add fields; an older reader keeps them when it writes the manifest back).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


class SchemaError(ValueError):
    """A JSON value does not fit the annotation it is read into (``path`` says where)."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(cls: type[T], data: object, path: str) -> T:
    """``data`` (parsed JSON) as an instance of the dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise SchemaError(f"{path}: expected an object, found {_kind(data)}")
    hints = _hints(cls)  # type: ignore[arg-type]
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name == "extra":
            continue
        if name in data:
            kwargs[name] = _value(hints[name], data[name], f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{path}.{name}: required, but missing")
    unknown = {k: v for k, v in data.items() if k not in fields}
    if "extra" in fields:
        kwargs["extra"] = unknown
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        head, sep, rest = str(e).partition(": ")
        if sep and head in fields:  # a check on one field: name it in the path
            raise SchemaError(f"{path}.{head}: {rest}") from e
        raise SchemaError(f"{path}: {e}") from e


def _value(tp: Any, value: object, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, found {_kind(value)}")
        return tuple(_value(args[0], v, f"{path}[{n}]") for n, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise SchemaError(f"{path}: expected an object, found {_kind(value)}")
        return {str(k): _value(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, path)  # type: ignore[arg-type]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in tp)
            raise SchemaError(f"{path}: expected one of {choices}, found {value!r:.60}") from None
    return _scalar(tp, value, path)


def _scalar(tp: type, value: object, path: str) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a programming error in a schema class
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    if not ok:
        raise SchemaError(f"{path}: expected {_kind(tp())}, found {_kind(value)}")
    return value


def encode(value: Any) -> Any:
    """A dataclass (and what it holds) as plain JSON values; ``None`` fields are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name == "extra":
                out.update({k: encode(x) for k, x in v.items() if k not in out})
            elif v is not None:
                out[f.name] = encode(v)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    return value
