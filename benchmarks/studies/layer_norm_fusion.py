"""What ONNX Runtime's layer-norm fusions cost a request graph on the CPU, interleaved.

    python benchmarks/studies/layer_norm_fusion.py BUNDLE [--threads 2] [--rounds 5] [--json FILE]

BUNDLE is an fp32 bundle (as `export` writes it). Its user-side text graph is built twice, then
quantized to dynamic int8 both times:

- ``fused``: ONNX Runtime's transformer optimizer with its defaults (the residual Add folded into
  ``SkipLayerNormalization``, the product's bias into ``BiasGelu``), run with every session
  optimiser on, as `optimize` did until 2026-12-06;
- ``unfused``: what `optimize` writes now (those two fusions left out), run with the session
  options the engine uses on a CPU (``SkipLayerNormFusion`` off).

Each graph runs one text at 7 and at 64 tokens, batch 1, with threads spinning and sleeping;
rounds interleave the graphs. Figures are medians over all calls, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.bench.timing import timed
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.providers import onnxruntime, session_options
from recsys_infer.toolchain.compress.graphs import dynamic_int8, optimize_graph


def _fused(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, use_gpu=False).save_model_to_file(
        str(dst)
    )


def _feed(tokens: int) -> dict[str, np.ndarray]:
    ids = np.full((1, tokens), 2000, dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((1, tokens), dtype=np.int64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    towers = read_manifest(args.bundle).towers
    graph = args.bundle / towers["request" if "request" in towers else "user"].file
    ort = onnxruntime()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _fused(graph, work / "fused.onnx")
        optimize_graph(graph, work / "unfused.onnx")
        for name in ("fused", "unfused"):
            dynamic_int8(
                work / f"{name}.onnx", work / f"{name}-int8.onnx", ops=["MatMul", "Attention"], exclude=[]
            )
        for spin in (True, False):
            sessions = {}
            for name in ("fused", "unfused"):
                # cpu=False: every session optimiser on, SkipLayerNormFusion included.
                options = session_options(threads=args.threads, spin=spin, cpu=name == "unfused")
                sessions[name] = ort.InferenceSession(
                    str(work / f"{name}-int8.onnx"), options, providers=["CPUExecutionProvider"]
                )
            times: dict[str, dict[int, list[float]]] = {n: {7: [], 64: []} for n in sessions}
            for _ in range(args.rounds):
                for name, session in sessions.items():
                    for tokens in (7, 64):
                        feed = _feed(tokens)
                        times[name][tokens] += timed(
                            [partial(session.run, None, feed)] * args.calls, warmup=5
                        )
            key = "spinning" if spin else "sleeping"
            results[key] = {
                n: {f"p50_ms_{k}_tokens": round(float(np.median(v)), 3) for k, v in t.items()}
                for n, t in times.items()
            }
            print(key, json.dumps(results[key]))
    if args.json:
        args.json.write_text(
            json.dumps({"bundle": str(args.bundle), "threads": args.threads, **results}, indent=2)
        )


if __name__ == "__main__":
    main()
