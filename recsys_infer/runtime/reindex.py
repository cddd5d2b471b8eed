"""Bulk re-indexing: a bundle's towers over a new catalogue, without retraining.

``recsys-infer index BUNDLE --items FILE --out NEW`` encodes every item of ``FILE`` with the
bundle's own item tower, builds a fresh HNSW index, and writes a new bundle (atomically) with
the same graphs and tokenizer. Learned per-item offsets (sequence models trained with
``--item-offsets``) carry over for the item ids that both catalogues share.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data.readers import read_items
from recsys_infer.enums import Device

from .bundle import read_manifest, rewritten_catalogue
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
    spec = manifest.index
    offsets_file: str | None = manifest.raw["index"].get("offsets_file")
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
    replaced = (offsets_file,) if offsets_file else ()
    with rewritten_catalogue(
        src, manifest, out, index=index, vectors=vectors, item_ids=list(catalog.ids), catalog=catalog,
        overwrite=overwrite, replaced=replaced,
    ) as (tmp, raw):  # fmt: skip
        if offsets is not None and offsets_file:
            np.save(tmp / offsets_file, offsets, allow_pickle=False)
        raw["reindexed"] = {
            "from": str(src),
            "items_file": str(items),
            "items_sha256": items_sha,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        raw.pop("catalogue_edits", None)
    return {
        "bundle": str(out),
        "items": len(catalog),
        "encode_seconds": round(encode_s, 2),
        "index_seconds": round(build_s, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
