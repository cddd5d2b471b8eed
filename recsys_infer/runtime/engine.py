"""The serving engine: a bundle's two towers, its item index and its catalogue, composed.

Torch-free by construction: it needs numpy, onnxruntime, tokenizers and hnswlib only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from recsys_infer.enums import Device
from recsys_infer.errors import BundleError, DeviceUnavailableError, QueryError, UnknownItemError

from .bundle import Manifest, read_item_ids, read_manifest, verify_files, write_catalogue_bundle
from .catalog import Catalog, Item
from .encoder import Encoder, OnnxEncoder
from .index import ExactIndex, FilterTooNarrowError, HnswIndex, HnswParams, Index
from .manifest import CatalogueEdit
from .options import (
    AttributeFilter,
    RecommendOptions,
    as_list,
    check_attributes,
    check_text,
    excerpt,
    id_list,
)
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


_WORD = re.compile(r"[^\W_][\w'-]*", re.UNICODE)


@dataclass(frozen=True)
class Query:
    """What is known about a user: recent history (item ids, oldest first) and/or a request."""

    history: tuple[str, ...] = ()
    text: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "history", id_list(self.history, "history"))
        text = None if self.text is None else check_text(self.text, "text", empty_ok=True).strip()
        object.__setattr__(self, "text", text or None)
        if not self.history and not text:
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
            history = value.get("history")
            return cls(history=() if history is None else history, text=value.get("text"))
        raise QueryError(
            f"a request must be a Query or a mapping with 'history'/'text', got {type(value).__name__}"
        )


def _request_list(requests: object, what: str) -> list[Any]:
    if isinstance(requests, Query):
        raise QueryError(f"{what} takes a list of requests, got one Query; use recommend() for one")
    return as_list(requests, f"{what} takes a list of requests", "; use recommend() for one")


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


def _open_index(
    bundle: Path, manifest: Manifest, vectors: np.ndarray, removed: list[int], *, exact: bool
) -> Index:
    spec = manifest.index
    if exact:
        return ExactIndex(np.asarray(vectors), removed=removed)
    params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
    return HnswIndex.load(bundle / spec.file, space=spec.space, dim=spec.dim, params=params, removed=removed)


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
        self._free = [n for n, item_id in enumerate(item_ids) if item_id is None][::-1]  # reused first
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
        sessions, planned = cls._start(bundle, manifest, Device(device), threads)
        tokenizer_json = (bundle / manifest.tokenizer.file).read_text(encoding="utf-8")
        cuda = planned is Device.CUDA  # bind inputs and outputs on CUDA (providers.run_graph)

        def text_encoder(name: str) -> OnnxEncoder:
            spec = manifest.towers[name]
            tokenizer = TextTokenizer(
                Tokenizer.from_str(tokenizer_json),
                max_length=spec.max_length,
                pad_token=manifest.tokenizer.pad_token,
            )
            return OnnxEncoder(sessions[spec.file], tokenizer, dim=spec.dim, io_binding=cuda)

        item_ids = read_item_ids(bundle / manifest.index.item_ids_file)
        catalog = Catalog.read_jsonl(bundle / manifest.catalog.file)
        vectors = np.load(bundle / manifest.index.vectors_file, allow_pickle=False, mmap_mode="r")
        removed = [n for n, i in enumerate(item_ids) if i is None]
        index = _open_index(bundle, manifest, vectors, removed, exact=exact)

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

    @classmethod
    def _start(
        cls, bundle: Path, manifest: Manifest, requested: Device, threads: int | None
    ) -> tuple[dict[str, Any], Device]:
        """ONNX Runtime sessions for the bundle's graphs, and the device they run on."""
        planned = plan_device(requested, [t.precision for t in manifest.towers.values()])
        try:
            return cls._sessions(bundle, manifest, planned, threads), planned
        except DeviceUnavailableError:
            if requested is not Device.AUTO:
                raise
            logger.info("device 'auto': CUDA could not start, running on the CPU", exc_info=True)
            return cls._sessions(bundle, manifest, Device.CPU, threads), Device.CPU

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

    def _check_k(self, options: RecommendOptions) -> None:
        if options.k > len(self._label):
            raise QueryError(f"k={options.k} is larger than the catalogue ({len(self._label)} items)")

    def validate(self, request: Query | Mapping[str, Any], options: RecommendOptions | None = None) -> Query:
        """The request as a :class:`Query`, or the error recommending it (with ``options``)
        would raise."""
        with self._lock.read():
            if options is not None:
                self._check_k(options)
            return self._checked(request)

    def user_text(self, query: Query | Mapping[str, Any]) -> str:
        """The exact text a text user tower reads for ``query``."""
        if not isinstance(self.user_encoder, TextUserEncoder):
            raise QueryError("this bundle's user tower reads the history's item vectors, not text")
        with self._lock.read():
            return self.user_encoder.text(self._checked(query))

    def encode_users(self, requests: Sequence[Query | Mapping[str, Any]]) -> np.ndarray:
        """User vectors, ``float32 (len(requests), dim)``, unit norm."""
        queries = _request_list(requests, "encode_users")
        with self._lock.read():
            return self.user_encoder.encode([self._checked(r) for r in queries])

    def encode_items(self, texts: Sequence[str]) -> np.ndarray:
        """Item vectors for arbitrary item texts, ``float32 (len(texts), dim)``, unit norm."""
        texts = as_list(texts, "encode_items takes a list of texts")
        return self.item_encoder.encode([check_text(t, "an item text") for t in texts])

    # -- recommending ---------------------------------------------------------------------------

    def recommend(
        self,
        history: Sequence[str] | None = None,
        text: str | None = None,
        *,
        options: RecommendOptions | None = None,
        **overrides: Any,
    ) -> list[Recommendation]:
        """Top-``k`` items for one user. ``options`` (a :class:`RecommendOptions`) and/or its
        fields by name (``k=5, exclude=[...]``); see :meth:`recommend_batch`."""
        query = Query(history=() if history is None else history, text=text)  # type: ignore[arg-type]
        return self.recommend_batch([query], options=RecommendOptions.of(options, **overrides))[0]

    def recommend_batch(
        self,
        requests: Sequence[Query | Mapping[str, Any]],
        *,
        options: RecommendOptions | None = None,
        **overrides: Any,
    ) -> list[list[Recommendation]]:
        """One list of recommendations per request, in order; one ONNX run and one index search.

        Filters apply during the search, so ``k`` items still come back when many are filtered
        out (fewer only when fewer pass): ``exclude`` ids never come back, ``allow`` restricts
        to an id allow-list, ``where`` keeps items whose attributes it accepts (a
        :class:`~recsys_infer.runtime.options.Where` or a function). ``explain`` fills each
        recommendation's ``because`` with the history items (or request words) closest to it.
        """
        o = RecommendOptions.of(options, **overrides)
        queries = [Query.coerce(r) for r in _request_list(requests, "recommend_batch")]
        if not queries:
            return []
        with self._lock.read():
            self._check_k(o)
            vectors = self.user_encoder.encode([self._checked(q) for q in queries])
            results = []
            for row, query in enumerate(queries):
                blocked = o.exclude | set(query.history) if o.exclude_seen else o.exclude
                labels, scores = self._search(vectors[row], o.k, blocked, o.allow, o.where)
                results.append(
                    [self._recommendation(label, score) for label, score in zip(labels, scores, strict=True)]
                )
            if o.explain:
                results = [self._explain(q, recs) for q, recs in zip(queries, results, strict=True)]
        return results

    def _recommendation(self, label: int, score: float) -> Recommendation:
        item_id = self._ids[label]
        if item_id is None:  # pragma: no cover - the index never returns removed labels
            raise BundleError(f"the index returned the free slot {label}")
        item = self.catalog.get(item_id)
        return Recommendation(item_id, float(score), item.text, item.attributes)

    def _search(
        self,
        vector: np.ndarray,
        k: int,
        blocked: frozenset[str] | set[str],
        allowed: frozenset[str] | None,
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
        ids = list(id_list(ids, "ids"))
        texts = as_list(texts, "texts takes a list of texts, one per item")
        attrs = (
            [{} for _ in ids]
            if attributes is None
            else as_list(attributes, "attributes takes a list of JSON objects, one per item")
        )
        if not (len(ids) == len(texts) == len(attrs)):
            raise QueryError(
                f"ids, texts and attributes must have one entry per item; got {len(ids)}, {len(texts)} "
                f"and {len(attrs)}"
            )
        if len(set(ids)) != len(ids):
            raise QueryError("the same item id appears twice in one call")
        return [
            Item(i, check_text(t, f"the text of item {excerpt(i, 40)}"), check_attributes(a, i))
            for i, t, a in zip(ids, texts, attrs, strict=True)
        ]

    def add_items(
        self, ids: Sequence[str], texts: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Encode new items with the bundle's item tower and make them recommendable. Ids
        already in the catalogue are refused (use :meth:`upsert_items` or :meth:`update_items`).
        Attributes must be JSON objects (at most 8 levels deep, 16 KiB as JSON)."""
        self._edit(self._new_items(ids, texts, attributes), "add")

    def update_items(
        self, ids: Sequence[str], texts: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Replace existing items' texts and attributes, re-encoding them; unknown ids are refused."""
        self._edit(self._new_items(ids, texts, attributes), "update")

    def upsert_items(
        self, ids: Sequence[str], texts: Sequence[str], attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Add the new items and replace the existing ones, in one atomic edit."""
        self._edit(self._new_items(ids, texts, attributes), "upsert")

    def _edit(self, items: list[Item], mode: Literal["add", "update", "upsert"]) -> None:
        """Encode outside the lock, then apply the whole edit under the writer lock. New items
        take the slots of removed ones first, so a catalogue that changes all day keeps its size."""
        if mode == "add":
            self._refuse_taken(items)
        vectors = self.item_encoder.encode([i.text for i in items])
        with self._lock.write():
            if mode == "add":
                self._refuse_taken(items)
            unknown = [i.item_id for i in items if i.item_id not in self._label]
            if mode == "update" and unknown:
                raise UnknownItemError(unknown, len(self._label), what="item")
            if not items:
                return
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
            self._edits["added"] += len(unknown)
            self._edits["updated"] += len(items) - len(unknown)

    def _refuse_taken(self, items: list[Item]) -> None:
        taken = [i.item_id for i in items if i.item_id in self._label]
        if taken:
            raise QueryError(
                f"{len(taken)} id(s) are already in the catalogue (e.g. {taken[0]!r:.60}); use "
                'upsert_items (HTTP: "replace": true) to replace them'
            )

    def remove_items(self, ids: Sequence[str]) -> None:
        """Take items out: never recommended again, and unknown to histories from now on. Their
        slots are reused by later additions."""
        ids = list(dict.fromkeys(id_list(ids, "ids")))
        with self._lock.write():
            unknown = [i for i in ids if i not in self._label]
            if unknown:
                raise UnknownItemError(unknown, len(self._label), what="item")
            if len(ids) >= len(self._label):
                raise QueryError("cannot remove every item: an engine needs at least one to recommend")
            labels = [self._label.pop(i) for i in ids]
            self.index.remove(labels)
            for n in labels:
                self._ids[n] = None
            self._free += labels
            self.catalog.remove(ids)
            self._edits["removed"] += len(ids)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the bundle with the current catalogue and index to ``path``, crash-safely: at
        every instant ``path`` holds a whole bundle, old or new. Saving over an existing bundle
        (the one this engine was loaded from included) needs ``overwrite=True``; anything at
        ``path`` that is not a bundle is refused."""
        if self.path is None or self.manifest is None:
            raise BundleError("only an engine loaded from a bundle can be saved")
        if not isinstance(self.index, HnswIndex):
            raise BundleError("an engine loaded with exact=True has no HNSW index to save; load it without")
        target = Path(path)
        with self._lock.read():
            vectors = self._vectors.all()
            vectors[self._free] = 0.0
            edit = CatalogueEdit(
                saved_at=datetime.now(UTC).isoformat(timespec="seconds"),
                added=self._edits["added"],
                updated=self._edits["updated"],
                removed=self._edits["removed"],
                items=len(self._label),
                removed_slots=len(self._free),
            )
            written = write_catalogue_bundle(
                self.path, self.manifest, target, index=self.index, vectors=vectors, item_ids=list(self._ids),
                catalog=self.catalog, overwrite=overwrite,
                amend=lambda m: replace(m, catalogue_edits=(*m.catalogue_edits, edit)),
            )  # fmt: skip
            if target.resolve() == self.path.resolve():
                self.manifest = written
        return target
