"""Where the engine keeps the catalogue's items: their texts, attributes, vectors and the index.

:class:`ItemStore` is what the engine asks of it, by item id. Two stores answer it:

- :class:`LocalItems` (the default): the item index (:class:`~.index.HnswIndex`, or the exact
  one) in this process's memory, with the catalogue and the item vectors beside it. It is
  what a bundle's ``item_index.hnsw`` loads into.
- :class:`~.milvus.MilvusIndex`: a Milvus collection holding all of it, shared by every engine
  connected to it, so an edit through one is seen by all.

Neither is thread-safe on its own: the engine serialises writers against readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from recsys_infer.errors import BundleError, ConflictError, UnknownItemError

from .catalog import Catalog, Item
from .index import FilterTooNarrowError, Index
from .options import AttributeFilter

#: How an edit treats ids: ``add`` refuses known ones, ``update`` unknown ones, ``upsert`` neither.
EditMode = Literal["add", "update", "upsert"]

#: One search result: the item and its cosine with the user.
Hit = tuple[Item, float]


class ItemStore(Protocol):
    """What the engine needs to know about, search and edit the catalogue's items."""

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def ids(self) -> tuple[str, ...]: ...

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids in ``ids`` that are not in the catalogue, in order."""
        ...

    def items(self, ids: Sequence[str]) -> list[Item]: ...

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored item vectors, ``float32 (len(ids), dim)``."""
        ...

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        blocked: Sequence[frozenset[str]],
        allow: frozenset[str] | None = None,
        where: AttributeFilter | None = None,
    ) -> list[list[Hit]]:
        """The best ``k`` items for each row of ``vectors``, best first, skipping the ids in
        that row's ``blocked`` set, keeping only ``allow`` (when given) and the items ``where``
        accepts. Fewer than ``k`` only when fewer pass."""
        ...

    def write(self, items: Sequence[Item], vectors: np.ndarray, mode: EditMode) -> tuple[int, int]:
        """Store ``items`` with their vectors; returns (added, updated)."""
        ...

    def remove(self, ids: Sequence[str]) -> None: ...


def refuse_taken(taken: Sequence[str]) -> None:
    if taken:
        raise ConflictError(
            f"{len(taken)} id(s) are already in the catalogue (e.g. {taken[0]!r:.60}); use "
            'upsert_items (HTTP: "replace": true) to replace them'
        )


class VectorStore:
    """The item vectors by index label, for reads that must not go through the index (hnswlib
    copies vectors out slowly: 0.8 ms for a 50-item history, against 5 µs from an array).

    Starts on the bundle's ``item_vectors.npy`` memory-mapped (no resident cost until read) and
    moves to a growable in-memory array at the first edit.
    """

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self._rows = int(data.shape[0])
        self._owned = False

    def get(self, labels: Sequence[int]) -> np.ndarray:
        return np.asarray(self._data[list(labels)], dtype=np.float32)

    def put(self, labels: Sequence[int], vectors: np.ndarray) -> None:
        top = max(labels) + 1
        if not self._owned or top > self._data.shape[0]:
            grown = np.zeros((max(top, self._rows + self._rows // 4 + 16), self._data.shape[1]), np.float32)
            grown[: self._rows] = self._data[: self._rows]
            self._data, self._owned = grown, True
        self._data[list(labels)] = vectors
        self._rows = max(self._rows, top)

    def all(self) -> np.ndarray:
        return np.array(self._data[: self._rows], dtype=np.float32)  # a copy


class LocalItems:
    """The catalogue in this process: an index over labels, the item-id map (label -> id, None
    for a free slot), the catalogue and the item vectors by label."""

    def __init__(
        self,
        *,
        index: Index,
        catalog: Catalog,
        item_ids: Sequence[str | None],
        vectors: np.ndarray | None = None,
        dim: int | None = None,
    ) -> None:
        """``vectors``: the item vectors by label (default: read back from ``index``)."""
        live = [i for i in item_ids if i is not None]
        if len(live) != len(index):
            raise BundleError(f"the index holds {len(index)} items but the item-id map has {len(live)}")
        missing = [i for i in live if i not in catalog]
        if missing:
            raise BundleError(
                f"{len(missing)} indexed item ids are not in the catalogue, e.g. {missing[0]!r}"
            )
        self.index = index
        self.catalog = catalog
        self._ids: list[str | None] = list(item_ids)
        if vectors is None:
            labels = [n for n, i in enumerate(item_ids) if i is not None]
            first = index.vectors(labels[:1])
            vectors = np.zeros((len(self._ids), dim or first.shape[1]), dtype=np.float32)
            vectors[labels] = index.vectors(labels)
        if vectors.ndim != 2 or vectors.shape[0] != len(self._ids) or (dim and vectors.shape[1] != dim):
            raise BundleError(f"item vectors have shape {vectors.shape}, expected ({len(self._ids)}, {dim})")
        self._dim = int(vectors.shape[1])
        self._vectors = VectorStore(vectors)
        self._label = {item_id: n for n, item_id in enumerate(item_ids) if item_id is not None}
        self._free = [n for n, item_id in enumerate(item_ids) if item_id is None][::-1]  # reused first

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._label)

    def ids(self) -> tuple[str, ...]:
        return tuple(i for i in self._ids if i is not None)

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [i for i in ids if i not in self._label]

    def items(self, ids: Sequence[str]) -> list[Item]:
        return [self.catalog.get(i) for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        return self._vectors.get([self._label[i] for i in ids])

    def label(self, item_id: str) -> int:
        """The item's slot in the index (the position in ``item_ids.json``)."""
        return self._label[item_id]

    # -- search ---------------------------------------------------------------------------------

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        blocked: Sequence[frozenset[str]],
        allow: frozenset[str] | None = None,
        where: AttributeFilter | None = None,
    ) -> list[list[Hit]]:
        out = []
        for row, block in enumerate(blocked):
            labels, scores = self._search_one(vectors[row], k, block, allow, where)
            out.append([(self.catalog.get(self._id(n)), s) for n, s in zip(labels, scores, strict=True)])
        return out

    def _id(self, label: int) -> str:
        item_id = self._ids[label]
        if item_id is None:  # pragma: no cover - the index never returns removed labels
            raise BundleError(f"the index returned the free slot {label}")
        return item_id

    def _search_one(
        self,
        vector: np.ndarray,
        k: int,
        blocked: frozenset[str],
        allowed: frozenset[str] | None,
        where: AttributeFilter | None,
    ) -> tuple[list[int], list[float]]:
        if allowed is None and where is None:
            # Fetch as many more as there are blocked items in the catalogue, and drop those: in
            # numpy, since a hostile body may block thousands (ids not in the catalogue cost nothing).
            gone = np.fromiter((n for i in blocked if (n := self._label.get(i)) is not None), np.int64)
            labels, scores = self.index.search(vector[None, :], min(len(self._label), k + len(gone)))
            keep = ~np.isin(labels[0].astype(np.int64), gone)
            return labels[0][keep][:k].tolist(), scores[0][keep][:k].tolist()

        def passes(label: int) -> bool:
            item_id = self._ids[label]
            if item_id is None or item_id in blocked or (allowed is not None and item_id not in allowed):
                return False
            return where is None or bool(where(self.catalog.get(item_id).attributes))

        candidates: list[int] | None = None
        if allowed is not None and len(allowed) <= max(256, len(self._label) // 50):
            # A short allow-list: score its items exactly rather than walk the graph.
            candidates = [self._label[i] for i in allowed if i in self._label]
        else:
            try:
                want = min(k, len(self._label))
                labels, scores = self.index.search(vector[None, :], want, allowed=passes)
                return [int(n) for n in labels[0]], [float(s) for s in scores[0]]
            except FilterTooNarrowError:
                pass  # the graph walk found too few: fall back to scoring every passing item
        if candidates is None:
            candidates = list(self._label.values())
        candidates = [n for n in candidates if passes(n)]
        if not candidates:
            return [], []
        scores = self._vectors.get(candidates) @ vector
        top = np.argsort(-scores, kind="stable")[:k]
        return [candidates[t] for t in top], [float(scores[t]) for t in top]

    # -- edits ----------------------------------------------------------------------------------

    def write(self, items: Sequence[Item], vectors: np.ndarray, mode: EditMode) -> tuple[int, int]:
        """New items take the slots of removed ones first, so a catalogue that changes all day
        keeps its size."""
        if mode == "add":
            refuse_taken([i.item_id for i in items if i.item_id in self._label])
        unknown = [i.item_id for i in items if i.item_id not in self._label]
        if mode == "update" and unknown:
            raise UnknownItemError(unknown, len(self._label), what="item")
        if not items:
            return 0, 0
        free, top = list(self._free), len(self._ids)
        labels = []
        for item in items:
            label = self._label.get(item.item_id)
            if label is None:
                label = free.pop() if free else top
                top += label == top
            labels.append(label)
        self.index.add(vectors, labels)
        self._vectors.put(labels, vectors)
        self._free = free
        self._ids += [None] * (top - len(self._ids))
        for item, label in zip(items, labels, strict=True):
            self._ids[label] = item.item_id
            self._label[item.item_id] = label
        self.catalog.upsert(items)
        return len(unknown), len(items) - len(unknown)

    def remove(self, ids: Sequence[str]) -> None:
        labels = [self._label.pop(i) for i in ids]
        self.index.remove(labels)
        for n in labels:
            self._ids[n] = None
        self._free += labels
        self.catalog.remove(ids)

    # -- saving ---------------------------------------------------------------------------------

    def snapshot(self) -> tuple[np.ndarray, list[str | None], int]:
        """What a saved bundle needs beside the index and catalogue: the vectors by label (free
        slots zeroed), the item-id map and the number of free slots."""
        vectors = self._vectors.all()
        vectors[self._free] = 0.0
        return vectors, list(self._ids), len(self._free)
