"""What a recommendation call may ask for, and the checks every input from a user goes through.

:class:`RecommendOptions` is the one definition of the options: the engine, the micro-batcher
(which groups requests by it) and the HTTP models all build one, and it validates itself once.
:class:`Where` is the attribute filter as data (hashable, and readable by an index that can
push it down); any callable of an item's attributes works too.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from recsys_infer.errors import QueryError

#: A predicate on an item's attributes: True keeps the item.
AttributeFilter = Callable[[Mapping[str, Any]], bool]

Scalar = str | int | float | bool

#: Explanations encode the request's words and compare every result with every source: count
#: an explained result as this many plain ones when bounding a request's cost.
EXPLAIN_COST = 8

#: Attributes of an added item: at most this deep (an object or list is one level) ...
MAX_ATTRIBUTE_DEPTH = 8
#: ... and at most this many bytes as JSON.
MAX_ATTRIBUTE_BYTES = 16_384


def excerpt(value: object, limit: int = 60) -> str:
    """A short, printable, ASCII-safe excerpt of ``value`` for an error message."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(value: object, what: str, *, empty_ok: bool = False) -> str:
    """``value`` if it is a string that can be encoded as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        raise QueryError(f"{what} must be a string, got {type(value).__name__} {excerpt(value, 30)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryError(
            f"{what} is not valid Unicode: a lone surrogate at position {e.start} ({excerpt(value)}); "
            "send UTF-8 text"
        ) from None
    if not empty_ok and not value.strip():
        raise QueryError(f"{what} must not be empty")
    return value


def as_list(value: object, expected: str, hint: str = "") -> list[Any]:
    """``value`` as a list, refused when it is one value rather than a collection of them (a
    string, bytes, a mapping, a number): the usual slip of passing one item for a list of one.
    ``expected`` says what was wanted (``"history must be a list of item ids"``)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise QueryError(f"{expected}, got {type(value).__name__} {excerpt(value, 30)}{hint}")
    return list(value)


def id_list(value: object, what: str) -> tuple[str, ...]:
    """A list of item ids (non-empty strings) as a tuple; a lone string or a number is refused."""
    ids = tuple(as_list(value, f"{what} must be a list of item ids", "; pass e.g. ['1', '50', '260']"))
    if _plain_ids(ids):  # the usual case, checked in bulk: a 10,000-id filter in a millisecond
        return ids
    for i in ids:
        if not isinstance(i, str) or not i:
            raise QueryError(
                f"{what} must hold non-empty strings, got {excerpt(i, 30)}; ids are strings throughout "
                "(write '42', not 42)"
            )
        check_text(i, f"an id in {what}")
    return ids


def _plain_ids(ids: tuple[Any, ...]) -> bool:
    """Whether every id is a string of valid Unicode that is not blank, tested on all at once
    (one pass each over types and blanks, and one joined encoding) rather than one by one."""
    if not ids:
        return True
    if set(map(type, ids)) != {str} or not all(map(str.strip, ids)):  # no empty or blank id
        return False
    try:
        "".join(ids).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_new_id(item_id: str) -> str:
    """An id for a new item: no control characters (a newline, a tab, NUL), which a URL path
    cannot carry back to ``DELETE /items/{id}`` and which break logs and CSV files."""
    bad = next((c for c in item_id if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise QueryError(
            f"item id {excerpt(item_id, 40)} holds the control character {bad!r}; ids are printable text"
        )
    return item_id


def check_attributes(attributes: object, item_id: str) -> dict[str, Any]:
    """An item's attributes if they are a JSON object within the depth and size limits."""
    if not isinstance(attributes, Mapping):
        raise QueryError(
            f"item {item_id!r:.40}: attributes must be a JSON object, got {type(attributes).__name__}"
        )
    if _depth(attributes, MAX_ATTRIBUTE_DEPTH + 1) > MAX_ATTRIBUTE_DEPTH:
        raise QueryError(
            f"item {item_id!r:.40}: attributes are nested deeper than {MAX_ATTRIBUTE_DEPTH} levels"
        )
    try:
        text = json.dumps(attributes, allow_nan=False, ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise QueryError(
            f"item {item_id!r:.40}: attributes must be JSON (objects with string keys, lists, strings, "
            f"finite numbers, booleans, null): {e}"
        ) from None
    if size > MAX_ATTRIBUTE_BYTES:
        raise QueryError(
            f"item {item_id!r:.40}: attributes take {size} bytes as JSON, over {MAX_ATTRIBUTE_BYTES}"
        )
    return dict(attributes)


def _depth(value: object, stop: int) -> int:
    """Nesting depth of lists and objects, counting no further than ``stop``."""
    if stop <= 0:
        return 0
    if isinstance(value, Mapping):
        return 1 + max((_depth(v, stop - 1) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max((_depth(v, stop - 1) for v in value), default=0)
    return 0


def _key(value: object) -> tuple[str, object] | None:
    """Values compared by JSON type too (``true`` is not ``1``); None for unhashable values."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null", None)
    return None


@dataclass(frozen=True)
class Where:
    """Keep items whose attribute ``key`` equals one of the wanted values, for every key; an
    attribute holding a list matches when it contains one of them."""

    conditions: tuple[tuple[str, frozenset[tuple[str, object]]], ...]

    @classmethod
    def of(cls, where: Mapping[str, Any]) -> Where:
        if not isinstance(where, Mapping):
            raise QueryError(f"where must be an object of attribute: value(s), got {type(where).__name__}")
        conditions = []
        for key, wanted in where.items():
            check_text(key, "a where key")
            values = wanted if isinstance(wanted, (list, tuple)) else [wanted]
            for v in values:
                if isinstance(v, str):
                    check_text(v, f"where[{key!r:.40}]", empty_ok=True)  # no lone surrogates
            keys = {_key(v) for v in values}
            if None in keys or any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise QueryError(
                    f"where[{key!r:.40}] must be a string, number or boolean, or a list of them; "
                    f"got {excerpt(wanted, 40)}"
                )
            conditions.append((key, frozenset(k for k in keys if k is not None)))
        return cls(tuple(sorted(conditions)))

    def __call__(self, attributes: Mapping[str, Any]) -> bool:
        for key, wanted in self.conditions:
            have = attributes.get(key)
            values = have if isinstance(have, list) else [have]
            if not any(_key(v) in wanted for v in values):
                return False
        return True


@dataclass(frozen=True)
class RecommendOptions:
    """How to recommend: ``k`` items, skipping the history's own items (``exclude_seen``) and
    ``exclude``, restricted to ``allow`` (an id allow-list) and to items ``where`` keeps, with
    explanations when ``explain``. Hashable: requests with equal options can share a batch."""

    k: int = 10
    exclude_seen: bool = True
    exclude: frozenset[str] = frozenset()
    allow: frozenset[str] | None = None
    where: Where | AttributeFilter | None = None
    explain: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be a positive integer, got {excerpt(self.k, 30)}")
        for name in ("exclude_seen", "explain"):
            if not isinstance(getattr(self, name), bool):
                raise QueryError(f"{name} must be true or false, got {excerpt(getattr(self, name), 30)}")
        exclude = () if self.exclude is None else self.exclude
        object.__setattr__(self, "exclude", frozenset(id_list(exclude, "exclude")))
        if self.allow is not None:
            object.__setattr__(self, "allow", frozenset(id_list(self.allow, "allow")))
        where = self.where
        if isinstance(where, Mapping):
            object.__setattr__(self, "where", Where.of(where))
        elif where is not None and not callable(where):
            raise QueryError(
                "where must map attributes to wanted values, or be a function of an item's attributes"
            )

    @classmethod
    def of(cls, options: RecommendOptions | None = None, **overrides: Any) -> RecommendOptions:
        """``options`` (default: the defaults) with ``overrides`` applied; unknown names refused."""
        if options is not None and not isinstance(options, RecommendOptions):
            raise QueryError(f"options must be a RecommendOptions, got {type(options).__name__}")
        if not overrides:  # the serving path: options already built, nothing to look up
            return options or DEFAULT_OPTIONS
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise QueryError(f"unknown option(s) {sorted(unknown)}; choose from {sorted(known)}")
        base = options or DEFAULT_OPTIONS
        return cls(**{**{f: getattr(base, f) for f in known}, **overrides})

    @property
    def cost(self) -> int:
        """Result rows this asks for, an explained one counted as :data:`EXPLAIN_COST`."""
        return self.k * (EXPLAIN_COST if self.explain else 1)


DEFAULT_OPTIONS = RecommendOptions()
