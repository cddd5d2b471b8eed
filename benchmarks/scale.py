"""The numbers behind benchmarks/SCALE.md: catalogue encoding, and the item index at scale.

    python benchmarks/scale.py encode BUNDLE [--items 4096]      # items/s: in-process and Ray Data
    python benchmarks/scale.py index [--sizes 10000,100000,1000000] [--backends hnsw,milvus,milvus-server]
                                     [--dim 768]
    python benchmarks/scale.py engine BUNDLE [--requests 400]    # recommend p50/p99 on each store
    python benchmarks/scale.py replicas BUNDLE [--requests 2000] [--clients 8]  # Ray Serve, 1 and 2
    python benchmarks/scale.py report                            # tables + plot into SCALE.md

Each measurement runs in a fresh interpreter (clean resident memory) and merges its results
into benchmarks/results/scale.json; ``report`` writes the tables between the markers in
SCALE.md and the plot to benchmarks/results/scale.png, so the document never disagrees with
the measurements.

``engine`` loads the bundle on each item store (its own hnswlib index; a Milvus Lite collection;
a collection on a Milvus server started for the run) and times ``Engine.recommend`` one request
at a time, the bundle's probe histories and text requests alternating (``load_test.queries``).
``replicas`` serves the bundle's Milvus-server collection on Ray Serve with 1 and then 2
replicas of one thread each, and sends ``--requests`` ``POST /recommend`` over ``--clients``
keep-alive connections (``load_test.http_drive``); client, replicas and server share the
machine's cores.

Index measurements use synthetic catalogues: ``n`` unit vectors of dimension ``--dim`` (768 by
default: the default bundle's index, its trained space beside the encoder's 384) drawn around
1,000 cluster centres, each item in one of 10 genres, and 200 queries that are noisy copies of
items. Recall@10 is against exact search (numpy). For each backend the smallest ``ef`` in
16..512 whose recall@10 reaches 0.95 is reported, with queries per second one at a time (one
thread, the engine's path: ids, texts and attributes come back with the hits), in one batch of
200, and one at a time under a filter that one item in ten passes (``genre``: pushed down to
Milvus; a label filter in hnswlib). Backends: ``hnsw`` (hnswlib, embedded), ``milvus`` (Milvus
Lite, in this process), ``milvus-sq8`` (the same, vectors in 8 bits: ``--milvus-storage sq8``),
``milvus-server`` (a Milvus standalone server, PyPI's ``milvus``, started
for the run; its resident memory is the server process's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.json"
PLOT = HERE / "results" / "scale.png"
DOC = HERE / "SCALE.md"
EFS = (16, 32, 64, 128, 256, 512)
GENRES = 10
NAMES = {
    "hnsw": "hnswlib (embedded)",
    "milvus": "Milvus Lite",
    "milvus-sq8": "Milvus Lite, 8-bit vectors",
    "milvus-server": "Milvus server",
}
QUERIES = 200


def _rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _merge(section: str, key: str, value: Any) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data.setdefault(section, {})[key] = value
    data.setdefault("environment", {})[section] = _environment()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def _environment() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("numpy", "onnxruntime", "hnswlib", "ray", "pymilvus", "milvus_lite"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- encoding -------------------------------------------------------------------------------------


def _catalog_texts(bundle: Path, n: int) -> list[str]:
    """``n`` item texts: the bundle's own, varied so that no two are equal."""
    base = [json.loads(line)["text"] for line in (bundle / "catalog.jsonl").read_text().splitlines()]
    return [f"{base[i % len(base)]} Edition {i // len(base) + 1}." for i in range(n)]


def encode(bundle: Path, items: int) -> None:
    from recsys_infer.indexing.shards import InProcess, encode_catalog
    from recsys_infer.scale.encoding import RayRunner, start_ray

    texts = _catalog_texts(bundle, items)
    runs = [("in-process", 1, 1), ("in-process", 1, 2), ("ray", 1, 2), ("ray", 2, 1)]
    start_ray(None, num_cpus=os.cpu_count())
    reference = None
    for backend, workers, threads in runs:
        with tempfile.TemporaryDirectory() as work:
            vectors, report = encode_catalog(
                bundle,
                texts,
                Path(work),
                items_sha256=f"bench-{items}",
                shard_size=512,
                workers=workers,
                threads=threads,
                runner=RayRunner() if backend == "ray" else InProcess(),
                progress=False,
            )
        if reference is None:
            reference = vectors
        key = f"{backend} {workers}x{threads}"
        result = {
            "backend": backend,
            "workers": workers,
            "threads_per_worker": threads,
            "items": items,
            "seconds": report.seconds,
            "items_per_s": round(items / report.seconds, 1),
            "items_per_s_per_core": round(items / report.seconds / (workers * threads), 1),
            "max_abs_diff_vs_first": float(np.abs(vectors - reference).max()),
        }
        print(key, result, flush=True)
        _merge("encoding", key, result)
    manifest = json.loads((bundle / "manifest.json").read_text())
    _merge(
        "encoding",
        "_bundle",
        {
            "path": str(bundle),
            "encoder": manifest["provenance"]["encoder"].get("name"),
            "precision": manifest["towers"]["item"]["precision"],
        },
    )


# -- indexes --------------------------------------------------------------------------------------


def _synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in slices: a float64 draw of 1M x 768 alone is 6 GB
        stop = min(n, start + 100_000)
        noise = rng.standard_normal(size=(stop - start, dim), dtype=np.float32)
        vectors[start:stop] = centres[rng.integers(0, 1000, stop - start)] + 0.6 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pick = rng.choice(n, QUERIES, replace=False)
    queries = vectors[pick] + 0.05 * rng.standard_normal(size=(QUERIES, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries


def _exact(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ vectors.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def _recall(found: list[list[int]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e.tolist())) / 10 for f, e in zip(found, exact, strict=True)]))


def _filtered_qps(search_filtered: Any, queries: np.ndarray) -> dict[str, Any]:
    """One query at a time under the genre filter, at the ef chosen: queries/s, and whether every
    hit passed (item ``i`` is in genre ``i % GENRES``) with 10 found."""
    search_filtered(queries[0])
    t0 = time.perf_counter()
    found = []
    for q in queries:  # at most a minute: a filter a backend scans for costs seconds a query at 1M
        found.append(search_filtered(q))
        if time.perf_counter() - t0 > 60:
            break
    seconds = time.perf_counter() - t0
    ok = all(len(f) == 10 and all(i % GENRES == 3 for i in f) for f in found)
    qps = round(len(found) / seconds, 2)
    return {"qps_filtered_one_at_a_time": qps, "filtered_queries": len(found), "filtered_hits_all_pass": ok}


def _sweep(
    search_one: Any, search_all: Any, set_ef: Any, exact: np.ndarray, queries: np.ndarray
) -> dict[str, Any]:
    curve = []
    chosen = None
    for ef in EFS:
        set_ef(ef)
        search_all(queries[:10])  # warm
        t0 = time.perf_counter()
        found = [search_one(q) for q in queries]
        one_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        search_all(queries)
        batch_s = time.perf_counter() - t0
        point = {
            "ef": ef,
            "recall@10": round(_recall(found, exact), 4),
            "qps_one_at_a_time": round(len(queries) / one_s, 1),
            "qps_batch_200": round(len(queries) / batch_s, 1),
        }
        curve.append(point)
        print("   ", point, flush=True)
        if point["recall@10"] >= 0.95:
            chosen = point
            break
    return {"curve": curve, "at_recall_0.95": chosen}


def index_hnsw(n: int, dim: int) -> dict[str, Any]:
    from recsys_infer.runtime.index import HnswIndex, HnswParams

    vectors, queries = _synthetic(n, dim)
    exact = _exact(vectors, queries)
    before = _rss()
    t0 = time.perf_counter()
    index = HnswIndex.build(vectors, HnswParams(16, 200, 64), threads=os.cpu_count() or 1)
    build_s = time.perf_counter() - t0
    rss = _rss() - before
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "i.hnsw")
        disk = (Path(tmp) / "i.hnsw").stat().st_size

    def one(q: np.ndarray) -> list[int]:
        return index.search(q[None, :], 10)[0][0].tolist()

    sweep = _sweep(one, lambda qs: index.search(qs, 10), index.set_ef_search, exact, queries)

    def genre_3(label: int) -> bool:
        return label % GENRES == 3

    def filtered(q: np.ndarray) -> list[int]:
        return index.search(q[None, :], 10, allowed=genre_3)[0][0].tolist()

    return {
        "build_s": round(build_s, 2),
        "build_threads": os.cpu_count(),
        "resident_bytes_per_item": round(rss / n, 1),
        "disk_bytes_per_item": round(disk / n, 1),
        **sweep,
        **_filtered_qps(filtered, queries),
    }


@contextmanager
def _milvus_at(server: bool, tmp: Path) -> Iterator[tuple[str, Any]]:
    """A Milvus to measure, as (URI, a function giving its resident memory): Milvus Lite in this
    process, or a Milvus standalone server started here for the run."""
    if not server:
        yield str(tmp / "bench.db"), _rss
        return
    from milvus import MilvusServer

    milvus = MilvusServer()
    milvus.set_base_dir(str(tmp / "server"))
    milvus.start()
    try:
        yield f"http://127.0.0.1:{milvus.listen_port}", lambda: _rss(milvus.server_proc.pid)
    finally:
        milvus.stop()


def index_milvus(n: int, dim: int, server: bool, sq8: bool = False) -> dict[str, Any]:
    from recsys_infer.enums import VectorStorage
    from recsys_infer.runtime.catalog import Item
    from recsys_infer.runtime.index import HnswParams
    from recsys_infer.runtime.milvus import MilvusIndex
    from recsys_infer.runtime.options import Where

    vectors, queries = _synthetic(n, dim)
    exact = _exact(vectors, queries)
    items = [Item(str(i), f"item {i}", {"genre": f"g{i % GENRES}"}) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp, _milvus_at(server, Path(tmp)) as (uri, rss_of):
        before = rss_of()
        t0 = time.perf_counter()
        storage = VectorStorage.SQ8 if sq8 else VectorStorage.FP32
        params = HnswParams(16, 200, 64)
        index = MilvusIndex.create(uri, "bench", items, vectors, params=params, timeout=3600, storage=storage)
        len(index)  # the collection answers: loaded and indexed
        build_s = time.perf_counter() - t0
        rss = rss_of() - before
        disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        none = [frozenset()]

        def one(q: np.ndarray) -> list[int]:
            return [int(item.item_id) for item, _ in index.search(q[None, :], 10, blocked=none)[0]]

        def batch(qs: np.ndarray) -> None:
            index.search(qs, 10, blocked=none * len(qs))

        def set_ef(ef: int) -> None:
            index.ef_search = ef

        sweep = _sweep(one, batch, set_ef, exact, queries)
        genre = Where.of({"genre": "g3"})

        def filtered(q: np.ndarray) -> list[int]:
            return [int(it.item_id) for it, _ in index.search(q[None, :], 10, blocked=none, where=genre)[0]]

        filtered_qps = _filtered_qps(filtered, queries)
        index.close()
    return {
        "build_s": round(build_s, 2),
        "resident_bytes_per_item": round(rss / n, 1),
        "disk_bytes_per_item": round(disk / n, 1),
        **sweep,
        **filtered_qps,
    }


def index(sizes: list[int], backends: list[str], dim: int) -> None:
    for n in sizes:
        for backend in backends:
            print(f"{backend} at {n:,} items, {dim}-d", flush=True)
            command = [sys.executable, __file__, "_index_one", backend, str(n), str(dim)]
            run = subprocess.run(command, capture_output=False, check=False)
            if run.returncode != 0:
                _merge("index", f"{backend} {n}", {"failed": f"exit {run.returncode}"})


def _index_one(backend: str, n: int, dim: int) -> None:
    if backend == "hnsw":
        result = index_hnsw(n, dim)
    else:
        result = index_milvus(n, dim, server=backend == "milvus-server", sq8=backend == "milvus-sq8")
    result["items"] = n
    result["dim"] = dim
    print(backend, n, {k: v for k, v in result.items() if k != "curve"}, flush=True)
    _merge("index", f"{backend} {n}", result)


# -- the report -----------------------------------------------------------------------------------


def report() -> None:
    data = json.loads(RESULTS.read_text())
    lines = [
        "| encoding | workers x threads | items/s | items/s per core | max abs diff vs first |",
        "|---|---|---|---|---|",
    ]
    for key, r in data.get("encoding", {}).items():
        if key.startswith("_"):
            continue
        lines.append(
            f"| {r['backend']} | {r['workers']} x {r['threads_per_worker']} | {r['items_per_s']:.0f} | "
            f"{r['items_per_s_per_core']:.0f} | {r['max_abs_diff_vs_first']:.1e} |"
        )
    lines += [
        "",
        "| index | items | dim | build s | resident B/item | marginal B/item | disk B/item "
        "| ef at recall@10 >= 0.95 | recall@10 | QPS one at a time | QPS batch of 200 "
        "| QPS filtered, 1 in 10 pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: n for n, name in enumerate(NAMES)}
    rows = sorted(
        data.get("index", {}).items(), key=lambda kv: (order.get(kv[0].split()[0], 9), kv[1].get("items", 0))
    )
    marginal = _marginal(data)
    for key, r in rows:
        backend = key.split()[0]
        if "failed" in r:
            lines.append(f"| {backend} | {key.split()[1]} | | failed ({r['failed']}) | | | | | | | | |")
            continue
        p = r["at_recall_0.95"] or r["curve"][-1]
        reached = "" if r["at_recall_0.95"] else " (not reached)"
        filtered = r.get("qps_filtered_one_at_a_time")
        lines.append(
            f"| {NAMES.get(backend, backend)} | {r['items']:,} | {r.get('dim', 384)} | {r['build_s']:.1f} | "
            f"{r['resident_bytes_per_item']:.0f} | {marginal.get(key, '–')} | "
            f"{r['disk_bytes_per_item']:.0f} | {p['ef']}{reached} | "
            f"{p['recall@10']:.3f} | {_qps(p['qps_one_at_a_time'])} | {_qps(p['qps_batch_200'])} | "
            f"{'–' if filtered is None else _qps(filtered)} |"
        )
    if data.get("engine"):
        lines += [
            "",
            "| `Engine.recommend`, quickstart bundle | items | p50 ms | p99 ms | requests/s, one client |",
            "|---|---|---|---|---|",
        ]
        for store, r in data["engine"].items():
            lines.append(
                f"| {NAMES.get(store, store)} | {r['items']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['throughput_rps']:,.0f} |"
            )
    if data.get("replicas"):
        lines += [
            "",
            "| Ray Serve, Milvus server collection | clients | requests/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        for count, r in sorted(data["replicas"].items()):
            lines.append(
                f"| {count} replica(s) of 1 thread | {r['clients']} | {r['throughput_rps']:,.0f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
            )
    lines += ["", *_extrapolation(data)]
    env = data.get("environment", {})
    lines += [
        "",
        "Measured on: "
        + "; ".join(f"{k}: {v['cpu']}, {v['cores']} cores, {v['measured_at']}" for k, v in env.items()),
    ]
    text = DOC.read_text()
    begin, end = "<!-- scale:begin -->", "<!-- scale:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    DOC.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)
    _plot(data)
    print("\n".join(lines))


def _qps(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def _rows(data: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    """``backend``'s measured index rows (failed runs left out), smallest catalogue first."""
    rows = [r for k, r in data.get("index", {}).items() if k.split()[0] == backend and "failed" not in r]
    return sorted(rows, key=lambda r: r["items"])


def _largest(data: dict[str, Any], backend: str) -> dict[str, Any] | None:
    rows = _rows(data, backend)
    return rows[-1] if rows else None


def _extrapolation(data: dict[str, Any]) -> list[str]:
    """10M and 100M items on paper, from the largest measured index of each backend (its
    marginal memory per item, its build time grown as n log n) and the fastest measured
    encoding on this 2-core machine."""
    enc = [r for k, r in data.get("encoding", {}).items() if not k.startswith("_")]
    bigs = {b: r for b in ("hnsw", "milvus-server") if (r := _largest(data, b)) is not None}
    if not bigs or not enc:
        return []
    marginal = _marginal(data)
    per_item = {
        b: float(marginal.get(f"{b} {r['items']}", r["resident_bytes_per_item"])) for b, r in bigs.items()
    }
    machine_rate = max(r["items_per_s"] for r in enc)  # one 2-core machine, its best configuration
    basis = "; ".join(
        f"{NAMES[b]}: {per_item[b]:.0f} B/item at the margin and {r['build_s']:.0f} s to build "
        f"{r['items']:,} {r.get('dim', 384)}-d items"
        for b, r in bigs.items()
    )
    lines = [
        f"On paper, from the measurements above ({basis}): memory grows with the marginal cost per item, "
        f"build time as n log n on the same 2 cores, encoding at {machine_rate:.0f} items/s per 2-core "
        f"machine (the best configuration measured), shards of 4,096 items.",
        "",
        "| items | "
        + " | ".join(f"{NAMES[b]} memory, GB | {NAMES[b]} build on 2 cores, h" for b in bigs)
        + " | encoding, machine-hours | encoding on 32 machines, h | shards |",
        "|---|" + "---|---|" * len(bigs) + "---|---|---|",
    ]
    for n in (10_000_000, 100_000_000):
        cells = []
        for b, r in bigs.items():
            build_h = r["build_s"] * (n / r["items"]) * (np.log2(n) / np.log2(r["items"])) / 3600
            cells += [f"{n * per_item[b] / 1e9:,.0f}", f"{build_h:,.1f}"]
        encode_h = n / machine_rate / 3600
        lines.append(
            f"| {n:,} | {' | '.join(cells)} | {encode_h:,.0f} | {encode_h / 32:,.1f} | {-(-n // 4096):,} |"
        )
    return lines


def _marginal(data: dict[str, Any]) -> dict[str, str]:
    """Resident bytes per item between one size and the previous one of the same backend: the
    cost of one more item, without the fixed cost of the library or server."""
    out = {}
    for backend in NAMES:
        rows = _rows(data, backend)
        for a, b in itertools.pairwise(rows):
            total = b["resident_bytes_per_item"] * b["items"] - a["resident_bytes_per_item"] * a["items"]
            out[f"{backend} {b['items']}"] = f"{total / (b['items'] - a['items']):.0f}"
    return out


def _plot(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, build) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = np.array([1e4, 1e5, 1e6, 1e7, 1e8])
    for (backend, label), colour in zip(
        NAMES.items(), ("tab:blue", "tab:orange", "tab:olive", "tab:red"), strict=True
    ):
        rows = _rows(data, backend)
        if not rows:
            continue
        n = np.array([r["items"] for r in rows], dtype=float)
        # One more item's cost at the largest size measured (fixed costs left out).
        per_item = float(
            _marginal(data).get(f"{backend} {rows[-1]['items']}", rows[-1]["resident_bytes_per_item"])
        )
        mem.loglog(
            n,
            [r["resident_bytes_per_item"] * r["items"] / 1e9 for r in rows],
            "o-",
            color=colour,
            label=f"{label}, measured",
        )
        mem.loglog(
            sizes,
            sizes * per_item / 1e9,
            "--",
            color=colour,
            alpha=0.6,
            label=f"{label}, {per_item:.0f} B/item",
        )
        rate = rows[-1]["build_s"] / rows[-1]["items"]
        build.loglog(
            n, [r["build_s"] / 60 for r in rows], "o-", color=colour, label=f"{label} build, measured"
        )
        build.loglog(
            sizes,
            sizes * rate * np.log2(sizes) / np.log2(rows[-1]["items"]) / 60,
            "--",
            color=colour,
            alpha=0.6,
            label=f"{label} build, n log n from the largest",
        )
    enc = [r for k, r in data.get("encoding", {}).items() if not k.startswith("_")]
    if enc:
        per_core = max(r["items_per_s_per_core"] for r in enc)
        build.loglog(
            sizes,
            sizes / per_core / 60,
            ":",
            color="tab:green",
            label=f"encoding on 1 core ({per_core:.0f} items/s)",
        )
    mem.set(xlabel="catalogue items", ylabel="resident memory, GB", title="Index memory")
    build.set(xlabel="catalogue items", ylabel="minutes", title="Build and encoding time")
    for ax in (mem, build):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


# -- the engine and replicas on each store ----------------------------------------------------------


@contextmanager
def _on_store(bundle: Path, store: str, tmp: Path) -> Iterator[Path]:
    """``bundle`` with its index on ``store``: as it is (``hnsw``), or reindexed into a Milvus Lite
    collection (``milvus``) or one on a Milvus server started here (``milvus-server``)."""
    from recsys_infer.indexing.reindex import MilvusTarget, reindex_bundle

    if store == "hnsw":
        yield bundle
        return
    with _milvus_at(store == "milvus-server", tmp / store) as (uri, _):
        out = tmp / f"{store}-bundle"
        reindex_bundle(bundle, None, out, milvus=MilvusTarget(uri, "bench"), progress=False)
        yield out


def engine_e2e(bundle: Path, requests: int) -> None:
    from load_test import drive, queries

    from recsys_infer import Engine

    work = queries(bundle, requests, "mixed")
    for store in ("hnsw", "milvus", "milvus-server"):
        with tempfile.TemporaryDirectory() as tmp, _on_store(bundle, store, Path(tmp)) as on_store:
            engine = Engine.load(on_store, device="cpu", threads=2)
            result = drive(lambda q, e=engine: e.recommend(**q), work, clients=1)
            result["items"] = len(engine)
            engine.close()
        print(store, result, flush=True)
        _merge("engine", store, result)


def replicas(bundle: Path, requests: int, clients: int) -> None:
    import asyncio

    from load_test import free_port, http_drive, queries

    from recsys_infer.scale import serving
    from recsys_infer.scale.encoding import start_ray

    work = queries(bundle, requests, "mixed")
    start_ray(None, num_cpus=os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp, _on_store(bundle, "milvus-server", Path(tmp)) as on_store:
        for count in (1, 2):
            url = serving.deploy(on_store, replicas=count, threads=1, port=free_port())
            try:
                asyncio.run(http_drive(url, work[:50], clients))  # warm-up
                result = asyncio.run(http_drive(url, work, clients))
            finally:
                serving.shutdown()
            result.update(replicas=count, clients=clients)
            print(count, result, flush=True)
            _merge("replicas", str(count), result)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("encode")
    e.add_argument("bundle", type=Path)
    e.add_argument("--items", type=int, default=4096)
    i = sub.add_parser("index")
    i.add_argument("--sizes", default="10000,100000,1000000")
    i.add_argument("--backends", default="hnsw,milvus,milvus-server")
    i.add_argument("--dim", type=int, default=768)
    one = sub.add_parser("_index_one")
    one.add_argument("backend")
    one.add_argument("n", type=int)
    one.add_argument("dim", type=int)
    en = sub.add_parser("engine")
    en.add_argument("bundle", type=Path)
    en.add_argument("--requests", type=int, default=400)
    rp = sub.add_parser("replicas")
    rp.add_argument("bundle", type=Path)
    rp.add_argument("--requests", type=int, default=2000)
    rp.add_argument("--clients", type=int, default=8)
    sub.add_parser("report")
    args = parser.parse_args()
    if args.command == "encode":
        encode(args.bundle, args.items)
    elif args.command == "index":
        index([int(s) for s in args.sizes.split(",")], args.backends.split(","), args.dim)
    elif args.command == "_index_one":
        _index_one(args.backend, args.n, args.dim)
    elif args.command == "engine":
        engine_e2e(args.bundle, args.requests)
    elif args.command == "replicas":
        replicas(args.bundle, args.requests, args.clients)
    else:
        report()


if __name__ == "__main__":
    main()
