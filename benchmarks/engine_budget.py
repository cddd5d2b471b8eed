"""Measure the standing budgets of the runtime against one bundle.

    python benchmarks/engine_budget.py BUNDLE [--threads 2] [--requests 300] [--json FILE]

What it measures, each in a fresh interpreter so nothing is shared between them:

- ``import recsys_infer``: wall time (median of 7 runs) and whether torch got imported;
- ``recsys-infer --help``: wall time of the console command (median of 5 runs);
- ``Engine.load``: wall time, resident memory after loading (VmRSS) and its peak (VmHWM),
  next to the bundle's size on disk;
- ``Engine.recommend``: latency p50/p95/p99 at batch 1 after a warm-up, for probe-set
  histories (their size in tokens for the text kind, in items for the sequence kind) and for
  short text requests, with ONNX Runtime pinned to ``--threads``.

The full benchmark harness (variants side by side, peers, plots) is `recsys-infer bench`
(issue 5); this script checks the budgets every change must keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

_LOAD_AND_SERVE = r"""
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
t0 = time.perf_counter()
from recsys_infer import Engine
import_s = time.perf_counter() - t0
rss_imported = status("VmRSS:")
t0 = time.perf_counter()
engine = Engine.load(sys.argv[1], device="cpu", threads=int(sys.argv[2]))
load_s = time.perf_counter() - t0
rss_loaded = status("VmRSS:")
probe = json.load(open(sys.argv[1] + "/probe.json")) if engine.manifest.probe else {"histories": []}
histories = [h for h in probe["histories"] if h][: int(sys.argv[3])] or [[engine.item_ids[0]]]
texts = ["cozy mystery novel set in Scotland", "noise cancelling headphones for travel",
         "space opera with a strong female lead", "a gift for a keen gardener"]
from recsys_infer.bench.timing import timed
history_ms = timed([lambda h=h: engine.recommend(history=h, k=10) for h in histories], warmup=20)
text_ms = timed([lambda t=t: engine.recommend(text=t, k=10) for t in texts * 50], warmup=20)
if engine.manifest.user.kind == "text":  # the history is written as text: its size in tokens
    tokenizer = engine.user_encoder.encoder.tokenizer
    lengths, unit = tokenizer.count_tokens([engine.user_text({"history": h}) for h in histories]), "tokens"
else:  # the sequence kind reads the history's item vectors: its size in items
    lengths, unit = [min(len(h), engine.manifest.user.max_length) for h in histories], "items"
print(json.dumps({"import_s": import_s, "load_s": load_s, "rss_imported": rss_imported,
                  "rss_loaded": rss_loaded, "rss_peak": status("VmHWM:"),
                  "history_ms": history_ms, "text_ms": text_ms, "history_size": lengths, "unit": unit}))
"""


def _median_wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pcts(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 3), "p95": round(q[94], 3), "p99": round(q[98], 3), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    code = (
        "import sys, time; t = time.perf_counter(); import recsys_infer; "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    import_runs = [
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
        ).stdout.split()
        for _ in range(7)
    ]
    cli = shutil.which("recsys-infer") or str(Path(sys.executable).with_name("recsys-infer"))
    help_s = _median_wall([cli, "--help"], 5)
    served = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_SERVE, str(args.bundle), str(args.threads), str(args.requests)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    m = json.loads(served.stdout.strip().splitlines()[-1])
    bundle_bytes = sum(p.stat().st_size for p in args.bundle.iterdir() if p.is_file())
    import onnxruntime

    report = {
        "bundle": str(args.bundle),
        "bundle_mb": round(bundle_bytes / 1e6, 1),
        "import_recsys_infer_s": round(statistics.median(float(r[0]) for r in import_runs), 3),
        "import_pulls_torch": any(r[1] == "True" for r in import_runs),
        "cli_help_s": round(help_s, 3),
        "engine_load_s": round(m["load_s"], 3),
        "rss_after_imports_mb": round(m["rss_imported"] / 1e6, 1),
        "rss_after_load_mb": round(m["rss_loaded"] / 1e6, 1),
        "rss_peak_mb": round(m["rss_peak"] / 1e6, 1),
        "rss_budget_mb": round(bundle_bytes / 1e6 + 150, 1),
        "recommend_history_ms": _pcts(m["history_ms"]),
        "recommend_text_ms": _pcts(m["text_ms"]),
        "history_size": {
            "unit": m["unit"],
            "min": min(m["history_size"]),
            "median": statistics.median(m["history_size"]),
            "max": max(m["history_size"]),
        },
        "environment": {
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
        },
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
