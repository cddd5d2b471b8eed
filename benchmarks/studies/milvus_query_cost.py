"""Where one Milvus query's time goes, on Milvus Lite and on a Milvus server.

    python benchmarks/studies/milvus_query_cost.py [--sizes 10000,100000] [--dim 768] [--queries 50]

For each size, a collection of synthetic unit vectors (``scale.py``'s) is built through
``MilvusIndex.create`` on both, then:

- **Milvus Lite** (in this process): single queries through the engine's path, with Lite's own
  search function (``execute_search_with_index``) and its HNSW search (faiss, under
  ``FaissHnswIndex.search``) timed from inside. What is neither is Lite's bookkeeping per call:
  the study reports the three, per query, and the same for one call of 200 queries.
- **The Milvus server** (PyPI's ``milvus``, started here): single queries read by session, as the
  engine reads, and read strongly (each waits for the server's next time tick).

Nothing is asserted; it prints one JSON line per size and backend, and writes them all to
``benchmarks/results/milvus_query_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: scale.py's helpers

from scale import _milvus_at, _synthetic

from recsys_infer.runtime.catalog import Item
from recsys_infer.runtime.index import HnswParams
from recsys_infer.runtime.milvus import MilvusIndex

RESULT = Path(__file__).resolve().parents[1] / "results" / "milvus_query_cost.json"


class _Timer:
    """Wraps ``owner.name`` to add up the seconds spent in it."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name, self.seconds = owner, name, 0.0
        self.original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        setattr(owner, name, timed)


def _ms(seconds: float, calls: int) -> float:
    return round(1000 * seconds / calls, 2)


def lite(n: int, dim: int, queries: int) -> dict[str, Any]:
    from milvus_lite.engine import collection
    from milvus_lite.index.faiss_hnsw import FaissHnswIndex

    vectors, probes = _synthetic(n, dim)
    none = [frozenset()]
    with tempfile.TemporaryDirectory() as tmp, _milvus_at(False, Path(tmp)) as (uri, _):
        items = [Item(str(i), f"item {i}") for i in range(n)]
        index = MilvusIndex.create(uri, "cost", items, vectors, params=HnswParams(16, 200, 64), timeout=3600)
        index.search(probes[:1], 10, blocked=none)  # warm
        out: dict[str, Any] = {"backend": "milvus-lite", "items": n, "dim": dim}
        for label, batch in (("one query a call", 1), ("200 queries in one call", 200)):
            search = _Timer(collection, "execute_search_with_index")
            hnsw = _Timer(FaissHnswIndex, "search")
            calls = max(1, queries // batch) if batch == 1 else 3
            t = time.perf_counter()
            for c in range(calls):
                rows = probes[c % len(probes) : c % len(probes) + 1] if batch == 1 else probes[:batch]
                index.search(rows, 10, blocked=none * len(rows))
            total = time.perf_counter() - t
            collection.execute_search_with_index = search.original
            FaissHnswIndex.search = hnsw.original
            out[label] = {
                "ms_per_call": _ms(total, calls),
                "lite_search_ms": _ms(search.seconds, calls),
                "hnsw_ms": _ms(hnsw.seconds, calls),
                "lite_bookkeeping_ms": _ms(search.seconds - hnsw.seconds, calls),
            }
        index.close()
    return out


def server(n: int, dim: int, queries: int) -> dict[str, Any]:
    vectors, probes = _synthetic(n, dim)
    with tempfile.TemporaryDirectory() as tmp, _milvus_at(True, Path(tmp)) as (uri, _):
        items = [Item(str(i), f"item {i}") for i in range(n)]
        index = MilvusIndex.create(uri, "cost", items, vectors, params=HnswParams(16, 200, 64), timeout=3600)
        out: dict[str, Any] = {"backend": "milvus-server", "items": n, "dim": dim}
        client = index._client
        for level in ("Eventually", "Strong"):  # the engine reads by session: Eventually between its edits
            times = []
            for q in probes[:queries]:
                t = time.perf_counter()
                client.search(
                    "cost", data=[q.tolist()], limit=10, output_fields=["text", "attributes"],
                    search_params={"metric_type": "IP", "params": {"ef": 64}}, consistency_level=level,
                )  # fmt: skip
                times.append(time.perf_counter() - t)
            out[f"{level.lower()} read, ms"] = {
                "p50": round(1000 * statistics.median(times), 2),
                "max": round(1000 * max(times), 2),
            }
        index.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--json", type=Path, default=RESULT)
    args = parser.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for measure in (lite, server):
            rows.append(measure(n, args.dim, args.queries))
            print(json.dumps(rows[-1]), flush=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
