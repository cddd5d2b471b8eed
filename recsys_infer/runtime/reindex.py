"""Re-indexing: a bundle's item tower over a catalogue, a fresh HNSW index, a new bundle.

One function serves both callers: ``recsys-infer index BUNDLE --items FILE --out NEW`` (a new
catalogue, without retraining) and a compression step's ``--reindex`` (the same catalogue
through the step's new item tower). Every item is encoded with the bundle's own item tower, a
fresh HNSW index is built, and a new bundle is written atomically with the same graphs and
tokenizer; free slots of an edited bundle are dropped. Learned per-item offsets (sequence
models trained with ``--item-offsets``) carry over by item id.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data.readers import read_items
from recsys_infer.enums import Device

from .bundle import read_item_ids, read_manifest, write_catalogue_bundle
from .catalog import Catalog
from .engine import Engine
from .index import HnswIndex, HnswParams
from .manifest import Manifest
from .users import unit_rows


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


def reindex_bundle(
    src: Path,
    items: Path | None,
    out: Path,
    *,
    threads: int | None = None,
    index_threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    built_with: str = "item tower of this bundle",
) -> dict[str, Any]:
    """Write ``out``: ``src``'s towers over the catalogue in ``items`` (``None``: ``src``'s own
    live catalogue). Returns a summary with timings."""
    src, out = Path(src), Path(out)
    started = time.perf_counter()
    manifest = read_manifest(src)
    engine = Engine.load(src, device=Device.CPU, threads=threads, exact=True)
    items_sha = None
    if items is not None:
        catalog, items_sha = read_items(Path(items))
    else:
        catalog = Catalog(engine.catalog.get(i) for i in engine.item_ids)
    t0 = time.perf_counter()
    vectors = engine.item_encoder.encode(catalog.texts, progress=progress)  # type: ignore[call-arg]
    encode_s = time.perf_counter() - t0
    offsets = carried_offsets(src, manifest, catalog)
    if offsets is not None:
        vectors = unit_rows(vectors + offsets)
    t0 = time.perf_counter()
    spec = manifest.index
    params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
    index = HnswIndex.build(vectors, params, space=spec.space, threads=index_threads, progress=progress)
    build_s = time.perf_counter() - t0
    record = None
    if items is not None:
        record = {"from": str(src), "items_file": str(items), "items_sha256": items_sha,
                  "at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip

    def amend(m: Manifest) -> Manifest:
        index_spec = replace(m.index, built_with=built_with, build_threads=index_threads)
        if record is None:
            return replace(m, index=index_spec)
        return replace(m, index=index_spec, reindexed=record, catalogue_edits=())

    offsets_writer = {}
    if offsets is not None and spec.offsets_file:
        name = spec.offsets_file
        offsets_writer[name] = lambda p: np.save(p / name, offsets, allow_pickle=False)
    write_catalogue_bundle(
        src, manifest, out, index=index, vectors=vectors, item_ids=list(catalog.ids), catalog=catalog,
        overwrite=overwrite, amend=amend, files=offsets_writer,
    )  # fmt: skip
    return {
        "bundle": str(out),
        "items": len(catalog),
        "encode_seconds": round(encode_s, 2),
        "index_seconds": round(build_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
