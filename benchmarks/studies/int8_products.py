"""What one matrix product of a MiniLM layer costs in each kernel ONNX Runtime offers on the CPU,
at request lengths and at 64 tokens, on 1 and 2 threads.

    python benchmarks/studies/int8_products.py [--tokens 7 64] [--json FILE]

A graph of ten FFN pairs (384 -> 1536 -> 384, random weights: speed does not depend on their
values) in fp32, in dynamic int8 (``quantize_dynamic``, per-channel, as ``quantize --mode
dynamic`` writes it) and in blockwise ``MatMulNBits`` (8 and 4 bits, blocks of 128, int8
compute). Sessions are made as the engine makes them (``session_options``, threads sleeping
between runs unless ``--spin``); one session exists at a time, so no other session's threads
compete. Each figure is the median of 300 runs divided by the graph's 20 products.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from recsys_infer.bench.timing import timed
from recsys_infer.runtime.providers import onnxruntime, session_options

HIDDEN, FFN, PAIRS = 384, 1536, 10


def _ffn_stack(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(PAIRS):
        for name, shape in ((f"up{i}", (HIDDEN, FFN)), (f"down{i}", (FFN, HIDDEN))):
            values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            weights.append(numpy_helper.from_array(values, name))
            nodes.append(helper.make_node("MatMul", [x, name], [f"{name}_out"]))
            x = f"{name}_out"
    graph = helper.make_graph(
        nodes,
        "ffn_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, HIDDEN])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _variants(work: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    fp32 = work / "fp32.onnx"
    _ffn_stack(fp32)
    out = {"fp32": fp32, "dynamic int8": work / "int8.onnx"}
    quantize_dynamic(str(fp32), str(out["dynamic int8"]), per_channel=True, weight_type=QuantType.QInt8)
    for bits in (8, 4):
        path = out[f"MatMulNBits {bits}-bit"] = work / f"nbits{bits}.onnx"
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(fp32)), bits=bits, block_size=128, is_symmetric=True, accuracy_level=4
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    return out


def _per_product_us(path: Path, tokens: int, threads: int, spin: bool) -> float:
    options = session_options(threads=threads, spin=spin)
    session = onnxruntime().InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(1).standard_normal((1, tokens, HIDDEN)).astype(np.float32)
    ms = timed([partial(session.run, None, {"x": x})] * 300, warmup=50)
    del session
    gc.collect()
    return float(np.median(ms)) * 1000 / (2 * PAIRS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[7, 64])
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime's threads busy-wait")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="int8-products-") as tmp:
        variants = _variants(Path(tmp))
        for tokens in args.tokens:
            for name, path in variants.items():
                row = {"kernel": name, "tokens": tokens}
                for threads in (1, 2):
                    row[f"us_per_product_{threads}_threads"] = round(
                        _per_product_us(path, tokens, threads, args.spin), 1
                    )
                results.append(row)
                print(
                    f"{tokens:4d} tokens  {name:22s}  1 thread {row['us_per_product_1_threads']:7.1f} µs"
                    f"   2 threads {row['us_per_product_2_threads']:7.1f} µs",
                    flush=True,
                )
    if args.json is not None:
        args.json.write_text(json.dumps({"spin": args.spin, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
