"""Bulk re-indexing: a bundle's towers over a new catalogue, without retraining.

``recsys-infer index BUNDLE --items FILE --out NEW`` encodes every item of ``FILE`` with the
bundle's own item tower, builds a fresh HNSW index, and writes a new bundle (atomically) with
the same graphs and tokenizer. Learned per-item offsets (sequence models trained with
``--item-offsets``) carry over for the item ids that both catalogues share.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data.readers import read_items
from recsys_infer.enums import Device

from .bundle import MANIFEST, atomic_directory, read_manifest, write_manifest
from .engine import Engine
from .index import HnswIndex, HnswParams
from .users import unit_rows


def reindex_bundle(
    src: Path,
    items: Path,
    out: Path,
    *,
    threads: int | None = None,
    index_threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out``: ``src``'s towers over the catalogue in ``items``. Returns a summary."""
    src, out = Path(src), Path(out)
    started = time.perf_counter()
    manifest = read_manifest(src)
    catalog, items_sha = read_items(Path(items))
    engine = Engine.load(src, device=Device.CPU, threads=threads, exact=True)
    t0 = time.perf_counter()
    vectors = engine.item_encoder.encode(catalog.texts, progress=progress)  # type: ignore[call-arg]
    encode_s = time.perf_counter() - t0
    raw: dict[str, Any] = json.loads(json.dumps(manifest.raw))
    spec = manifest.index
    offsets_file = raw["index"].get("offsets_file")
    offsets = None
    if offsets_file:
        old = np.load(src / offsets_file, allow_pickle=False)
        old_ids = json.loads((src / spec.item_ids_file).read_text(encoding="utf-8"))
        row = {item_id: n for n, item_id in enumerate(old_ids) if item_id is not None}
        offsets = np.zeros_like(vectors)
        for n, item_id in enumerate(catalog.ids):
            if item_id in row:
                offsets[n] = old[row[item_id]]
        vectors = unit_rows(vectors + offsets)
    t0 = time.perf_counter()
    params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
    index = HnswIndex.build(vectors, params, space=spec.space, threads=index_threads, progress=progress)
    build_s = time.perf_counter() - t0
    rewritten = {spec.file, spec.vectors_file, spec.item_ids_file, manifest.catalog_file, MANIFEST}
    if offsets_file:
        rewritten.add(offsets_file)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name in manifest.files:
            if name not in rewritten:
                shutil.copy2(src / name, tmp / name)
        index.save(tmp / spec.file)
        np.save(tmp / spec.vectors_file, vectors, allow_pickle=False)
        if offsets is not None and offsets_file:
            np.save(tmp / offsets_file, offsets, allow_pickle=False)
        (tmp / spec.item_ids_file).write_text(json.dumps(catalog.ids, ensure_ascii=False), encoding="utf-8")
        catalog.write_jsonl(tmp / manifest.catalog_file)
        raw["index"].update({"count": len(catalog), "capacity": index.capacity})
        raw["reindexed"] = {
            "from": str(src),
            "items_file": str(items),
            "items_sha256": items_sha,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        raw.pop("catalogue_edits", None)
        write_manifest(tmp, {k: v for k, v in raw.items() if k not in ("files", "schema_version")})
    return {
        "bundle": str(out),
        "items": len(catalog),
        "encode_seconds": round(encode_s, 2),
        "index_seconds": round(build_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
