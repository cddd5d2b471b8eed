"""The serving engine: a bundle's two towers, its item index and its catalogue, composed.

Torch-free by construction: it needs numpy, onnxruntime, tokenizers and hnswlib only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from recsys_infer.enums import Device
from recsys_infer.errors import BundleError, DeviceUnavailableError, QueryError, UnknownItemError

from .bundle import Manifest, read_manifest, rewritten_catalogue, verify_files
from .catalog import Catalog, Item
from .encoder import Encoder, OnnxEncoder
from .index import ExactIndex, FilterTooNarrowError, HnswIndex, HnswParams, Index
from .providers import create_session, plan_device
from .rwlock import RWLock
from .tokenizer import TextTokenizer
from .users import SequenceUserEncoder, TextUserEncoder, UserEncoder

logger = logging.getLogger(__name__)


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


#: A predicate on an item's attributes: True keeps the item.
AttributeFilter = Callable[[Mapping[str, Any]], bool]


def check_options(k: object, exclude: object, allow: object, where: object) -> None:
    """The recommendation options' types, checked before any work (the engine and the
    micro-batcher both refuse bad ones at once)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")
    if isinstance(exclude, str) or isinstance(allow, str):
        raise QueryError("exclude and allow take a list of item ids, not a single string")
    if where is not None and not callable(where):
        raise QueryError("where must be a function of an item's attributes that returns True to keep it")


_WORD = re.compile(r"[^\W_][\w'-]*", re.UNICODE)


@dataclass(frozen=True)
class Query:
    """What is known about a user: recent history (item ids, oldest first) and/or a request."""

    history: tuple[str, ...] = ()
    text: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.history, str):
            raise QueryError(
                f"history must be a list of item ids, got the string {self.history!r}; "
                "pass e.g. ['1', '50', '260']"
            )
        history = tuple(self.history)
        bad = [h for h in history if not isinstance(h, str) or not h]
        if bad:
            raise QueryError(
                f"history item ids must be non-empty strings, got {bad[:5]!r}; ids are strings "
                "throughout (write '42', not 42)"
            )
        object.__setattr__(self, "history", history)
        if self.text is not None and not isinstance(self.text, str):
            raise QueryError(f"text must be a string or None, got {type(self.text).__name__}")
        text = self.text.strip() if self.text else ""
        object.__setattr__(self, "text", text or None)
        if not history and not text:
            raise QueryError("a query needs a history, a text request, or both; both were empty")

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
            return cls(history=value.get("history") or (), text=value.get("text"))
        raise QueryError(
            f"a request must be a Query or a mapping with 'history'/'text', got {type(value).__name__}"
        )


class VectorStore:
    """The item vectors by index label, for reads that must not go through the index (hnswlib
    copies vectors out slowly: 0.8 ms for a 50-item history, against 5 µs from an array).

    Starts on the bundle's ``item_vectors.npy`` memory-mapped (no resident cost until read) and
    moves to a growable in-memory array at the first edit. Guarded by the engine's lock.
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


class Engine:
    """Recommends catalogue items for users described by history and/or free text.

    Build one with :meth:`load`; the constructor composes already-made parts (tests inject an
    :class:`ExactIndex` or their own encoders this way).

    Unknown item ids in a history raise :class:`UnknownItemError` (there is nothing to read for
    them: no text, no vector).
    With ``exclude_seen=True`` (the default) history items are never returned; when the
    catalogue is so small that fewer than ``k`` unseen items remain, fewer are returned.

    Thread safety: every public method may be called from many threads at once. Reads
    (``recommend*``, ``encode_users``, ``explain``, ``item_ids``, ``save``) share a lock;
    catalogue edits (``add_items``, ``update_items``, ``remove_items``) take it alone, after
    encoding their texts outside it, and are atomic: once one returns, every later call sees
    the whole edit, and an item removed is never returned again.
    """

    def __init__(
        self,
        *,
        user_encoder: UserEncoder,
        item_encoder: Encoder,
        index: Index,
        catalog: Catalog,
        item_ids: Sequence[str | None],
        device: Device = Device.CPU,
        manifest: Manifest | None = None,
        path: Path | None = None,
        vectors: np.ndarray | None = None,
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
        if user_encoder.dim != item_encoder.dim:
            raise BundleError(
                f"the user tower emits {user_encoder.dim}-d vectors, the item tower {item_encoder.dim}-d"
            )
        self.user_encoder = user_encoder
        self.item_encoder = item_encoder
        self.index = index
        self.catalog = catalog
        self._ids: list[str | None] = list(item_ids)  # index label -> item id; None: removed
        if vectors is None:
            labels = [n for n, i in enumerate(item_ids) if i is not None]
            vectors = np.zeros((len(self._ids), user_encoder.dim), dtype=np.float32)
            vectors[labels] = index.vectors(labels)
        if vectors.shape != (len(self._ids), user_encoder.dim):
            raise BundleError(
                f"item vectors have shape {vectors.shape}, expected ({len(self._ids)}, {user_encoder.dim})"
            )
        self._vectors = VectorStore(vectors)
        self._label: dict[str, int] = {
            item_id: n for n, item_id in enumerate(item_ids) if item_id is not None
        }
        self.manifest = manifest
        self.path = path
        self._device = Device(device)
        self._lock = RWLock()
        self._edits = {"added": 0, "updated": 0, "removed": 0}

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: Device | str = Device.AUTO,
        threads: int | None = None,
        exact: bool = False,
        verify: bool = True,
    ) -> Engine:
        """Load a bundle directory.

        ``device``: ``"auto"`` (CUDA when it really works, else CPU, logged), ``"cpu"`` or
        ``"cuda"`` (an error when CUDA cannot run the bundle). ``threads``: ONNX Runtime intra-op
        threads (default: ONNX Runtime's choice, the physical cores). ``exact``: rank by exact
        search over the stored item vectors instead of the HNSW index. ``verify``: check every
        file's sha256 (sizes are always checked).
        """
        bundle = Path(path)
        manifest = read_manifest(bundle)
        verify_files(bundle, manifest, checksums=verify)
        requested = Device(device)
        planned = plan_device(requested, [t.precision for t in manifest.towers.values()])
        try:
            sessions = cls._sessions(bundle, manifest, planned, threads)
        except DeviceUnavailableError:
            if requested is not Device.AUTO:
                raise
            logger.info("device 'auto': CUDA could not start, running on the CPU", exc_info=True)
            planned = Device.CPU
            sessions = cls._sessions(bundle, manifest, planned, threads)

        tokenizer_json = (bundle / manifest.tokenizer_file).read_text(encoding="utf-8")
        cuda = planned is Device.CUDA  # bind inputs and outputs on CUDA (providers.run_graph)

        def text_encoder(name: str) -> OnnxEncoder:
            spec = manifest.towers[name]
            tokenizer = TextTokenizer(
                Tokenizer.from_str(tokenizer_json), max_length=spec.max_length, pad_token=manifest.pad_token
            )
            return OnnxEncoder(sessions[spec.file], tokenizer, dim=spec.dim, io_binding=cuda)

        spec = manifest.index
        item_ids = json.loads((bundle / spec.item_ids_file).read_text(encoding="utf-8"))
        if not isinstance(item_ids, list) or not all(i is None or isinstance(i, str) for i in item_ids):
            raise BundleError(
                f"{bundle / spec.item_ids_file} must hold a JSON list of item id strings (null for a "
                "removed item)"
            )
        removed = [n for n, i in enumerate(item_ids) if i is None]
        catalog = Catalog.read_jsonl(bundle / manifest.catalog_file)
        index: Index
        vectors = np.load(bundle / spec.vectors_file, allow_pickle=False, mmap_mode="r")
        if exact:
            index = ExactIndex(np.asarray(vectors), removed=removed)
        else:
            params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
            index = HnswIndex.load(
                bundle / spec.file, space=spec.space, dim=spec.dim, params=params, removed=len(removed)
            )

        def history_vectors(item_ids: Sequence[str]) -> np.ndarray:
            return engine._history_vectors(item_ids)  # `engine` is bound below, before any call

        user_encoder: UserEncoder
        if manifest.user.kind == "sequence":
            user_encoder = SequenceUserEncoder(
                sessions[manifest.user.file],
                history_vectors,
                dim=manifest.user.dim,
                max_history=manifest.user.max_length,
                requests=text_encoder("request"),
                io_binding=cuda,
            )
        else:
            user_encoder = TextUserEncoder(text_encoder("user"), catalog, manifest.user_input)
        engine = cls(
            user_encoder=user_encoder,
            item_encoder=text_encoder("item"),
            index=index,
            catalog=catalog,
            item_ids=item_ids,
            device=planned,
            manifest=manifest,
            path=bundle,
            vectors=vectors,
        )
        logger.info("loaded %s: %d items, device %s", bundle, len(engine), planned)
        return engine

    @staticmethod
    def _sessions(bundle: Path, manifest: Manifest, device: Device, threads: int | None) -> dict[str, Any]:
        # Towers that share one graph file (shared weights) share one session.
        files = sorted({spec.file for spec in manifest.towers.values()})
        return {f: create_session(bundle / f, device, threads=threads) for f in files}

    def _history_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of catalogue items (the index holds them), for the sequence tower."""
        return self._vectors.get([self._label[i] for i in item_ids])

    # -- properties -----------------------------------------------------------------------------

    @property
    def device(self) -> Device:
        """The device the graphs really run on (``cpu`` or ``cuda``), never ``auto``."""
        return self._device

    @property
    def dim(self) -> int:
        return self.user_encoder.dim

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The ids of the items that can be recommended, in index order."""
        with self._lock.read():
            return tuple(i for i in self._ids if i is not None)

    def __len__(self) -> int:
        return len(self._label)

    # -- encoding -------------------------------------------------------------------------------

    def _checked(self, request: Query | Mapping[str, Any]) -> Query:
        query = Query.coerce(request)
        unknown = [h for h in query.history if h not in self._label]
        if unknown:
            raise UnknownItemError(unknown, len(self._label))
        return query

    def validate(self, request: Query | Mapping[str, Any]) -> Query:
        """The request as a :class:`Query`, or the error recommending it would raise."""
        with self._lock.read():
            return self._checked(request)

    def user_text(self, query: Query | Mapping[str, Any]) -> str:
        """The exact text a text user tower reads for ``query``."""
        if not isinstance(self.user_encoder, TextUserEncoder):
            raise QueryError("this bundle's user tower reads the history's item vectors, not text")
        with self._lock.read():
            return self.user_encoder.text(self._checked(query))

    def encode_users(self, requests: Sequence[Query | Mapping[str, Any]]) -> np.ndarray:
        """User vectors, ``float32 (len(requests), dim)``, unit norm."""
        with self._lock.read():
            return self.user_encoder.encode([self._checked(r) for r in requests])

    def encode_items(self, texts: Sequence[str]) -> np.ndarray:
        """Item vectors for arbitrary item texts, ``float32 (len(texts), dim)``, unit norm."""
        if isinstance(texts, str):
            raise QueryError("encode_items takes a list of texts, not a single string")
        return self.item_encoder.encode(list(texts))

    # -- recommending ---------------------------------------------------------------------------

    def recommend(
        self,
        history: Sequence[str] | None = None,
        text: str | None = None,
        *,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[str] = (),
        allow: Iterable[str] | None = None,
        where: AttributeFilter | None = None,
        explain: bool = False,
    ) -> list[Recommendation]:
        """Top-``k`` items for one user; see :meth:`recommend_batch` for the options."""
        query = Query(history=history if history is not None else (), text=text)  # type: ignore[arg-type]
        return self.recommend_batch(
            [query],
            k=k,
            exclude_seen=exclude_seen,
            exclude=exclude,
            allow=allow,
            where=where,
            explain=explain,
        )[0]

    def recommend_batch(
        self,
        requests: Sequence[Query | Mapping[str, Any]],
        *,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Iterable[str] = (),
        allow: Iterable[str] | None = None,
        where: AttributeFilter | None = None,
        explain: bool = False,
    ) -> list[list[Recommendation]]:
        """One list of recommendations per request, in order; one ONNX run and one index search.

        Filters apply during the search, so ``k`` items still come back when many are filtered
        out (fewer only when fewer pass): ``exclude`` ids never come back, ``allow`` restricts
        to an id allow-list, ``where`` keeps items whose attributes it returns True for.
        ``explain`` fills each recommendation's ``because`` with the history items (or request
        words) closest to it.
        """
        check_options(k, exclude, allow, where)
        if isinstance(requests, (str, Mapping, Query)):
            raise QueryError("recommend_batch takes a list of requests; use recommend() for one")
        queries = [Query.coerce(r) for r in requests]
        if not queries:
            return []
        excluded = set(exclude)
        allowed = None if allow is None else set(allow)
        with self._lock.read():
            if k > len(self._label):
                raise QueryError(f"k={k} is larger than the catalogue ({len(self._label)} items)")
            vectors = self.user_encoder.encode([self._checked(q) for q in queries])
            results = []
            for row, query in enumerate(queries):
                blocked = excluded | set(query.history) if exclude_seen else excluded
                labels, scores = self._search(vectors[row], k, blocked, allowed, where)
                recs = []
                for label, score in zip(labels, scores, strict=True):
                    item_id = self._ids[label]
                    if item_id is None:  # pragma: no cover - the index never returns removed labels
                        continue
                    item = self.catalog.get(item_id)
                    recs.append(Recommendation(item_id, float(score), item.text, item.attributes))
                results.append(recs)
            if explain:
                results = [self._explain(q, recs) for q, recs in zip(queries, results, strict=True)]
        return results

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        blocked: set[str],
        allowed: set[str] | None,
        where: AttributeFilter | None,
    ) -> tuple[list[int], list[float]]:
        """Top-``k`` labels for one user vector under the filters (called with the read lock)."""
        if allowed is None and where is None:
            # Only a few ids are blocked: fetch that many more and skip them.
            fetch = min(len(self._label), k + len(blocked))
            labels, scores = self.index.search(vector[None, :], fetch)
            keep = [(int(n), float(s)) for n, s in zip(labels[0], scores[0], strict=True)
                    if self._ids[int(n)] not in blocked]  # fmt: skip
            return [n for n, _ in keep[:k]], [s for _, s in keep[:k]]

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
            candidates = [n for n in self._label.values()]
        candidates = [n for n in candidates if passes(n)]
        if not candidates:
            return [], []
        scores = self._vectors.get(candidates) @ vector
        top = np.argsort(-scores, kind="stable")[:k]
        return [candidates[t] for t in top], [float(scores[t]) for t in top]

    # -- explanations ---------------------------------------------------------------------------

    def explain(
        self, history: Sequence[str] | None = None, text: str | None = None, *, item_ids: Sequence[str]
    ) -> dict[str, tuple[Reason, ...]]:
        """Why each of ``item_ids`` suits this user: the closest history items or request words."""
        query = Query(history=history if history is not None else (), text=text)  # type: ignore[arg-type]
        with self._lock.read():
            query = self._checked(query)
            unknown = [i for i in item_ids if i not in self._label]
            if unknown:
                raise UnknownItemError(unknown, len(self._label))
            stub = [Recommendation(i, 0.0, "", {}) for i in item_ids]
            return {r.item_id: r.because for r in self._explain(query, stub)}

    def _explain(self, query: Query, recs: list[Recommendation], top: int = 3) -> list[Recommendation]:
        if not recs:
            return recs
        targets = self._vectors.get([self._label[r.item_id] for r in recs])
        sources: list[tuple[str, str]] = []
        vectors = []
        if query.history:
            history = list(dict.fromkeys(query.history[-50:]))
            sources += [("history", h) for h in history]
            vectors.append(self._vectors.get([self._label[h] for h in history]))
        if query.text:
            words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query.text)))[:16]
            if words:
                sources += [("request", w) for w in words]
                vectors.append(self.user_encoder.encode([Query(text=w) for w in words]))
        if not sources:
            return recs
        sims = targets @ np.concatenate(vectors).T
        out = []
        for rec, row in zip(recs, sims, strict=True):
            best = np.argsort(-row, kind="stable")[:top]
            because = tuple(Reason(sources[b][0], sources[b][1], round(float(row[b]), 4)) for b in best)
            out.append(replace(rec, because=because))
        return out

    # -- the live catalogue ---------------------------------------------------------------------

    def _new_items(
        self, ids: Sequence[str], texts: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None
    ) -> list[Item]:
        if isinstance(ids, str) or isinstance(texts, str):
            raise QueryError("ids and texts take lists (one entry per item), not single strings")
        ids, texts = list(ids), list(texts)
        attrs = list(attributes) if attributes is not None else [{} for _ in ids]
        if not (len(ids) == len(texts) == len(attrs)):
            raise QueryError(
                f"ids, texts and attributes must have one entry per item; got {len(ids)}, {len(texts)} "
                f"and {len(attrs)}"
            )
        if len(set(ids)) != len(ids):
            raise QueryError("the same item id appears twice in one call")
        try:
            return [Item(i, t, a) for i, t, a in zip(ids, texts, attrs, strict=True)]
        except (ValueError, TypeError) as e:
            raise QueryError(f"not a valid item: {e}") from e

    def add_items(
        self, ids: Sequence[str], texts: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Encode new items with the bundle's item tower and make them recommendable.

        Ids already in the catalogue are refused (use :meth:`update_items`)."""
        items = self._new_items(ids, texts, attributes)
        taken = [i.item_id for i in items if i.item_id in self._label]
        if taken:
            raise QueryError(
                f"{len(taken)} ids are already in the catalogue (e.g. {taken[0]!r}); use update_items"
            )
        vectors = self.item_encoder.encode([i.text for i in items]) if items else None
        with self._lock.write():
            taken = [i.item_id for i in items if i.item_id in self._label]
            if taken:
                raise QueryError(f"{taken[0]!r} was added by another call meanwhile; use update_items")
            if vectors is None:
                return
            labels = list(range(len(self._ids), len(self._ids) + len(items)))
            self.index.add(vectors, labels)
            self._vectors.put(labels, vectors)
            self.catalog.upsert(items)
            self._ids += [i.item_id for i in items]
            self._label.update({i.item_id: n for i, n in zip(items, labels, strict=True)})
            self._edits["added"] += len(items)

    def update_items(
        self, ids: Sequence[str], texts: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Replace existing items' texts and attributes, re-encoding them."""
        items = self._new_items(ids, texts, attributes)
        vectors = self.item_encoder.encode([i.text for i in items]) if items else None
        with self._lock.write():
            unknown = [i.item_id for i in items if i.item_id not in self._label]
            if unknown:
                raise UnknownItemError(unknown, len(self._label))
            if vectors is None:
                return
            labels = [self._label[i.item_id] for i in items]
            self.index.add(vectors, labels)
            self._vectors.put(labels, vectors)
            self.catalog.upsert(items)
            self._edits["updated"] += len(items)

    def remove_items(self, ids: Sequence[str]) -> None:
        """Take items out: never recommended again, and unknown to histories from now on."""
        if isinstance(ids, str):
            raise QueryError("remove_items takes a list of ids, not a single string")
        ids = list(dict.fromkeys(ids))
        with self._lock.write():
            unknown = [i for i in ids if i not in self._label]
            if unknown:
                raise UnknownItemError(unknown, len(self._label))
            if len(ids) >= len(self._label):
                raise QueryError("cannot remove every item: an engine needs at least one to recommend")
            labels = [self._label.pop(i) for i in ids]
            self.index.remove(labels)
            for n in labels:
                self._ids[n] = None
            self.catalog.remove(ids)
            self._edits["removed"] += len(ids)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the bundle with the current catalogue and index to ``path``, atomically: a
        crash mid-save leaves whatever stood at ``path`` whole. Saving over the bundle this
        engine was loaded from needs ``overwrite=True``."""
        if self.path is None or self.manifest is None:
            raise BundleError("only an engine loaded from a bundle can be saved")
        if not isinstance(self.index, HnswIndex):
            raise BundleError("an engine loaded with exact=True has no HNSW index to save; load it without")
        target = Path(path)
        with self._lock.read():
            vectors = self._vectors.all()
            vectors[[n for n, i in enumerate(self._ids) if i is None]] = 0.0  # tombstones
            with rewritten_catalogue(
                self.path, self.manifest, target, index=self.index, vectors=vectors, item_ids=self._ids,
                catalog=self.catalog, overwrite=overwrite,
            ) as (_, raw):  # fmt: skip
                history = list(raw.get("catalogue_edits") or [])
                history.append(
                    {
                        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        **self._edits,
                        "items": len(self._label),
                        "removed_slots": len(self._ids) - len(self._label),
                    }
                )
                raw["catalogue_edits"] = history
        return target
