"""The request cache on a Zipf-distributed request stream (the usual shape of search logs).

    python benchmarks/studies/request_cache.py BUNDLE [--data DATA] [--distinct 5000] [--stream 6000]
        [--zipf 1.1] [--cache 0 2000] [--threads 1] [--json FILE]

The request pool holds, per catalogue item, the request `evaluate --requests` makes of it (its
attributes, or its text) and the one made of its text alone (`request_from_text`: a title's
first words or a category), deduplicated, so that a catalogue with few attribute values still
has thousands of distinct requests; the stream draws from it with probability
proportional to 1 / rank^s. Every cache size serves the same stream through a fresh engine, one
client calling `Engine.recommend(text=..., k=10)` in a loop; the sizes take turns in rounds
(A B A B) so that a machine's drift hits all alike. Reported per size: hit rate, latency
p50/p95/p99 and mean, and the cache's memory.
"""

from __future__ import annotations

import argparse
import json
import platform
from functools import partial
from pathlib import Path

import numpy as np

from recsys_infer import Engine
from recsys_infer.bench.timing import timed
from recsys_infer.data import load_dataset
from recsys_infer.data.probe import request_from_item, request_from_text
from recsys_infer.data.readers import data_spec
from recsys_infer.runtime.bundle import read_manifest


def zipf_stream(pool: list[str], n: int, s: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(pool) + 1) ** s
    order = rng.permutation(len(pool))  # which request is popular is arbitrary
    picks = rng.choice(len(pool), size=n, p=weights / weights.sum())
    return [pool[order[i]] for i in picks]


def serve(bundle: Path, stream: list[str], cache: int, threads: int) -> dict[str, float]:
    engine = Engine.load(bundle, device="cpu", threads=threads, request_cache=cache)
    for text in stream[:20]:  # warm-up: sessions and allocator, not counted; then a cold cache
        engine.recommend(text=text + " warm-up", k=10)
    engine = Engine.load(bundle, device="cpu", threads=threads, request_cache=cache)
    engine.recommend(text="warm-up", k=10)
    before = engine.request_cache()
    ms = np.array(timed([partial(engine.recommend, text=text, k=10) for text in stream], warmup=0))
    stats = engine.request_cache()
    hits = stats.hits - before.hits if stats and before else 0
    return {
        "cache": cache,
        "requests": len(stream),
        "hit_rate": round(hits / len(stream), 4),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "cache_mb": round(stats.bytes / 1e6, 2) if stats else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data")
    parser.add_argument("--distinct", type=int, default=5000)
    parser.add_argument("--stream", type=int, default=6000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--cache", type=int, nargs="+", default=[0, 2000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = args.data or data_spec(str(read_manifest(args.bundle).provenance.data["source"]))
    dataset = load_dataset(data)
    made = (r for item in dataset.catalog for r in (request_from_item(item), request_from_text(item)))
    pool = list(dict.fromkeys(r for r in made if r))[: args.distinct]
    stream = zipf_stream(pool, args.stream, args.zipf)
    print(f"{len(pool)} distinct requests, a stream of {len(stream)} (Zipf s={args.zipf}), "
          f"{len(set(stream))} distinct in it")  # fmt: skip
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in args.cache}
    for r in range(args.rounds):
        for cache in args.cache:
            result = serve(args.bundle, stream, cache, args.threads)
            runs[cache].append(result)
            print(f"round {r + 1}, cache {cache}: {result}", flush=True)
    # Per size, the round with the median p50 (rounds agree on hit rate: the stream is fixed).
    chosen = {c: sorted(rs, key=lambda x: x["p50_ms"])[len(rs) // 2] for c, rs in runs.items()}
    print("\n| cache entries | hit rate | p50 ms | p95 ms | p99 ms | mean ms | cache MB |")
    print("|---|---|---|---|---|---|---|")
    for c, x in chosen.items():
        print(f"| {c or 'off'} | {x['hit_rate']:.3f} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | "
              f"{x['mean_ms']} | {x['cache_mb']} |")  # fmt: skip
    if args.json:
        report = {
            "bundle": str(args.bundle), "data": data, "distinct": len(pool), "stream": len(stream),
            "zipf": args.zipf, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "runs": {str(c): rs for c, rs in runs.items()}, "chosen": {str(c): x for c, x in chosen.items()},
        }  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
