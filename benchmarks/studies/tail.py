"""Where recommend's tail comes from: one engine in a plain loop, then two engines interleaved
in blocks the way `recsys-infer bench` times its subjects, with ONNX Runtime's threads spinning
(between runs too, or only while a run lasts) or sleeping.

    python benchmarks/studies/tail.py BUNDLE OTHER_BUNDLE [--calls 2000] [--threads 2] [--json FILE]

Each case times ``Engine.recommend(history=..., k=10)`` over the bundle's probe histories, one
call at a time, and reports p50, p99, their ratio and the mean (milliseconds). The interleaved
cases alternate 40-call blocks of BUNDLE and OTHER_BUNDLE (3 untimed calls before each block)
and time BUNDLE's calls only; they also give the median latency by position in the block.
Nothing is asserted: run it on a quiet machine and read the ratios side by side.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer import Engine
from recsys_infer.bench import timing


def stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    p50, p99 = float(np.percentile(a, 50)), float(np.percentile(a, 99))
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "p99_over_p50": round(p99 / p50, 2),
            "mean_ms": round(float(a.mean()), 3), "n": int(a.size)}  # fmt: skip


def timed(engine: Engine, history: list[str]) -> float:
    """One recommendation's milliseconds, timed by the bench's own harness."""
    return timing.timed([partial(engine.recommend, history=history, k=10)], warmup=0)[0]


def plain(engine: Engine, histories: list[list[str]], calls: int) -> dict[str, Any]:
    for h in histories[:20]:
        engine.recommend(history=h, k=10)
    return stats([timed(engine, histories[i % len(histories)]) for i in range(calls)])


def interleaved(a: Engine, b: Engine, histories: list[list[str]], rounds: int) -> dict[str, Any]:
    block, warmup = 40, 3
    by_position: list[list[float]] = [[] for _ in range(block)]
    for r in range(rounds):
        for engine in (a, b):
            for h in histories[:warmup]:
                engine.recommend(history=h, k=10)
            for i in range(block):
                ms = timed(engine, histories[(r * block + i) % len(histories)])
                if engine is a:
                    by_position[i].append(ms)
    everything = [x for p in by_position for x in p]
    return {
        **stats(everything),
        "after_position_10": stats([x for p in by_position[10:] for x in p]),
        "median_ms_by_position": [round(float(np.median(p)), 3) for p in by_position],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("other", type=Path, help="the second engine of the interleaved cases")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    probe = json.loads((args.bundle / "probe.json").read_text())
    histories = [h for h in probe["histories"] if h][:400]
    rounds = max(1, args.calls // 130)
    results: dict[str, Any] = {}

    def load(path: Path, **kw: Any) -> Engine:
        return Engine.load(path, device="cpu", **{"threads": args.threads, **kw})

    cases = {
        f"plain, {args.threads} threads spinning": lambda: plain(load(args.bundle), histories, args.calls),
        f"plain, {args.threads} threads sleeping": lambda: plain(
            load(args.bundle, spin=False), histories, args.calls
        ),
        f"plain, {args.threads} threads spinning during runs only": lambda: plain(
            load(args.bundle, spin="run"), histories, args.calls
        ),
        "plain, 1 thread": lambda: plain(load(args.bundle, threads=1), histories, args.calls),
        "interleaved with the other engine, spinning": lambda: interleaved(
            load(args.bundle), load(args.other), histories, rounds
        ),
        "interleaved with the other engine, sleeping": lambda: interleaved(
            load(args.bundle, spin=False), load(args.other, spin=False), histories, rounds
        ),
        "interleaved with the other engine, spinning during runs only": lambda: interleaved(
            load(args.bundle, spin="run"), load(args.other, spin="run"), histories, rounds
        ),
        "interleaved with itself, spinning": lambda: (lambda e: interleaved(e, e, histories, rounds))(
            load(args.bundle)
        ),
    }
    for name, run in cases.items():
        results[name] = run()
        r = results[name]
        print(
            f"{name:62s} p50 {r['p50_ms']:7.3f}  p99 {r['p99_ms']:7.3f}  ratio {r['p99_over_p50']:5.2f}",
            flush=True,
        )
    if args.json:
        report = {
            "bundle": str(args.bundle),
            "other": str(args.other),
            "threads": args.threads,
            "cases": results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
