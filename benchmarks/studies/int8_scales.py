"""One weight scale per matrix against one per output column, in ONNX Runtime's dynamic int8.

    python benchmarks/studies/int8_scales.py [--threads 2] [--rounds 5] [--json FILE]

Builds graphs of 12 independent MatMuls of all-MiniLM-L6-v2's shapes (384x1536 FFN input,
1536x384 FFN output, 384x384 attention output), each with weights of its own so that they
stream from memory as a real request graph's do, and quantizes each graph twice with
``dynamic_int8``: per tensor and per channel. Each graph runs one input of 1, 7 and 64 rows
(tokens), batch 1, under the engine's CPU session options with threads spinning while a run
lasts; rounds interleave the two forms. Figures are the median over rounds of a round's
median, per MatMul, in µs. ``quantize --mode auto`` trades fidelity for this difference
(:data:`recsys_infer.toolchain.compress.mixed.INT8_TENSOR`).
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
from recsys_infer.runtime.providers import onnxruntime, session_options
from recsys_infer.toolchain.compress.graphs import dynamic_int8, quiet_quantizer

SHAPES = ((384, 1536), (1536, 384), (384, 384))
PRODUCTS = 12


def _graph(k: int, n: int, path: Path, rng: np.random.Generator) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [
        numpy_helper.from_array((rng.standard_normal((k, n)) * 0.05).astype(np.float32), f"w{i}")
        for i in range(PRODUCTS)
    ]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(PRODUCTS)]
    graph = helper.make_graph(
        nodes,
        "products",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "rows", k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, "rows", n]) for i in range(PRODUCTS)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ort = onnxruntime()
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        for k, n in SHAPES:
            src = Path(tmp) / f"{k}x{n}.onnx"
            _graph(k, n, src, rng)
            sessions = {}
            for form, per_channel in (("per_tensor", False), ("per_column", True)):
                dst = Path(tmp) / f"{k}x{n}-{form}.onnx"
                dynamic_int8(src, dst, ops=["MatMul"], exclude=[], per_channel=per_channel)
                options = session_options(threads=args.threads, spin="run")
                sessions[form] = ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])
            rounds: dict[str, dict[int, list[float]]] = {f: {1: [], 7: [], 64: []} for f in sessions}
            for _ in range(args.rounds):
                for form, session in sessions.items():
                    for rows in (1, 7, 64):
                        feed = {"x": rng.standard_normal((1, rows, k)).astype(np.float32)}
                        ms = timed([partial(session.run, None, feed)] * args.calls, warmup=20)
                        rounds[form][rows].append(float(np.median(ms)) * 1e3 / PRODUCTS)
            results[f"{k}x{n}"] = {
                form: {f"us_per_product_{rows}_rows": round(float(np.median(v)), 2) for rows, v in by.items()}
                for form, by in rounds.items()
            }
            print(f"{k}x{n}", json.dumps(results[f"{k}x{n}"]))
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "rounds": args.rounds, **results}, indent=2)
        )


if __name__ == "__main__":
    main()
