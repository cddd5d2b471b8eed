"""Re-indexing: a bundle's item tower over a catalogue, a fresh HNSW index, a new bundle.

One function serves both callers: ``recsys-infer index BUNDLE --items FILE --out NEW`` (a new
catalogue, without retraining) and a compression step's ``--reindex`` (the same catalogue
through the step's new item tower). Every item is encoded with the bundle's own item tower, a
fresh HNSW index is built, and a new bundle is written atomically with the same graphs and
tokenizer; free slots of an edited bundle are dropped. Learned per-item offsets (sequence
models trained with ``--item-offsets``) carry over by item id.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data.readers import read_items
from recsys_infer.enums import Consistency, Device, VectorStorage
from recsys_infer.errors import ConfigError
from recsys_infer.runtime.bundle import read_item_ids, read_manifest, write_catalog_bundle
from recsys_infer.runtime.catalog import Catalog
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.index import HnswIndex, HnswParams
from recsys_infer.runtime.manifest import ITEM_INDEX, IndexSpec, Manifest
from recsys_infer.runtime.milvus import MilvusIndex
from recsys_infer.runtime.users import add_offsets

from .shards import DEFAULT_SHARD_SIZE, ShardRunner, encode_catalog


def carried_offsets(src: Path, manifest: Manifest, catalog: Catalog) -> np.ndarray | None:
    """``src``'s learned item offsets in ``catalog``'s order (zero for items it lacks), or None."""
    name = manifest.index.offsets_file
    if not name:
        return None
    old = np.load(src / name, allow_pickle=False)
    old_ids = read_item_ids(src / manifest.index.item_ids_file)
    row = {item_id: n for n, item_id in enumerate(old_ids) if item_id is not None}
    offsets = np.zeros((len(catalog), old.shape[1]), dtype=np.float32)
    for n, item_id in enumerate(catalog.ids):
        if item_id in row:
            offsets[n] = old[row[item_id]]
    return offsets


@dataclass(frozen=True)
class MilvusTarget:
    """Where ``reindex_bundle`` puts the index when it is a Milvus collection."""

    uri: str
    collection: str
    consistency: Consistency = Consistency.SESSION
    storage: VectorStorage = VectorStorage.FP32

    def __post_init__(self) -> None:
        if not self.uri or not self.collection:
            raise ConfigError("a Milvus target needs a URI (--milvus) and a collection name (--collection)")


@dataclass(frozen=True)
class EncodingSettings:
    """How the catalogue is encoded: ``workers`` ONNX sessions of ``threads`` cores each, by
    ``runner`` (None: in this process; :class:`recsys_infer.scale.encoding.RayRunner` for Ray)."""

    workers: int = 1
    threads: int | None = None
    runner: ShardRunner | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    runtime: str = "onnxruntime"  # the item tower's: onnxruntime, openvino or auto (Engine.load's backend)


def _catalog(src: Path, items: Path | None, manifest: Manifest) -> tuple[Catalog, str]:
    """The catalogue to index (``items``, else ``src``'s live one) and a hash of it."""
    if items is not None:
        return read_items(Path(items))
    engine = Engine.load(src, device=Device.CPU, threads=1, exact=manifest.index.kind == "hnsw")
    catalog = Catalog(engine.items(engine.item_ids))
    return catalog, hashlib.sha256("\0".join(f"{i.item_id}\0{i.text}" for i in catalog).encode()).hexdigest()


def _target_spec(spec: IndexSpec, milvus: MilvusTarget | None, **recorded: Any) -> IndexSpec:
    """The new bundle's index entry: a Milvus collection, or the embedded HNSW file."""
    spec = replace(spec, **recorded)
    if milvus is not None:
        return replace(
            spec, kind="milvus", file=None, uri=milvus.uri, collection=milvus.collection, capacity=None,
            consistency=milvus.consistency, storage=milvus.storage,
        )  # fmt: skip
    return replace(
        spec,
        kind="hnsw",
        file=spec.file or ITEM_INDEX,
        uri=None,
        collection=None,
        consistency=None,
        storage=None,
    )


def reindex_bundle(
    src: Path,
    items: Path | None,
    out: Path,
    *,
    encoding: EncodingSettings | None = None,
    index_threads: int = 1,
    milvus: MilvusTarget | None = None,
    overwrite: bool = False,
    progress: bool = True,
    built_with: str = "item tower of this bundle",
) -> dict[str, Any]:
    """Write ``out``: ``src``'s towers over the catalogue in ``items`` (``None``: ``src``'s own
    live catalogue), its index in hnswlib or, with ``milvus``, in a Milvus collection. The
    encoding's shards wait in ``.OUT.encoding/`` beside ``out`` until the bundle is written, so
    an interrupted run resumes. Returns a summary with timings."""
    src, out = Path(src), Path(out)
    encoding = encoding or EncodingSettings()
    started = time.perf_counter()
    manifest = read_manifest(src)
    catalog, items_sha = _catalog(src, items, manifest)
    work = out.parent / f".{out.name}.encoding"
    vectors, report = encode_catalog(
        src, catalog.texts, work, items_sha256=items_sha, shard_size=encoding.shard_size,
        workers=encoding.workers, threads=encoding.threads, runner=encoding.runner, progress=progress,
        runtime=encoding.runtime,
    )  # fmt: skip
    offsets = carried_offsets(src, manifest, catalog)
    if offsets is not None:
        vectors = add_offsets(vectors, offsets)
    t0 = time.perf_counter()
    spec = manifest.index
    params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
    index: HnswIndex | None = None
    if milvus is None:
        index = HnswIndex.build(vectors, params, space=spec.space, threads=index_threads, progress=progress)
    else:
        MilvusIndex.create(
            milvus.uri, milvus.collection, list(catalog), vectors, params=params, space=spec.space,
            overwrite=overwrite, progress=progress, consistency=milvus.consistency, storage=milvus.storage,
        )  # fmt: skip
    build_s = time.perf_counter() - t0
    record = None
    if items is not None:
        record = {"from": str(src), "items_file": str(items), "items_sha256": items_sha,
                  "at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip

    def amend(m: Manifest) -> Manifest:
        index_spec = _target_spec(m.index, milvus, built_with=built_with, build_threads=index_threads)
        if record is None:
            return replace(m, index=index_spec)
        return replace(m, index=index_spec, reindexed=record, catalogue_edits=())

    offsets_writer = {}
    if offsets is not None and spec.offsets_file:
        name = spec.offsets_file
        offsets_writer[name] = lambda p: np.save(p / name, offsets, allow_pickle=False)
    if index is not None and spec.file is None:  # from a Milvus bundle back to an embedded index
        spec = replace(spec, file=ITEM_INDEX)
        manifest = replace(manifest, index=spec)
    write_catalog_bundle(
        src, manifest, out, index=index, vectors=vectors, item_ids=list(catalog.ids), catalog=catalog,
        overwrite=overwrite, amend=amend, files=offsets_writer,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return {
        "bundle": str(out),
        "items": len(catalog),
        "index": "milvus" if milvus else "hnsw",
        "encode_seconds": report.seconds,
        "encoding": {"backend": report.backend, "workers": report.workers,
                     "threads_per_worker": report.threads_per_worker, "shards": report.shards,
                     "reused_shards": report.reused_shards, "items_encoded": report.items},
        "index_seconds": round(build_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip
