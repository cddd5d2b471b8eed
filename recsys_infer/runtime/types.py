"""The value types the runtime speaks: a :class:`Query` in, :class:`Recommendation` (with its
:class:`Reason` list) out. Plain frozen data, validated on construction; no model needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsys_infer.errors import QueryError

from .options import check_text, id_list


@dataclass(frozen=True)
class Reason:
    """Why an item was recommended: a history item (``kind="history"``, ``source`` its id) or a
    word of the request (``kind="request"``) close to it, with their cosine ``similarity``."""

    kind: str
    source: str
    similarity: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "similarity": self.similarity}


@dataclass(frozen=True)
class Recommendation:
    """One recommended item, best first. ``score`` is the cosine between user and item;
    ``because`` is filled when the caller asked for explanations."""

    item_id: str
    score: float
    text: str
    attributes: Mapping[str, Any]
    because: tuple[Reason, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = {
            "item_id": self.item_id,
            "score": self.score,
            "text": self.text,
            "attributes": dict(self.attributes),
        }
        if self.because:
            out["because"] = [r.to_json() for r in self.because]
        return out


@dataclass(frozen=True, init=False)
class Query:
    """What is known about a user: recent history (item ids, oldest first) and/or a request."""

    history: tuple[str, ...]
    text: str | None

    def __init__(self, history: Sequence[str] | None = (), text: str | None = None) -> None:
        """``history`` is any list of ids (None for none); both are checked and normalised once
        here, so every caller (engine, batchers, HTTP) builds a query the same way."""
        ids = id_list(() if history is None else history, "history")
        request = None if text is None else check_text(text, "text", empty_ok=True).strip()
        if not ids and not request:
            raise QueryError("a query needs a history, a text request, or both; both were empty")
        object.__setattr__(self, "history", ids)
        object.__setattr__(self, "text", request or None)

    @classmethod
    def coerce(cls, value: Query | Mapping[str, Any]) -> Query:
        """Accept a :class:`Query` or a mapping with ``history`` and/or ``text``."""
        if isinstance(value, Query):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"history", "text"}
            if unknown:
                raise QueryError(
                    f"unknown request field(s) {sorted(unknown)}; a request has 'history' and/or 'text'"
                )
            return cls(value.get("history"), value.get("text"))
        raise QueryError(
            f"a request must be a Query or a mapping with 'history'/'text', got {type(value).__name__}"
        )
