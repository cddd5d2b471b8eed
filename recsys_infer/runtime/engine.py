"""The serving engine: a bundle's two towers, its item index and its catalogue, composed.

Torch-free by construction: it needs numpy, onnxruntime, tokenizers and hnswlib only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from recsys_infer.enums import Backend, Device, Spin
from recsys_infer.errors import (
    BundleError,
    ConfigError,
    DeviceUnavailableError,
    QueryError,
    UnknownItemError,
)

from . import backends as runtimes
from . import hub
from .bundle import Manifest, read_item_ids, read_manifest, verify_files, write_catalog_bundle
from .cache import CachedEncoder, CacheStats
from .catalog import Catalog, Item
from .encoder import CPU_BATCH_TOKENS, Encoder, OnnxEncoder
from .index import ExactIndex, HnswIndex, HnswParams, Index
from .manifest import CatalogEdit, SeenSpec
from .options import (
    AttributeFilter,
    RecommendOptions,
    Where,
    as_list,
    check_attributes,
    check_new_id,
    check_text,
    excerpt,
    id_list,
)
from .providers import Placement, create_session, parse_device, plan_placement
from .rwlock import RWLock
from .store import EditMode, Hit, ItemStore, LocalItems, refuse_taken
from .tokenizer import TextTokenizer
from .types import Query, Reason, Recommendation
from .users import SequenceUserEncoder, TextUserEncoder, UserEncoder

logger = logging.getLogger(__name__)


_WORD = re.compile(r"[^\W_][\w'-]*", re.UNICODE)


def _request_list(requests: object, what: str) -> list[Any]:
    if isinstance(requests, Query):
        raise QueryError(f"{what} takes a list of requests, got one Query; use recommend() for one")
    return as_list(requests, f"{what} takes a list of requests", "; use recommend() for one")


def tower_encoder(
    manifest: Manifest,
    name: str,
    sessions: Mapping[str, Any],
    tokenizer_json: str,
    *,
    io_binding: bool = False,
    workers: int = 1,
) -> OnnxEncoder:
    """One text tower of a bundle (``item``, ``user`` or ``request``) over its running session;
    ``io_binding`` for a GPU's session, ``workers``: batches run at once (:class:`OnnxEncoder`)."""
    spec = manifest.towers[name]
    tokenizer = TextTokenizer(
        Tokenizer.from_str(tokenizer_json), max_length=spec.max_length, pad_token=manifest.tokenizer.pad_token
    )
    return OnnxEncoder(
        sessions[spec.file],
        tokenizer,
        dim=spec.dim,
        batch_tokens=None if io_binding else CPU_BATCH_TOKENS,  # a GPU wants its batches whole
        workers=workers,
        io_binding=io_binding,
    )


def cpu_workers(threads: int | None) -> int:
    """Batches a catalogue encoder runs at once on the CPU: ``threads``, else the cores this
    process may use."""
    return threads or len(os.sched_getaffinity(0))


def load_item_tower(
    bundle: Path, *, threads: int | None = None, backend: Backend | str = Backend.ONNXRUNTIME
) -> OnnxEncoder:
    """A bundle's item tower alone, on the CPU, its batches run ``threads`` at once (default:
    every core), each on one core (catalogue encoding workers load only this). ``backend``: as
    :meth:`Engine.load` takes it; ``auto`` times the catalogue's first 64 texts on both runtimes."""
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    spec, workers, chosen = manifest.item, cpu_workers(threads), Backend.of(backend)
    tokenizer_json = (bundle / manifest.tokenizer.file).read_text(encoding="utf-8")

    def encoder(session: Any) -> OnnxEncoder:
        return tower_encoder(manifest, "item", {spec.file: session}, tokenizer_json, workers=workers)

    onnx = encoder(create_session(bundle / spec.file, Device.CPU, threads=1))
    if chosen is Backend.ONNXRUNTIME or (chosen is Backend.AUTO and not runtimes.openvino_available()):
        return onnx
    ov = runtimes.OpenVinoSession(bundle / spec.file, threads=workers, streams=workers)
    if chosen is Backend.OPENVINO:
        return encoder(ov)
    texts = Catalog.read_jsonl(bundle / manifest.catalog.file).texts[:64]
    openvino = encoder(ov)
    pick = runtimes.choose(
        {Backend.ONNXRUNTIME: lambda: onnx.encode(texts), Backend.OPENVINO: lambda: openvino.encode(texts)},
        runtimes.least_cosine,
        gate=runtimes.MIN_ITEM_COSINE,
        precisions={Backend.ONNXRUNTIME: str(spec.precision), Backend.OPENVINO: ov.precision},
    )
    logger.info("item tower on %s: %s", pick.backend, pick.why)
    return openvino if pick.backend is Backend.OPENVINO else onnx


def _item_streamed(manifest: Manifest, placement: Placement) -> bool:
    """Whether the item graph runs a batch per core: on the CPU, where no other tower runs its
    graph file (towers that share weights share a session, whose threads the others need)."""
    return placement.device is Device.CPU and all(
        spec.file != manifest.item.file for name, spec in manifest.towers.items() if name != "item"
    )


def _encoders(
    manifest: Manifest,
    store: ItemStore,
    tokenizer_json: str,
    sessions: Mapping[str, Any],
    *,
    io_binding: bool,
    item_workers: int,
    request_cache: int = 0,
) -> tuple[UserEncoder, OnnxEncoder]:
    """The user and item encoders of a bundle whose towers run in ``sessions`` (by tower name)."""

    def text_encoder(name: str, workers: int = 1) -> OnnxEncoder:
        graph = {manifest.towers[name].file: sessions[name]}
        return tower_encoder(manifest, name, graph, tokenizer_json, io_binding=io_binding, workers=workers)

    def request_encoder(name: str) -> Encoder:
        encoder = text_encoder(name)
        return CachedEncoder(encoder, request_cache) if request_cache else encoder

    user_encoder: UserEncoder
    if manifest.user.kind == "sequence":
        user_encoder = SequenceUserEncoder(
            sessions["user"],
            store.vectors,
            dim=manifest.user.dim,
            max_history=manifest.user.max_length,
            requests=request_encoder("request"),
            io_binding=io_binding,
            fusion=manifest.fusion,
        )
    else:
        user_encoder = TextUserEncoder(request_encoder("user"), store, manifest.user_input)
    return user_encoder, text_encoder("item", item_workers)


#: :func:`_encoders` with the bundle's arguments bound: sessions by tower name in, encoders out.
Build = Callable[..., tuple[UserEncoder, OnnxEncoder]]


def _backends(
    bundle: Path,
    manifest: Manifest,
    backend: Backend,
    placement: Placement,
    onnx: dict[str, Any],
    build: Build,
    store: ItemStore,
    *,
    item_workers: int,
    threads: int | None,
    precision: str | None,
) -> tuple[dict[str, Any], dict[str, runtimes.TowerBackend]]:
    """The session each tower runs in, and which runtime that is and why (``backend``: the one
    asked for; ``auto`` measures, see :mod:`~recsys_infer.runtime.backends`)."""
    asked = f"backend={str(backend)!r} (the engine's setting)"
    graphs = {name: str(spec.precision) for name, spec in manifest.towers.items()}
    kept = {n: runtimes.TowerBackend(Backend.ONNXRUNTIME, graphs[n], asked) for n in onnx}
    if backend is Backend.ONNXRUNTIME:
        return onnx, kept
    problem = None
    if placement.device is not Device.CPU:
        problem = f"OpenVINO runs the graphs on the CPU here, and they run on {placement}"
    elif not runtimes.openvino_available():
        problem = f"OpenVINO is not installed ({runtimes.OPENVINO_HINT})"
    if problem and backend is Backend.OPENVINO:
        runtimes.openvino()  # not installed: the error that names the extra
        raise ConfigError(f"backend='openvino' cannot run: {problem}; load with device='cpu'")
    if problem:
        logger.info("backend 'auto': ONNX Runtime, because %s", problem)
        return onnx, {n: replace(t, why=problem) for n, t in kept.items()}
    # One compiled model per graph file, as one ONNX Runtime session (towers sharing weights share
    # it); an item graph of its own runs a stream per catalogue-encoding worker.
    alone = manifest.item.file if item_workers > 1 else None
    compiled = {
        f: runtimes.OpenVinoSession(
            bundle / f,
            threads=item_workers if f == alone else threads,
            streams=item_workers if f == alone else 1,
            precision=precision,
        )
        for f in sorted({spec.file for spec in manifest.towers.values()})
    }
    openvino = {name: compiled[spec.file] for name, spec in manifest.towers.items()}
    ran = {n: f"{graphs[n]} graph in {openvino[n].precision}" for n in onnx}
    if backend is Backend.OPENVINO:
        return openvino, {n: runtimes.TowerBackend(backend, ran[n], asked) for n in onnx}

    def top10(vectors: np.ndarray) -> list[list[str]]:
        hits = store.search(vectors, 10, blocked=[frozenset()] * len(vectors))
        return [[item.item_id for item, _ in row] for row in hits]

    found = runtimes.measure(
        list(onnx),
        {Backend.ONNXRUNTIME: build(onnx), Backend.OPENVINO: build(openvino)},
        top10,
        _probe(bundle, manifest, store),
        {n: {Backend.ONNXRUNTIME: graphs[n], Backend.OPENVINO: ran[n]} for n in onnx},
    )
    logger.info("backend 'auto': %s", {n: str(t.backend) for n, t in found.items()})
    return {n: (openvino if t.backend is Backend.OPENVINO else onnx)[n] for n, t in found.items()}, found


def _probe(bundle: Path, manifest: Manifest, store: ItemStore, n: int = 16) -> runtimes.Probe:
    """What ``auto`` times the towers on: the bundle's probe (its first ``n`` histories whose
    items are all indexed, and requests), else the catalogue's first items and their texts."""
    ids = list(store.ids()[:64])
    texts = [item.text for item in store.items(ids)]
    histories, requests = [[i] for i in ids[:n]], texts[:n]
    if manifest.probe is not None and (bundle / manifest.probe.file).is_file():
        probe = json.loads((bundle / manifest.probe.file).read_text(encoding="utf-8"))
        known = [list(h) for h in probe.get("histories", []) if h and not store.missing(h)]
        histories = known[:n] or histories
        requests = [t for t in probe.get("requests", []) if t and t.strip()][:n] or requests
    return runtimes.Probe(texts, histories, requests)


def _open_store(bundle: Path, manifest: Manifest, *, exact: bool, milvus_uri: str | None) -> ItemStore:
    """The bundle's items and index: its HNSW file (or exact search) here, or its Milvus collection."""
    spec = manifest.index
    if spec.kind == "milvus":
        if exact:
            raise BundleError(
                "exact=True searches a bundle's own item vectors; this bundle's index is Milvus"
            )
        from .milvus import MilvusIndex

        return MilvusIndex.connect(spec, uri=milvus_uri)
    if milvus_uri is not None:
        raise BundleError(f"milvus_uri was given, but this bundle's index is {spec.kind!r}, not Milvus")
    item_ids = read_item_ids(bundle / spec.item_ids_file)
    catalog = Catalog.read_jsonl(bundle / manifest.catalog.file)
    vectors = np.load(bundle / spec.vectors_file, allow_pickle=False, mmap_mode="r")
    removed = [n for n, i in enumerate(item_ids) if i is None]
    index: Index
    if exact:
        index = ExactIndex(np.asarray(vectors), removed=removed)
    else:
        params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
        index = HnswIndex.load(
            bundle / spec.hnsw_file, space=spec.space, dim=spec.dim, params=params, removed=removed
        )
    return LocalItems(index=index, catalog=catalog, item_ids=item_ids, vectors=vectors, dim=spec.dim)


#: What ``where=`` accepts: attribute values to match, or a function of an item's attributes.
WhereLike = Where | Mapping[str, Any] | AttributeFilter


def _options(
    options: RecommendOptions | None,
    k: int | None,
    exclude_seen: bool | None,
    exclude: Iterable[str] | None,
    allow: Iterable[str] | None,
    where: WhereLike | None,
    explain: bool | None,
) -> RecommendOptions:
    """``options`` with every keyword that was given (not ``None``) over it."""
    given = {
        "k": k, "exclude_seen": exclude_seen, "exclude": exclude, "allow": allow, "where": where,
        "explain": explain,
    }  # fmt: skip
    return RecommendOptions.of(options, **{name: v for name, v in given.items() if v is not None})


class _Closed:
    """Stands in for a closed engine's towers and store: any use says what happened."""

    def _refuse(self, *args: object) -> Any:
        raise QueryError("this engine was closed; load the bundle again to use it")

    __getattr__ = __len__ = __iter__ = _refuse


class Engine:
    """Recommends catalogue items for users described by history and/or free text.

    Build one with :meth:`load`; the constructor composes already-made parts: the towers and an
    item store (tests inject a :class:`LocalItems` over an :class:`ExactIndex`, or their own
    encoders, this way). The items live in this process (:class:`LocalItems`, the default) or
    in a Milvus collection shared with other engines (:class:`~.milvus.MilvusIndex`).

    Unknown item ids in a history raise :class:`UnknownItemError` (there is nothing to read for
    them: no text, no vector).
    With ``exclude_seen=True`` (the default) history items are never returned; when the
    catalogue is so small that fewer than ``k`` unseen items remain, fewer are returned. With
    ``False`` they are ranked with the bundle's seen penalty off their scores (``SeenSpec``).

    Thread safety: every public method may be called from many threads at once. Reads
    (``recommend*``, ``encode_users``, ``explain``, ``item_ids``, ``save``) share a lock;
    catalogue edits (``add_items``, ``update_items``, ``remove_items``) take it alone, after
    encoding their texts outside it, and are atomic: once one returns, every later call sees
    the whole edit, and an item removed is never returned again. On a shared Milvus
    collection the same holds across engines: an edit through one is seen by the next call of
    every other (reads use strong consistency), though two engines' edits are not ordered
    against each other beyond what Milvus does.
    """

    def __init__(
        self,
        *,
        user_encoder: UserEncoder,
        item_encoder: Encoder,
        store: ItemStore,
        device: Device | Placement = Device.CPU,
        manifest: Manifest | None = None,
        path: Path | None = None,
        seen: SeenSpec | None = None,
        backends: Mapping[str, runtimes.TowerBackend] | None = None,
    ) -> None:
        """``store``: the catalogue's items and their index (:class:`LocalItems` or
        :class:`~recsys_infer.runtime.milvus.MilvusIndex`). ``seen``: what history items lose
        when they may be returned (default: the manifest's, else nothing)."""
        if user_encoder.dim != item_encoder.dim or store.dim != item_encoder.dim:
            raise BundleError(
                f"the user tower emits {user_encoder.dim}-d vectors, the item tower {item_encoder.dim}-d "
                f"and the item index holds {store.dim}-d ones; they must agree"
            )
        self.user_encoder = user_encoder
        self.item_encoder = item_encoder
        self.store = store
        self.manifest = manifest
        self.path = path
        if seen is None:
            seen = manifest.seen if manifest is not None and manifest.seen else SeenSpec()
        self.seen = seen
        #: Which runtime runs each tower, and why (:class:`~recsys_infer.runtime.backends.TowerBackend`).
        self.backends = dict(backends or {})
        self._placement = device if isinstance(device, Placement) else Placement(Device(device))
        self._lock = RWLock()
        self._edits = {"added": 0, "updated": 0, "removed": 0}

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}" if self.path is not None else "in memory"
        if isinstance(self.store, _Closed):
            return f"<Engine {where}, closed>"
        return f"<Engine {where}, {len(self)} items, {self.dim}-d, on {self.device_name}>"

    def close(self) -> None:
        """Release the ONNX sessions, the index and any connection to a Milvus server; the engine
        refuses every later call. Safe to call twice."""
        if isinstance(self.store, _Closed):
            return
        with self._lock.write():
            closer = getattr(self.store, "close", None)
            if callable(closer):
                closer()
            closed: Any = _Closed()
            self.user_encoder, self.item_encoder, self.store = closed, closed, closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        milvus_uri: str | None = None,
        provider_options: Mapping[str, Any] | None = None,
        request_cache: int = 0,
        spin: Spin | bool = True,
        revision: str | None = None,
        backend: Backend | str = Backend.ONNXRUNTIME,
        openvino_precision: str | None = None,
    ) -> Engine:
        """Load a bundle directory, or a bundle on the Hugging Face Hub named ``hf://OWNER/NAME``
        (at ``revision``: a branch, tag or commit; downloaded with the ``hub`` extra, then
        verified like any other, see :mod:`~recsys_infer.runtime.hub`).

        ``device``: ``"auto"`` (CUDA when it really works, else the CPU with a WARNING; the
        reason is kept in :attr:`device_fallback`), ``"cpu"``, ``"cuda"``/``"cuda:N"`` or
        ``"tensorrt"``/``"tensorrt:N"`` (an error when that GPU cannot run the bundle).
        ``provider_options``: passed to the GPU provider as they are (CUDA:
        ``arena_extend_strategy``, ``cudnn_conv_algo_search``, ``enable_cuda_graph``, ...;
        TensorRT: ``trt_fp16_enable``, ``trt_engine_cache_enable``, ``trt_engine_cache_path``,
        ...). ``request_cache``: keep up to this many request vectors (0: off), so that a text
        seen again skips the transformer (:mod:`~recsys_infer.runtime.cache`). ``threads``: ONNX
        Runtime intra-op threads (default: ONNX Runtime's choice, the physical cores); on the
        CPU, an item graph that no other tower runs gets one thread instead, and encodes many
        texts ``threads`` batches at a time (default: the cores this process may use). ``spin``:
        when those threads busy-wait, a :class:`~recsys_infer.enums.Spin` (``True``: ``always``,
        ONNX Runtime's default; ``"run"``: only while a run lasts; ``False``: ``never``, for
        machines whose cores other busy work shares; see :func:`create_session`).
        ``exact``: rank by exact search over the stored item vectors instead of the HNSW index.
        ``verify``: check every file's sha256 (sizes are always checked). ``milvus_uri``: for a
        bundle whose index is a Milvus collection, the server to connect to instead of the one
        the manifest records. ``backend``: the runtime of the graphs on the CPU,
        ``"onnxruntime"``, ``"openvino"`` (the ``openvino`` extra; at ``openvino_precision``,
        ``bf16``, ``f16`` or ``f32``, default OpenVINO's: bf16 where the CPU has it) or ``"auto"``:
        per tower the faster of the two on the bundle's probe, among those that agree with ONNX
        Runtime (:mod:`~recsys_infer.runtime.backends`; :attr:`backends` says what ran where, and
        why).
        """
        bundle = hub.local_bundle(path, revision)
        manifest = read_manifest(bundle)
        verify_files(bundle, manifest, checksums=verify)
        sessions, placement = cls._start(bundle, manifest, device, threads, provider_options, spin)
        store = _open_store(bundle, manifest, exact=exact, milvus_uri=milvus_uri)
        item_workers = cpu_workers(threads) if _item_streamed(manifest, placement) else 1
        build = partial(
            _encoders,
            manifest,
            store,
            (bundle / manifest.tokenizer.file).read_text(encoding="utf-8"),
            io_binding=placement.device is not Device.CPU,  # inputs and outputs bound on the GPU
            item_workers=item_workers,
        )
        onnx = {name: sessions[spec.file] for name, spec in manifest.towers.items()}
        chosen, backends = _backends(
            bundle, manifest, Backend.of(backend), placement, onnx, build, store,
            item_workers=item_workers, threads=threads, precision=openvino_precision,
        )  # fmt: skip
        user_encoder, item_encoder = build(chosen, request_cache=request_cache)
        engine = cls(
            user_encoder=user_encoder,
            item_encoder=item_encoder,
            store=store,
            device=placement,
            manifest=manifest,
            path=bundle,
            backends=backends,
        )
        logger.info("loaded %s: %d items, device %s", bundle, len(engine), placement)
        return engine

    @classmethod
    def _start(
        cls,
        bundle: Path,
        manifest: Manifest,
        requested: Device | str,
        threads: int | None,
        provider_options: Mapping[str, Any] | None,
        spin: Spin | bool = True,
    ) -> tuple[dict[str, Any], Placement]:
        """ONNX Runtime sessions for the bundle's graphs, and where they run."""
        placement = plan_placement(
            requested, [t.precision for t in manifest.towers.values()], provider_options=provider_options
        )
        try:
            return cls._sessions(bundle, manifest, placement, threads, spin), placement
        except DeviceUnavailableError as e:
            if parse_device(requested)[0] is not Device.AUTO:
                raise
            logger.warning("device 'auto': the GPU could not start (%s); running on the CPU", e)
            cpu = Placement(Device.CPU, fallback=str(e))
            return cls._sessions(bundle, manifest, cpu, threads, spin), cpu

    @staticmethod
    def _sessions(
        bundle: Path, manifest: Manifest, placement: Placement, threads: int | None, spin: Spin | bool = True
    ) -> dict[str, Any]:
        # Towers that share one graph file (shared weights) share one session. On the CPU, an
        # item graph of its own gets one thread: its encoder runs a batch per core instead.
        files = sorted({spec.file for spec in manifest.towers.values()})
        alone = manifest.item.file if _item_streamed(manifest, placement) else None
        return {
            f: create_session(bundle / f, placement, threads=1 if f == alone else threads, spin=spin)
            for f in files
        }

    # -- properties -----------------------------------------------------------------------------

    @property
    def device(self) -> Device:
        """The device the graphs really run on (``cpu``, ``cuda`` or ``tensorrt``), never ``auto``."""
        return self._placement.device

    @property
    def request_encoder(self) -> Encoder | None:
        """The text encoder a free-text request goes through: the request tower (sequence kind)
        or the text user tower; None for a user encoder of another kind."""
        users = self.user_encoder
        if isinstance(users, SequenceUserEncoder):
            return users.requests
        if isinstance(users, TextUserEncoder):
            return users.encoder
        return None

    def request_cache(self) -> CacheStats | None:
        """Hits, misses and size of the request cache; None when it is off."""
        encoder = self.request_encoder
        return encoder.stats() if isinstance(encoder, CachedEncoder) else None

    @property
    def device_name(self) -> str:
        """The device with its GPU index: ``cpu``, ``cuda:0``, ``cuda:1``, ..."""
        return str(self._placement)

    @property
    def device_fallback(self) -> str | None:
        """Why ``device="auto"`` runs on the CPU instead of a GPU; None when it did not fall back."""
        return self._placement.fallback

    @property
    def shared_index(self) -> bool:
        """True when the items live in a shared index (a Milvus collection): edits are stored
        there at once, and every engine connected to it sees them; nothing is left to save."""
        return not isinstance(self.store, LocalItems)

    @property
    def dim(self) -> int:
        return self.user_encoder.dim

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The ids of the items that can be recommended, in index order."""
        with self._lock.read():
            return self.store.ids()

    def __len__(self) -> int:
        return len(self.store)

    def item(self, item_id: str) -> Item:
        """One catalogue item, as stored now; :class:`UnknownItemError` when it is not there."""
        return self.items([item_id])[0]

    def items(self, item_ids: Sequence[str]) -> list[Item]:
        """Catalogue items by id, in order, as stored now."""
        ids = id_list(item_ids, "item_ids")
        with self._lock.read():
            self._refuse_unknown(ids)
            return self.store.items(ids)

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """The stored item vectors (the ones the index searches), ``float32 (n, dim)``."""
        ids = id_list(item_ids, "item_ids")
        with self._lock.read():
            self._refuse_unknown(ids)
            return self.store.vectors(ids)

    def _refuse_unknown(self, ids: Sequence[str], what: str = "history") -> None:
        unknown = self.store.missing(ids)
        if unknown:
            raise UnknownItemError(unknown, len(self.store), what=what)

    # -- encoding -------------------------------------------------------------------------------

    def _all_checked(self, requests: Sequence[Query | Mapping[str, Any]]) -> list[Query]:
        """The requests as queries, their histories checked in one lookup (one round trip for
        a store on a server)."""
        queries = [Query.coerce(r) for r in requests]
        history = list(dict.fromkeys(h for q in queries for h in q.history))
        if history:
            self._refuse_unknown(history)
        return queries

    def _checked(self, request: Query | Mapping[str, Any]) -> Query:
        query = Query.coerce(request)
        if query.history:
            self._refuse_unknown(query.history)
        return query

    def _check_k(self, options: RecommendOptions) -> None:
        size = len(self.store)
        if options.k > size:
            raise QueryError(f"k={options.k} is larger than the catalogue ({size} items)")

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
            return self.user_encoder.encode(self._all_checked(queries))

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
        k: int | None = None,
        exclude_seen: bool | None = None,
        exclude: Iterable[str] | None = None,
        allow: Iterable[str] | None = None,
        where: WhereLike | None = None,
        explain: bool | None = None,
        options: RecommendOptions | None = None,
    ) -> list[Recommendation]:
        """The top ``k`` items for one user, best first.

        Args:
            history: item ids the user interacted with, oldest first (``None``: none).
            text: a free-text request ("cozy mysteries set in Scotland").
            k: how many items (default 10).
            exclude_seen: never return history items (default True). False lets them compete,
                less the bundle's seen penalty (chosen on validation at export; ``info``).
            exclude: ids that must not come back.
            allow: only these ids may come back.
            where: keep items whose attributes match: a mapping of attribute to wanted value (a
                list-valued attribute matches when it contains the value), or a function of an
                item's attributes.
            explain: fill each result's ``because`` with the closest history items or words.
            options: a :class:`RecommendOptions` holding all of the above; a keyword given here
                (not ``None``) overrides its field.

        Returns:
            Up to ``k`` :class:`Recommendation` (fewer only when fewer items pass the filters).

        Raises:
            QueryError: an empty query, a ``k`` below 1 or above the catalogue, a bad filter.
            UnknownItemError: a history id the catalogue does not hold.

        Example::

            engine.recommend(history=["1", "50"], text="but funnier", k=5, exclude=["2"])
        """
        chosen = _options(options, k, exclude_seen, exclude, allow, where, explain)
        return self.recommend_batch([Query(history, text)], options=chosen)[0]

    def recommend_batch(
        self,
        requests: Sequence[Query | Mapping[str, Any]],
        *,
        k: int | None = None,
        exclude_seen: bool | None = None,
        exclude: Iterable[str] | None = None,
        allow: Iterable[str] | None = None,
        where: WhereLike | None = None,
        explain: bool | None = None,
        options: RecommendOptions | None = None,
    ) -> list[list[Recommendation]]:
        """One list of recommendations per request, in order; one ONNX run and one index search.

        ``requests`` are :class:`Query` values or mappings with ``history`` and/or ``text``; the
        keywords are :meth:`recommend`'s and apply to every request. Filters apply during the
        search, so ``k`` items still come back when many are filtered out (fewer only when
        fewer pass)."""
        o = _options(options, k, exclude_seen, exclude, allow, where, explain)
        queries = [Query.coerce(r) for r in _request_list(requests, "recommend_batch")]
        if not queries:
            return []
        with self._lock.read():
            self._check_k(o)
            vectors = self.user_encoder.encode(self._all_checked(queries))
            hits = self._search(queries, vectors, o)
            results = [
                [
                    Recommendation(item.item_id, float(score), item.text, item.attributes)
                    for item, score in row
                ]
                for row in hits
            ]
            if o.explain:
                results = [self._explain(q, recs) for q, recs in zip(queries, results, strict=True)]
        return results

    def _search(self, queries: Sequence[Query], vectors: np.ndarray, o: RecommendOptions) -> list[list[Hit]]:
        """Each query's top ``o.k``. History items are left out (``exclude_seen``), or compete
        with the bundle's seen penalty taken off their scores (:class:`SeenSpec`)."""
        penalties = [self.seen.of(q) for q in queries]
        if o.exclude_seen or not any(penalties):
            blocked = [o.exclude | set(q.history) if o.exclude_seen else o.exclude for q in queries]
            return self.store.search(vectors, o.k, blocked=blocked, allow=o.allow, where=o.where)
        # A penalty only lowers scores, so the top k after it lie within the top k + (distinct
        # history items) before it.
        seen = [set(q.history) for q in queries]
        depth = min(len(self.store), o.k + max(len(s) for s in seen))
        hits = self.store.search(
            vectors, depth, blocked=[o.exclude] * len(queries), allow=o.allow, where=o.where
        )
        out = []
        for row, history, penalty in zip(hits, seen, penalties, strict=True):
            scored = [(item, score - penalty if item.item_id in history else score) for item, score in row]
            out.append(sorted(scored, key=lambda hit: -hit[1])[: o.k])  # stable: ties keep index order
        return out

    # -- explanations ---------------------------------------------------------------------------

    def explain(
        self, history: Sequence[str] | None = None, text: str | None = None, *, item_ids: Sequence[str]
    ) -> dict[str, tuple[Reason, ...]]:
        """Why each of ``item_ids`` suits this user: the closest history items or request words."""
        query = Query(history, text)
        with self._lock.read():
            query = self._checked(query)
            self._refuse_unknown(item_ids, "item")
            stub = [Recommendation(i, 0.0, "", {}) for i in item_ids]
            return {r.item_id: r.because for r in self._explain(query, stub)}

    def _explain(self, query: Query, recs: list[Recommendation], top: int = 3) -> list[Recommendation]:
        if not recs:
            return recs
        targets = self.store.vectors([r.item_id for r in recs])
        sources: list[tuple[str, str]] = []
        vectors = []
        if query.history:
            history = list(dict.fromkeys(query.history[-50:]))
            sources += [("history", h) for h in history]
            vectors.append(self.store.vectors(history))
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
        ids = [check_new_id(i) for i in id_list(ids, "ids")]
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

    def _edit(self, items: list[Item], mode: EditMode) -> None:
        """Encode outside the lock, then apply the whole edit under the writer lock."""
        if mode == "add":
            missing = set(self.store.missing([i.item_id for i in items]))
            refuse_taken([i.item_id for i in items if i.item_id not in missing])
        vectors = self.item_encoder.encode([i.text for i in items])
        with self._lock.write():
            added, updated = self.store.write(items, vectors, mode)
            self._edits["added"] += added
            self._edits["updated"] += updated

    def remove_items(self, ids: Sequence[str]) -> None:
        """Take items out: never recommended again, and unknown to histories from now on. Their
        slots are reused by later additions."""
        ids = list(dict.fromkeys(id_list(ids, "ids")))
        with self._lock.write():
            self._refuse_unknown(ids, "item")
            if len(ids) >= len(self.store):
                raise QueryError("cannot remove every item: an engine needs at least one to recommend")
            self.store.remove(ids)
            self._edits["removed"] += len(ids)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the bundle with the current catalogue and index to ``path``, crash-safely: at
        every instant ``path`` holds a whole bundle, old or new. Saving over an existing bundle
        (the one this engine was loaded from included) needs ``overwrite=True``; anything at
        ``path`` that is not a bundle is refused."""
        if self.path is None or self.manifest is None:
            raise BundleError("only an engine loaded from a bundle can be saved")
        store = self.store
        if not isinstance(store, LocalItems) or not isinstance(store.index, HnswIndex):
            raise BundleError(
                "only an engine on its bundle's HNSW index can be saved: one loaded with exact=True has no "
                "index to save (load it without), and a Milvus collection keeps its edits itself"
            )
        target = Path(path)
        with self._lock.read():
            vectors, item_ids, free = store.snapshot()
            edit = CatalogEdit(
                saved_at=datetime.now(UTC).isoformat(timespec="seconds"),
                added=self._edits["added"],
                updated=self._edits["updated"],
                removed=self._edits["removed"],
                items=len(store),
                removed_slots=free,
            )
            written = write_catalog_bundle(
                self.path, self.manifest, target, index=store.index, vectors=vectors, item_ids=item_ids,
                catalog=store.catalog, overwrite=overwrite,
                amend=lambda m: replace(m, catalogue_edits=(*m.catalogue_edits, edit)),
            )  # fmt: skip
            if target.resolve() == self.path.resolve():
                self.manifest = written
        return target
