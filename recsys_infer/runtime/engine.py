"""The serving engine: a bundle's two towers, its item index and its catalogue, composed.

Torch-free by construction: it needs numpy, onnxruntime, tokenizers and hnswlib only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from recsys_infer.enums import Device
from recsys_infer.errors import BundleError, DeviceUnavailableError, QueryError, UnknownItemError

from .bundle import Manifest, read_manifest, verify_files
from .catalog import Catalog
from .encoder import Encoder, OnnxEncoder
from .index import ExactIndex, HnswIndex, HnswParams, Index
from .providers import create_session, plan_device
from .tokenizer import TextTokenizer
from .users import SequenceUserEncoder, TextUserEncoder, UserEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recommendation:
    """One recommended item, best first. ``score`` is the cosine between user and item."""

    item_id: str
    score: float
    text: str
    attributes: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "score": self.score,
            "text": self.text,
            "attributes": dict(self.attributes),
        }


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


class Engine:
    """Recommends catalogue items for users described by history and/or free text.

    Build one with :meth:`load`; the constructor composes already-made parts (tests inject an
    :class:`ExactIndex` or their own encoders this way).

    Unknown item ids in a history raise :class:`UnknownItemError` (there is nothing to read for
    them: no text, no vector).
    With ``exclude_seen=True`` (the default) history items are never returned; when the
    catalogue is so small that fewer than ``k`` unseen items remain, fewer are returned.
    """

    def __init__(
        self,
        *,
        user_encoder: UserEncoder,
        item_encoder: Encoder,
        index: Index,
        catalog: Catalog,
        item_ids: Sequence[str],
        device: Device = Device.CPU,
        manifest: Manifest | None = None,
        path: Path | None = None,
    ) -> None:
        if len(item_ids) != len(index):
            raise BundleError(f"the index holds {len(index)} items but the item-id map has {len(item_ids)}")
        missing = [i for i in item_ids if i not in catalog]
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
        self.item_ids: tuple[str, ...] = tuple(item_ids)
        self.manifest = manifest
        self.path = path
        self._device = Device(device)

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

        def text_encoder(name: str) -> OnnxEncoder:
            spec = manifest.towers[name]
            tokenizer = TextTokenizer(
                Tokenizer.from_str(tokenizer_json), max_length=spec.max_length, pad_token=manifest.pad_token
            )
            return OnnxEncoder(sessions[spec.file], tokenizer, dim=spec.dim)

        spec = manifest.index
        item_ids = json.loads((bundle / spec.item_ids_file).read_text(encoding="utf-8"))
        if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
            raise BundleError(f"{bundle / spec.item_ids_file} must hold a JSON list of item id strings")
        catalog = Catalog.read_jsonl(bundle / manifest.catalog_file)
        sequence = manifest.user.kind == "sequence"
        vectors = None
        if exact or sequence:
            vectors = np.load(bundle / spec.vectors_file, allow_pickle=False)
        index: Index
        if exact and vectors is not None:
            index = ExactIndex(vectors)
        else:
            params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
            index = HnswIndex.load(bundle / spec.file, space=spec.space, dim=spec.dim, params=params)
        user_encoder: UserEncoder
        if sequence and vectors is not None:
            label = {item_id: i for i, item_id in enumerate(item_ids)}
            stored = vectors
            user_encoder = SequenceUserEncoder(
                sessions[manifest.user.file],
                lambda item_id: stored[label[item_id]],
                dim=manifest.user.dim,
                max_history=manifest.user.max_length,
                requests=text_encoder("request"),
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
        )
        logger.info("loaded %s: %d items, device %s", bundle, len(item_ids), planned)
        return engine

    @staticmethod
    def _sessions(bundle: Path, manifest: Manifest, device: Device, threads: int | None) -> dict[str, Any]:
        # Towers that share one graph file (shared weights) share one session.
        files = sorted({spec.file for spec in manifest.towers.values()})
        return {f: create_session(bundle / f, device, threads=threads) for f in files}

    # -- properties -----------------------------------------------------------------------------

    @property
    def device(self) -> Device:
        """The device the graphs really run on (``cpu`` or ``cuda``), never ``auto``."""
        return self._device

    @property
    def dim(self) -> int:
        return self.user_encoder.dim

    def __len__(self) -> int:
        return len(self.item_ids)

    # -- encoding -------------------------------------------------------------------------------

    def _checked(self, request: Query | Mapping[str, Any]) -> Query:
        query = Query.coerce(request)
        unknown = [h for h in query.history if h not in self.catalog]
        if unknown:
            raise UnknownItemError(unknown, len(self.catalog))
        return query

    def user_text(self, query: Query | Mapping[str, Any]) -> str:
        """The exact text a text user tower reads for ``query``."""
        if not isinstance(self.user_encoder, TextUserEncoder):
            raise QueryError("this bundle's user tower reads the history's item vectors, not text")
        return self.user_encoder.text(self._checked(query))

    def encode_users(self, requests: Sequence[Query | Mapping[str, Any]]) -> np.ndarray:
        """User vectors, ``float32 (len(requests), dim)``, unit norm."""
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
    ) -> list[Recommendation]:
        """Top-``k`` items for one user; see the class docstring for the rules."""
        query = Query(history=history if history is not None else (), text=text)  # type: ignore[arg-type]
        return self.recommend_batch([query], k=k, exclude_seen=exclude_seen)[0]

    def recommend_batch(
        self,
        requests: Sequence[Query | Mapping[str, Any]],
        *,
        k: int = 10,
        exclude_seen: bool = True,
    ) -> list[list[Recommendation]]:
        """One list of recommendations per request, in order; one ONNX run and one index search."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        if k > len(self.item_ids):
            raise QueryError(f"k={k} is larger than the catalogue ({len(self.item_ids)} items)")
        if isinstance(requests, (str, Mapping, Query)):
            raise QueryError("recommend_batch takes a list of requests; use recommend() for one")
        queries = [Query.coerce(r) for r in requests]
        if not queries:
            return []
        vectors = self.encode_users(queries)
        seen = [set(q.history) if exclude_seen else set() for q in queries]
        fetch = min(len(self.item_ids), k + max(len(s) for s in seen))
        labels, scores = self.index.search(vectors, fetch)
        results = []
        for row_labels, row_scores, row_seen in zip(labels, scores, seen, strict=True):
            recs: list[Recommendation] = []
            for label, score in zip(row_labels.tolist(), row_scores.tolist(), strict=True):
                item_id = self.item_ids[label]
                if item_id in row_seen:
                    continue
                item = self.catalog.get(item_id)
                recs.append(Recommendation(item_id, float(score), item.text, item.attributes))
                if len(recs) == k:
                    break
            results.append(recs)
        return results
