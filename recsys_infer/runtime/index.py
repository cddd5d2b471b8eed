"""Nearest-neighbour search over item vectors.

:class:`ExactIndex` (a numpy matrix product) is the reference; :class:`HnswIndex` (hnswlib) is
what ships, and its results are checked against the exact ones. Both answer
``search(vectors, k) -> (labels, scores)`` with labels ``int64 (n, k)`` and scores
``float32 (n, k)``, best first, where a label is the item's slot in the bundle's item-id map.

Both also take items in and out while serving (``add``, ``remove``), hand back stored vectors
(``vectors``), and search under a label filter (``allowed``). Neither is thread-safe on its
own: the engine serialises writers against readers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import hnswlib
import numpy as np

from recsys_infer.enums import Space
from recsys_infer.errors import ConfigError

logger = logging.getLogger(__name__)


#: A label filter: True for the labels a search may return.
LabelFilter = Callable[[int], bool]


class FilterTooNarrowError(RuntimeError):
    """The approximate search found fewer than ``k`` labels that pass the filter."""


class Index(Protocol):
    """What the engine needs from an index."""

    def search(
        self, vectors: np.ndarray, k: int, *, allowed: LabelFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, vectors: np.ndarray, labels: Sequence[int]) -> None: ...

    def remove(self, labels: Sequence[int]) -> None: ...

    def vectors(self, labels: Sequence[int]) -> np.ndarray: ...

    def __len__(self) -> int: ...


def _as_queries(vectors: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(vectors, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query vectors must have shape (n, {dim}), got {vectors.shape}")
    return q


def _check_k(k: int, size: int) -> None:
    if k < 1 or k > size:
        raise ValueError(f"k must be between 1 and the index size ({size}), got {k}")


class ExactIndex:
    """Brute-force inner-product search: exact, and the reference for every approximate index.

    Labels are row numbers; a removed row stays as a tombstone that is never returned.
    """

    def __init__(self, vectors: np.ndarray, *, removed: Sequence[int] = ()) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"item vectors must be 2-D, got shape {vectors.shape}")
        self._data = data
        self._alive = np.ones(data.shape[0], dtype=bool)
        self._alive[list(removed)] = False

    def __len__(self) -> int:
        return int(self._alive.sum())

    def add(self, vectors: np.ndarray, labels: Sequence[int]) -> None:
        data = _as_queries(vectors, self._data.shape[1])
        top = max(labels) + 1
        if top > self._data.shape[0]:
            grow = top - self._data.shape[0]
            self._data = np.vstack([self._data, np.zeros((grow, self._data.shape[1]), np.float32)])
            self._alive = np.concatenate([self._alive, np.zeros(grow, dtype=bool)])
        self._data[list(labels)] = data
        self._alive[list(labels)] = True

    def remove(self, labels: Sequence[int]) -> None:
        self._alive[list(labels)] = False

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        return np.asarray(self._data[list(labels)], dtype=np.float32)

    def search(
        self, vectors: np.ndarray, k: int, *, allowed: LabelFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, len(self))
        scores = _as_queries(vectors, self._data.shape[1]) @ self._data.T
        mask = self._alive
        if allowed is not None:
            mask = mask & np.fromiter((allowed(i) for i in range(mask.size)), dtype=bool, count=mask.size)
            passing = int(mask.sum())
            if passing < k:
                raise FilterTooNarrowError(f"only {passing} items pass the filter, {k} were asked for")
        scores[:, ~mask] = -np.inf
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        labels = np.take_along_axis(top, order, axis=1).astype(np.int64)
        return labels, np.take_along_axis(top_scores, order, axis=1).astype(np.float32)


@dataclass(frozen=True)
class HnswParams:
    """HNSW graph parameters. ``ef_search`` is a floor: a query for ``k`` uses ``max(ef, k)``."""

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64

    def __post_init__(self) -> None:
        for name in ("M", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grow_capacity(count: int) -> int:
    """Room for a quarter more items (at least 1,024) before the index must be resized."""
    return max(count + 1024, (count * 5) // 4)


class HnswIndex:
    """An hnswlib graph over the catalogue's item vectors (inner product on unit vectors).

    Built with room to grow, so that items can be added and replaced later without a rebuild.
    A removed label stays in the graph marked deleted until :meth:`add` gives it a new vector
    (hnswlib then clears the mark and re-links the node), so the engine reuses free slots by
    label and the graph never grows past the catalogue's largest size.
    """

    def __init__(self, index: hnswlib.Index, params: HnswParams, *, removed: Sequence[int] = ()) -> None:
        self._index = index
        self.params = params
        self._deleted = set(removed)  # marked deleted (hnswlib counts them among its elements)
        index.set_ef(params.ef_search)

    @staticmethod
    def _new(space: Space, dim: int) -> hnswlib.Index:
        if space not in (Space.IP, Space.COSINE):
            raise ConfigError(f"space {space!r} is not supported; towers emit unit vectors: use 'ip'")
        return hnswlib.Index(space=str(space), dim=dim)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        params: HnswParams | None = None,
        *,
        space: Space = Space.IP,
        threads: int = 1,
        capacity: int | None = None,
        progress: bool = False,
    ) -> HnswIndex:
        """Index ``vectors`` under labels ``0..n-1``.

        One thread (the default) inserts in a fixed order, so the same vectors always give the
        same graph; more threads build faster but not reproducibly.
        """
        params = params or HnswParams()
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = data.shape
        index = cls._new(space, dim)
        index.init_index(
            max_elements=capacity or grow_capacity(n),
            M=params.M,
            ef_construction=params.ef_construction,
            random_seed=100,
        )
        chunk = 2048
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="HNSW index", unit="item")
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            index.add_items(data[start:stop], np.arange(start, stop), num_threads=threads)
            if bar is not None:
                bar.update(stop - start)
        if bar is not None:
            bar.close()
        return cls(index, params)

    @classmethod
    def load(
        cls, path: Path, *, space: Space, dim: int, params: HnswParams, removed: Sequence[int] = ()
    ) -> HnswIndex:
        """``removed``: the saved labels that are free slots (the bundle's item-id map says
        which; hnswlib keeps their deleted marks in the file)."""
        index = cls._new(space, dim)
        index.load_index(str(path))
        return cls(index, params, removed=removed)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    def set_ef_search(self, ef: int) -> None:
        """Change the search breadth (recall against speed); the graph is unchanged."""
        if ef < 1:
            raise ConfigError(f"ef_search must be positive, got {ef}")
        self.params = HnswParams(self.params.M, self.params.ef_construction, ef)
        self._index.set_ef(ef)

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    def __len__(self) -> int:
        return int(self._index.get_current_count()) - len(self._deleted)

    @property
    def slots(self) -> int:
        """Nodes in the graph, free (deleted) ones included."""
        return int(self._index.get_current_count())

    def add(self, vectors: np.ndarray, labels: Sequence[int]) -> None:
        """Insert new labels, or give existing and deleted ones a new vector; grows the graph
        when it is full."""
        data = _as_queries(vectors, self._index.dim)
        need = self.slots + sum(1 for label in labels if label not in self._deleted)
        if need > self.capacity:
            self._index.resize_index(grow_capacity(need))
        self._index.add_items(data, np.asarray(labels, dtype=np.int64), num_threads=1)
        self._deleted.difference_update(labels)

    def remove(self, labels: Sequence[int]) -> None:
        for label in labels:
            self._index.mark_deleted(int(label))
        self._deleted.update(int(label) for label in labels)

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        if not len(labels):
            return np.zeros((0, self._index.dim), dtype=np.float32)
        return np.asarray(self._index.get_items(list(labels)), dtype=np.float32)

    def search(
        self, vectors: np.ndarray, k: int, *, allowed: LabelFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k, len(self))
        queries = _as_queries(vectors, self._index.dim)
        try:
            labels, distances = self._index.knn_query(queries, k=k, num_threads=1, filter=allowed)
        except RuntimeError as e:
            if allowed is None:
                raise
            raise FilterTooNarrowError(str(e)) from e
        # hnswlib's inner-product "distance" is 1 - <q, x>.
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)
