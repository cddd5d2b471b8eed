"""The item catalogue: ids, the text each item is encoded from, and its attributes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from recsys_infer.errors import BundleError, DataError


@dataclass(frozen=True)
class Item:
    """One catalogue item. ``attributes`` keeps the source columns (genres, brand, year, ...)."""

    item_id: str
    text: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id:
            raise ValueError(f"item_id must be a non-empty string, got {self.item_id!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"item {self.item_id!r} has an empty text")
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "text": self.text, "attributes": dict(self.attributes)}


class Catalog:
    """An ordered collection of items. ``item_id in catalog`` asks by id.

    Read-only to its users. The engine edits its catalogue (``upsert``, ``remove``) while it
    holds its writer lock; nothing else should.
    """

    def __init__(self, items: Iterable[Item]) -> None:
        self._by_id: dict[str, Item] = {}
        for item in items:
            if item.item_id in self._by_id:
                raise DataError(f"item id {item.item_id!r} appears twice in the catalogue")
            self._by_id[item.item_id] = item
        self._order: tuple[Item, ...] | None = None

    def __len__(self) -> int:
        return len(self._by_id)

    def _items(self) -> tuple[Item, ...]:
        if self._order is None:
            self._order = tuple(self._by_id.values())
        return self._order

    def __getitem__(self, i: int) -> Item:
        return self._items()[i]

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items())

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return list(self._by_id)

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self._items()]

    def get(self, item_id: str) -> Item:
        return self._by_id[item_id]

    def items(self, item_ids: Iterable[str]) -> list[Item]:
        return [self._by_id[i] for i in item_ids]

    def upsert(self, items: Iterable[Item]) -> None:
        """Add new items and replace existing ones (by id); new ones go to the end."""
        for item in items:
            self._by_id[item.item_id] = item
        self._order = None

    def remove(self, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            del self._by_id[item_id]
        self._order = None

    def write_jsonl(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for item in self._items():
                f.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")

    @classmethod
    def read_jsonl(cls, path: Path) -> Catalog:
        items: list[Item] = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    items.append(Item(row["item_id"], row["text"], row.get("attributes", {})))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
                    raise BundleError(f"{path}, line {line_no}: not a catalogue row ({e})") from e
        return cls(items)
