"""Batch-1 latency of each bundle's user-side text graph, variants interleaved.

    python benchmarks/studies/tower_latency.py BUNDLE [BUNDLE ...] [--threads 2] [--spin always]
        [--rounds 5] [--json FILE]

The user-side text graph is what a request runs: the user tower of a text bundle, the request
tower of a sequence bundle. For every bundle it times the graph alone (no tokenizer) on one text
at fixed token lengths (32, 64, 128, padding-free) and on the probe set's real request texts at
their natural lengths, with ONNX Runtime pinned to ``--threads`` intra-op threads that spin as
``--spin`` says (``always``, ONNX Runtime's default; ``run``, only while a run lasts; ``never``).
Rounds interleave the bundles, so that the machine's drift hits every variant alike; each figure
is the median over rounds of the round's p50 (and p95). Sizes are the graph files' bytes. The
full harness is ``recsys-infer bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from recsys_infer.bench.timing import timed
from recsys_infer.enums import Device, Spin
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.providers import create_session

LENGTHS = (32, 64, 128)


def _side(bundle: Path) -> str:
    towers = read_manifest(bundle).towers
    return "request" if "request" in towers else "user"


def _feeds(bundle: Path, texts: list[str]) -> dict[str, list[dict[str, np.ndarray]]]:
    manifest = read_manifest(bundle)
    tokenizer = Tokenizer.from_file(str(bundle / manifest.tokenizer.file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=manifest.towers[_side(bundle)].max_length)
    filler = " ".join(texts) * 8
    fixed = tokenizer.encode(filler).ids
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for n in LENGTHS:
        ids = np.asarray([fixed[: n - 1] + fixed[-1:]], dtype=np.int64)
        out[f"seq{n}"] = [{"input_ids": ids, "attention_mask": np.ones_like(ids)}]
    real = []
    for e in tokenizer.encode_batch(texts):
        ids = np.asarray([e.ids], dtype=np.int64)
        real.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    out["real"] = real
    return out


def _time(session: Any, feeds: list[dict[str, np.ndarray]], calls: int) -> list[float]:
    return timed([partial(session.run, None, feeds[i % len(feeds)]) for i in range(calls)], warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spin", choices=[s.value for s in Spin], default=Spin.ALWAYS.value)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=60, help="timed calls per length per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    first = args.bundles[0]
    probe = json.loads((first / "probe.json").read_text()) if (first / "probe.json").is_file() else {}
    texts = list(probe.get("requests", []))[:200] or ["a quiet film about a family by the sea"] * 10
    runs = {}
    for b in args.bundles:
        manifest = read_manifest(b)
        spec = manifest.towers[_side(b)]
        runs[b] = {
            "session": create_session(b / spec.file, Device.CPU, threads=args.threads, spin=args.spin),
            "feeds": _feeds(b, texts),
            "graph": spec.file,
            "graph_mb": round((b / spec.file).stat().st_size / 1e6, 1),
            "precision": str(spec.precision),
        }
    lengths = [len(f["input_ids"][0]) for f in runs[first]["feeds"]["real"]]
    samples: dict[Path, dict[str, list[tuple[float, float]]]] = {b: {} for b in args.bundles}
    for _ in range(args.rounds):
        for key in [f"seq{n}" for n in LENGTHS] + ["real"]:
            for b in args.bundles:
                t = _time(runs[b]["session"], runs[b]["feeds"][key], args.calls)
                p50, p95 = float(np.percentile(t, 50)), float(np.percentile(t, 95))
                samples[b].setdefault(key, []).append((p50, p95))
    report: dict[str, Any] = {
        "threads": args.threads,
        "spin": args.spin,
        "rounds": args.rounds,
        "real_lengths": {
            "count": len(lengths),
            "min": min(lengths),
            "median": statistics.median(lengths),
            "max": max(lengths),
        },
        "bundles": [],
    }
    base = None
    for b in args.bundles:
        row: dict[str, Any] = {"bundle": str(b), "graph": runs[b]["graph"], "graph_mb": runs[b]["graph_mb"],
                               "precision": runs[b]["precision"]}  # fmt: skip
        for key, values in samples[b].items():
            row[f"{key}_p50_ms"] = round(statistics.median(v[0] for v in values), 2)
            row[f"{key}_p95_ms"] = round(statistics.median(v[1] for v in values), 2)
        base = base or row
        row["speedup_seq64"] = round(base["seq64_p50_ms"] / row["seq64_p50_ms"], 2)
        row["speedup_real"] = round(base["real_p50_ms"] / row["real_p50_ms"], 2)
        report["bundles"].append(row)
    lengths = report["real_lengths"]
    print(f"real request lengths: {lengths}; threads {args.threads}, spin {args.spin}; ratios vs {first}")
    print("| bundle | graph MB | p50 ms seq 32 / 64 / 128 | p50 ms real | speed-up seq 64 / real |")
    print("|---|---|---|---|---|")
    for row in report["bundles"]:
        fixed = " / ".join(str(row[f"seq{n}_p50_ms"]) for n in LENGTHS)
        speedup = f"{row['speedup_seq64']}× / {row['speedup_real']}×"
        name = Path(row["bundle"]).name
        print(f"| {name} | {row['graph_mb']} | {fixed} | {row['real_p50_ms']} | {speedup} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
