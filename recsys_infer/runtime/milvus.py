"""The item index in Milvus: a collection that holds every item's vector, text and attributes.

Every engine connected to one collection sees the same catalogue: an edit through any of them
(``add_items``, ``update_items``, ``remove_items``) is a write to the collection, and every
read (search, history vectors, item texts for a text user tower and for responses) goes to it.
An engine always sees its own edits: its first read after one is a strong read, which waits
until the server has applied it (pymilvus's own "Session" level does not cover deletes). How
fresh its other reads are is the bundle's :class:`~recsys_infer.enums.Consistency`: by default
``session``, which sees other processes' edits once the server has applied them (a Milvus
server: within a few hundred milliseconds; Milvus Lite: at once), or ``strong``, which sees
every edit made anywhere before the read, but on a Milvus server waits for the server's next
time tick on every read (measured: 0.2 to 0.4 s a query, against 4 ms). Milvus Lite (``pip install
milvus-lite``; a URI that is a local ``.db`` path, or ``python -m milvus_lite server`` for
several processes) serves tests and single machines; a Milvus server or cluster URI serves
production.

A Milvus query is a network round trip (milliseconds, where the embedded hnswlib index takes
tens of microseconds): the engine sends one search per batch of requests, and the embedded
index stays the default.

Filters: ``allow`` and ``where`` are pushed down as a Milvus filter expression where they can
be written as one (string and boolean values, plain attribute names); ``exclude`` and the
history are skipped after an over-fetch; anything left (a ``where`` function, numbers) is
applied after a search that fetches more and more, and past Milvus's largest ``limit`` a scan
of the collection, so ``k`` items come back whenever ``k`` pass, as with the embedded index.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.enums import Consistency, Space, VectorStorage
from recsys_infer.errors import (
    BackendUnavailableError,
    BundleError,
    ConfigError,
    MissingDependencyError,
    OutputExistsError,
    QueryError,
    UnknownItemError,
)

from .catalog import Item
from .index import HnswParams
from .manifest import IndexSpec
from .options import AttributeFilter, Where, excerpt
from .store import EditMode, Hit, refuse_taken

logger = logging.getLogger(__name__)

#: The environment variable that holds the Milvus token (``user:password`` or an API key).
TOKEN_ENV = "RECSYS_INFER_MILVUS_TOKEN"
#: Seconds any one Milvus call may take before it is an :class:`BackendUnavailableError`.
DEFAULT_TIMEOUT_S = 10.0
#: The longest item id and item text a collection stores (UTF-8 bytes).
MAX_ID_BYTES = 1024
MAX_TEXT_BYTES = 65_535
#: Milvus's largest ``limit`` for one search.
MAX_FETCH = 16_384
#: Rows per insert and per page of a scan.
BATCH = 2_000
#: Tries of a collection load that fails on a transient read (see :meth:`MilvusIndex._load`).
LOAD_TRIES = 4

_FIELDS = ("item_id", "vector", "text", "attributes")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,128}")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise MissingDependencyError("pymilvus", "scale") from None
    return pymilvus


def _literal(value: object) -> str | None:
    """``value`` as a Milvus expression literal, or None when it cannot be written as one
    exactly (numbers, whose JSON typing differs, and strings that need ``\\u`` escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return None if "\\u" in text else text
    return None


def ids_expression(ids: Sequence[str], *, negate: bool = False) -> str:
    """``item_id in [...]`` over the ids that can be written as literals (the others cannot
    be in a collection: :meth:`MilvusIndex.write` refuses them)."""
    literals = [lit for lit in (_literal(i) for i in ids) if lit is not None]
    return f"item_id {'not in' if negate else 'in'} [{', '.join(literals)}]"


def where_expression(where: Where) -> str | None:
    """A Milvus filter that keeps every item ``where`` keeps (and maybe more: the engine checks
    ``where`` again on what comes back); None when no condition can be written."""
    parts = []
    for key, wanted in where.conditions:
        literals = [_literal(value) for _, value in sorted(wanted, key=repr)]
        if not _PLAIN_KEY.fullmatch(key) or not literals or any(lit is None for lit in literals):
            continue
        field = f'attributes["{key}"]'
        tests = [f"{field} == {lit}" for lit in literals] + [
            f"json_contains({field}, {lit})" for lit in literals
        ]
        parts.append("(" + " or ".join(tests) + ")")
    return " and ".join(parts) or None


def _check_writable(item: Item) -> None:
    if _literal(item.item_id) is None or len(item.item_id.encode()) > MAX_ID_BYTES:
        raise QueryError(
            f"item id {excerpt(item.item_id, 40)} cannot be stored in a Milvus collection: ids must be at "
            f"most {MAX_ID_BYTES} bytes of UTF-8 without control characters"
        )
    if len(item.text.encode()) > MAX_TEXT_BYTES:
        raise QueryError(
            f"item {excerpt(item.item_id, 40)}: its text is over {MAX_TEXT_BYTES} bytes, the most a Milvus "
            "collection stores; shorten it"
        )


class MilvusIndex:
    """A Milvus collection as the engine's item store (see the module's docstring).

    Thread-safe for reads (the pymilvus client is); the engine serialises its own edits, and
    edits through several engines are applied by Milvus in the order they arrive.
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        uri: str,
        dim: int,
        ef_search: int,
        timeout: float,
        consistency: Consistency = Consistency.SESSION,
    ):
        self._client = client
        self.collection = collection
        self.uri = uri
        self._dim = dim
        self.ef_search = ef_search
        self.timeout = timeout
        self.consistency = Consistency(consistency)
        # Read-your-writes: this index's edits so far, and how many a finished strong read saw.
        self._writes = 0
        self._seen = 0
        self._sync = threading.Lock()

    def close(self) -> None:
        """Close this engine's connection to the server (the collection stays)."""
        self._client.close()

    # -- connecting and building ----------------------------------------------------------------

    @staticmethod
    def client(uri: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        """A pymilvus client for ``uri``; :class:`BackendUnavailableError` when it does not answer."""
        pymilvus = _pymilvus()
        try:
            return pymilvus.MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""), timeout=timeout)
        except Exception as e:  # pymilvus raises several unrelated types for "cannot connect"
            raise BackendUnavailableError(
                f"cannot connect to Milvus at {uri!r} ({type(e).__name__}: {e}). Check that the server "
                f"is running and the URI is right (a Milvus Lite URI is a local .db path); a token goes "
                f"in ${TOKEN_ENV}"
            ) from e

    @classmethod
    def connect(
        cls, spec: IndexSpec, *, uri: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> MilvusIndex:
        """The collection a bundle's manifest names (at ``uri`` when given), checked against the
        bundle: it must exist, hold vectors of the bundle's dimension, and rank by inner product."""
        uri = uri or spec.uri or ""
        name = spec.collection or ""
        client = cls.client(uri, timeout=timeout)
        consistency = spec.consistency or Consistency.SESSION
        index = cls(
            client,
            name,
            uri=uri,
            dim=spec.dim,
            ef_search=spec.ef_search,
            timeout=timeout,
            consistency=consistency,
        )
        index._check_collection(spec)
        index._load(name)
        return index

    def _check_collection(self, spec: IndexSpec) -> None:
        if not self._call(self._client.has_collection, self.collection):
            raise BundleError(
                f"Milvus at {self.uri!r} has no collection {self.collection!r}. Build it from a bundle: "
                f"recsys-infer index BUNDLE --out NEW --milvus {self.uri} --collection {self.collection}"
            )
        described = self._call(self._client.describe_collection, self.collection)
        fields = {f["name"]: f for f in described.get("fields", [])}
        if set(_FIELDS) - set(fields):
            raise BundleError(
                f"collection {self.collection!r} at {self.uri!r} has fields {sorted(fields)}; a recsys-infer "
                f"collection has {list(_FIELDS)}. Was it built by `recsys-infer index --milvus`?"
            )
        dim = int(fields["vector"].get("params", {}).get("dim", -1))
        if dim != spec.dim:
            raise ConfigError(
                f"collection {self.collection!r} at {self.uri!r} holds {dim}-d vectors, but this bundle's "
                f"towers emit {spec.dim}-d ones: it was built from another model. Rebuild it with "
                f"recsys-infer index BUNDLE --out NEW --milvus URI --collection NAME --overwrite"
            )
        metric = self._metric()
        if metric != "IP":
            raise ConfigError(
                f"collection {self.collection!r} at {self.uri!r} ranks by {metric}; recsys-infer's towers "
                "emit unit vectors compared by inner product (IP). Rebuild the collection with recsys-infer"
            )

    def _metric(self) -> str:
        names = self._call(self._client.list_indexes, self.collection, field_name="vector")
        if not names:
            return "none"
        info = self._call(self._client.describe_index, self.collection, index_name=names[0])
        return str(info.get("metric_type", "unknown")).upper()

    @classmethod
    def create(
        cls,
        uri: str,
        collection: str,
        items: Sequence[Item],
        vectors: np.ndarray,
        *,
        params: HnswParams,
        space: Space = Space.IP,
        overwrite: bool = False,
        progress: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
        consistency: Consistency = Consistency.SESSION,
        storage: VectorStorage = VectorStorage.FP32,
    ) -> MilvusIndex:
        """A new collection holding ``items`` and their ``vectors``, with an HNSW index.

        A failed build drops what it wrote. An existing collection needs ``overwrite=True`` and is
        replaced by a copy built under a temporary name, then renamed; a Milvus that cannot
        rename (Milvus Lite) gets the items written again under the final name, so there the old
        collection is gone before the new one is whole."""
        if space not in (Space.IP, Space.COSINE):
            raise ConfigError(f"space {space!r} is not supported; towers emit unit vectors: use 'ip'")
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        if is_lite(uri):  # Milvus Lite opens a .db folder only where its parent exists
            Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        client = cls.client(uri, timeout=timeout)
        dim = int(vectors.shape[1])
        on = partial(
            cls,
            client,
            uri=uri,
            dim=dim,
            ef_search=params.ef_search,
            timeout=timeout,
            consistency=consistency,
        )
        index = on(collection)
        exists = index._call(client.has_collection, collection)
        if exists and not overwrite:
            raise OutputExistsError(
                f"Milvus at {uri!r} already has a collection {collection!r}; pass --overwrite "
                "(overwrite=True) to replace it, or choose another --collection"
            )
        for item in items:
            _check_writable(item)
        data = np.asarray(vectors, dtype=np.float32)
        # A new name is built in place; an existing collection is replaced by a staged copy.
        staged = f"{collection}__building_{os.getpid()}" if exists else collection
        made: list[str] = []
        try:
            made.append(staged)  # first: a create that fails half-way may leave it behind
            cls._create_empty(index, staged, params, storage)
            on(staged)._insert(items, data, progress=progress)
            if exists:
                index._call(client.drop_collection, collection)
                try:
                    index._call(client.rename_collection, staged, collection)
                except (NotImplementedError, BackendUnavailableError):
                    # Milvus Lite cannot rename: write the items again under the final name.
                    logger.info("this Milvus cannot rename collections; writing %s in place", collection)
                    made.append(collection)
                    cls._create_empty(index, collection, params, storage)
                    index._insert(items, data, progress=progress)
                    index._call(client.drop_collection, staged)
            index._seal()
        except BaseException:
            for name in made:
                try:
                    client.drop_collection(name)
                except Exception:  # the original error is the one to report
                    logger.warning("could not drop the half-built collection %s", name, exc_info=True)
            raise
        index._load(collection)
        return index

    def _load(self, collection: str) -> None:
        """Load a collection for search. Milvus Lite can report a fresh index built while it is
        still writing the index file, and a load then fails reading it ("Resource temporarily
        unavailable"; once in about ten test runs here): such a load is tried again, a little
        later, up to :data:`LOAD_TRIES` times."""
        for attempt in range(1, LOAD_TRIES + 1):
            try:
                self._call(self._client.load_collection, collection)
                return
            except BackendUnavailableError as e:
                if attempt == LOAD_TRIES or "temporarily unavailable" not in str(e).lower():
                    raise
                logger.info(
                    "Milvus at %s: loading %r failed on a transient read; trying again", self.uri, collection
                )
                time.sleep(0.5 * attempt)

    def _seal(self) -> None:
        """Seal what was inserted and wait for the HNSW index of every sealed segment; the load
        that follows makes the search use it. Before that, a Milvus server searches a segment
        through a temporary IVF index (recall@10 0.85 measured, whatever ef), and Milvus Lite by
        brute force (10k items: 350 ms a query before the flush, 20 ms after)."""
        self._call(self._client.flush, self.collection)
        self._wait_for_index(time.monotonic() + max(self.timeout, 60.0))
        self._call(self._client.release_collection, self.collection)

    def _wait_for_index(self, deadline: float) -> None:
        """Until the vector index covers every row (Milvus builds it after a flush, in the
        background); :class:`BackendUnavailableError` past ``deadline``."""
        names = self._call(self._client.list_indexes, self.collection, field_name="vector")
        while True:
            info = self._call(self._client.describe_index, self.collection, index_name=names[0])
            total, indexed = int(info.get("total_rows", 0)), int(info.get("indexed_rows", 0))
            if indexed >= total and not int(info.get("pending_index_rows", 0)):
                return
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"Milvus at {self.uri!r} had indexed {indexed} of {total} rows of {self.collection!r} "
                    "when the time ran out; check the server's index nodes, or build again"
                )
            time.sleep(0.5)

    @staticmethod
    def _create_empty(index: MilvusIndex, name: str, params: HnswParams, storage: VectorStorage) -> None:
        pymilvus = _pymilvus()
        client = index._client
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        data_type = pymilvus.DataType
        schema.add_field("item_id", data_type.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("vector", data_type.FLOAT_VECTOR, dim=index.dim)
        schema.add_field("text", data_type.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("attributes", data_type.JSON)
        index_params = client.prepare_index_params()
        hnsw: dict[str, Any] = {"M": params.M, "efConstruction": params.ef_construction}
        if storage is VectorStorage.SQ8:
            hnsw["sq_type"] = "SQ8"
        index_type = "HNSW_SQ" if storage is VectorStorage.SQ8 else "HNSW"
        index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=hnsw)
        try:
            index._call(
                client.create_collection,
                name,
                schema=schema,
                index_params=index_params,
                consistency_level="Strong" if index.consistency is Consistency.STRONG else "Eventually",
            )
        except BackendUnavailableError as e:
            if storage is VectorStorage.SQ8 and "HNSW_SQ" in str(e):
                raise ConfigError(
                    f"Milvus at {index.uri!r} cannot store 8-bit vectors ({e.__cause__}): HNSW_SQ needs "
                    "Milvus 2.6 or later, or Milvus Lite. Build with --milvus-storage fp32"
                ) from e
            raise

    def _insert(
        self, items: Sequence[Item], vectors: np.ndarray, *, progress: bool = False, upsert: bool = False
    ) -> None:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="Milvus insert", unit="item")
        write = self._client.upsert if upsert else self._client.insert
        for start in range(0, len(items), BATCH):
            rows = [
                {"item_id": it.item_id, "vector": vec, "text": it.text, "attributes": dict(it.attributes)}
                for it, vec in zip(
                    items[start : start + BATCH], vectors[start : start + BATCH].tolist(), strict=True
                )
            ]
            self._write(write, self.collection, rows)
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()

    def _write(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An edit: the reads after it wait until the server has applied it (see :meth:`_read`)."""
        try:
            return self._call(method, *args, **kwargs)
        finally:  # a failed call may still have been applied
            with self._sync:
                self._writes += 1

    def _read(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A read at the bundle's consistency, or a strong one while an edit of this index may
        not be applied yet; the first strong read to finish after an edit marks it seen."""
        writes = self._writes
        strong = writes > self._seen or self.consistency is Consistency.STRONG
        answer = self._call(method, *args, consistency_level="Strong" if strong else "Eventually", **kwargs)
        if writes > self._seen:
            with self._sync:
                self._seen = max(self._seen, writes)
        return answer

    def _call(self, method: Callable[..., Any], *args: Any, timed: bool = True, **kwargs: Any) -> Any:
        """One Milvus call under the timeout (``timed``: the method takes one); any failure of
        the server is an :class:`BackendUnavailableError` (a 503 from the service), never a hang."""
        pymilvus = _pymilvus()
        if timed:
            kwargs["timeout"] = self.timeout
        try:
            try:
                return method(*args, **kwargs)
            except pymilvus.exceptions.MilvusException as e:
                if not _released(e):
                    raise
                # A server that restarted holds the collection released until it is loaded again:
                # load it, once, and retry, so that the service recovers by itself.
                logger.warning(
                    "Milvus at %s: collection %r was released; loading it again", self.uri, self.collection
                )
                self._client.load_collection(self.collection, timeout=self.timeout)
                return method(*args, **kwargs)
        except pymilvus.exceptions.MilvusException as e:
            raise BackendUnavailableError(
                f"Milvus at {self.uri!r} failed on {getattr(method, '__name__', 'a call')} for collection "
                f"{self.collection!r}: {e}. Check the server; the request can be retried"
            ) from e

    # -- reads ----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        rows = self._read(self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _scan(self, expression: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every row passing ``expression``, a page at a time."""
        iterator = self._read(
            self._client.query_iterator,
            self.collection,
            batch_size=BATCH,
            filter=expression,
            output_fields=fields,
        )
        try:
            while True:
                page = self._call(iterator.next, timed=False)
                if not page:
                    return
                yield page
        finally:
            iterator.close()

    def ids(self) -> tuple[str, ...]:
        """Every item id, in the collection's order (not insertion order)."""
        return tuple(row["item_id"] for page in self._scan("", ["item_id"]) for row in page)

    def _rows(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), BATCH):
            rows = self._read(
                self._client.query,
                self.collection,
                filter=ids_expression(unique[start : start + BATCH]),
                output_fields=["item_id", *fields],
            )
            out.update((row["item_id"], row) for row in rows)
        return out

    def missing(self, ids: Sequence[str]) -> list[str]:
        found = self._rows(ids, [])
        return [i for i in ids if i not in found]

    def _found(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        rows = self._rows(ids, fields)
        unknown = [i for i in ids if i not in rows]
        if unknown:  # removed through another engine since this request was checked
            raise UnknownItemError(unknown, len(self), what="item")
        return [rows[i] for i in ids]

    def items(self, ids: Sequence[str]) -> list[Item]:
        return [_item(row) for row in self._found(ids, ["text", "attributes"])]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.asarray([row["vector"] for row in self._found(ids, ["vector"])], dtype=np.float32)

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
        if allow is not None and len(allow) <= MAX_FETCH:
            # An allow-list: score its items exactly (an ANN walk under a narrow filter misses some).
            rows = list(self._rows(sorted(allow), ["vector", "text", "attributes"]).values())
            return [self._best(rows, vectors[n], k, blocked[n], where) for n in range(len(blocked))]
        pushed = []
        if allow is not None:
            pushed.append(ids_expression(sorted(allow)))
        if isinstance(where, Where):
            expression = where_expression(where)
            if expression:
                pushed.append(expression)
        expression = " and ".join(f"({p})" for p in pushed)
        results: list[list[Hit] | None] = [None] * len(blocked)
        pending = list(range(len(blocked)))
        fetch = k + max((len(b) for b in blocked), default=0)
        if where is not None:
            fetch *= 4  # what the pushed-down expression cannot decide is checked here
        while pending:
            fetch = min(fetch, MAX_FETCH)
            hits = self._search(vectors[pending], fetch, expression)
            still = []
            for row, found in zip(pending, hits, strict=True):
                kept = [
                    (item, s)
                    for item, s in found
                    if item.item_id not in blocked[row] and _passes(item, where)
                ]
                if len(kept) >= k:
                    results[row] = kept[:k]
                elif len(found) == fetch and fetch < MAX_FETCH:
                    still.append(row)  # fetch more
                else:  # an ANN walk under a filter may miss passing items: count them exactly
                    results[row] = self._scan_best(vectors[row], k, expression, blocked[row], where)
            pending = still
            fetch *= 4
        return [r or [] for r in results]

    def _search(self, vectors: np.ndarray, limit: int, expression: str) -> list[list[Hit]]:
        answer = self._read(
            self._client.search,
            self.collection,
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            limit=limit,
            filter=expression,
            output_fields=["text", "attributes"],
            search_params={"metric_type": "IP", "params": {"ef": max(self.ef_search, limit)}},
        )
        return [
            [(_item({**hit["entity"], "item_id": _hit_id(hit)}), float(hit["distance"])) for hit in row]
            for row in answer
        ]

    def _scan_best(
        self,
        vector: np.ndarray,
        k: int,
        expression: str,
        blocked: frozenset[str],
        where: AttributeFilter | None,
    ) -> list[Hit]:
        """Exact top ``k`` over every row that passes: for filters so narrow that the search's
        largest fetch finds too few."""
        best: list[Hit] = []
        for page in self._scan(expression, list(_FIELDS)):
            best = self._best(page, vector, k, blocked, where, best)
        return best

    @staticmethod
    def _best(
        rows: Sequence[Mapping[str, Any]],
        vector: np.ndarray,
        k: int,
        blocked: frozenset[str],
        where: AttributeFilter | None,
        best: Sequence[Hit] = (),
    ) -> list[Hit]:
        """The top ``k`` of ``best`` and the rows that pass, scored exactly."""
        items = [_item(row) for row in rows]
        keep = [n for n, it in enumerate(items) if it.item_id not in blocked and _passes(it, where)]
        if not keep:
            return list(best)
        scores = np.asarray([rows[n]["vector"] for n in keep], dtype=np.float32) @ vector
        merged = [*best, *((items[n], float(s)) for n, s in zip(keep, scores, strict=True))]
        return sorted(merged, key=lambda h: -h[1])[:k]

    # -- edits ----------------------------------------------------------------------------------

    def write(self, items: Sequence[Item], vectors: np.ndarray, mode: EditMode) -> tuple[int, int]:
        for item in items:
            _check_writable(item)
        unknown = self.missing([i.item_id for i in items])
        if mode == "add":
            gone = set(unknown)
            refuse_taken([i.item_id for i in items if i.item_id not in gone])
        if mode == "update" and unknown:
            raise UnknownItemError(unknown, len(self), what="item")
        if items:
            self._insert(items, np.asarray(vectors, dtype=np.float32), upsert=True)
        return len(unknown), len(items) - len(unknown)

    def remove(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), BATCH):
            self._write(
                self._client.delete, self.collection, filter=ids_expression(ids[start : start + BATCH])
            )

    def drop(self) -> None:
        """Delete the whole collection (tests and benchmarks clean up with this)."""
        self._call(self._client.drop_collection, self.collection)


def _released(error: Exception) -> bool:
    """Whether a Milvus error says the collection is not loaded (as after a server restart)."""
    text = str(error).lower()
    return "released" in text or "not loaded" in text or "load() before" in text


def _hit_id(hit: Mapping[str, Any]) -> str:
    """A search hit's item id: a Milvus server names the primary key ``id``, Milvus Lite by its
    field's name."""
    return str(hit["item_id"] if "item_id" in hit else hit["id"])


def _item(row: Mapping[str, Any]) -> Item:
    return Item(row["item_id"], row["text"], row.get("attributes") or {})


def _passes(item: Item, where: AttributeFilter | None) -> bool:
    return where is None or bool(where(item.attributes))


def lite_uri(path: str | Path) -> str:
    """A Milvus Lite URI (a local ``.db`` path) made absolute, so that a bundle recording it
    works from any directory."""
    return str(Path(path).expanduser().resolve())


def is_lite(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri
