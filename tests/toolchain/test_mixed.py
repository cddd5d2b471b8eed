"""quantize --mode auto: the units of a text graph, the search's choice against its target, and
the bundle it writes (graph, record, fidelity), on the tiny models."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from recsys_infer import Engine
from recsys_infer.errors import ConfigError, FidelityError
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.schema import encode
from recsys_infer.toolchain.compress.graphs import graph_units
from recsys_infer.toolchain.compress.mixed import (
    BLOCKWISE,
    FP32,
    INT8,
    INT8_TENSOR,
    KEPT_FORMS,
    build_mixed,
    search_plan,
)
from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle
from tests.conftest import request_graph


def test_units_cover_every_layer_of_a_fused_graph(seq_optimized: Path) -> None:
    model = onnx.load(str(request_graph(seq_optimized)))
    units = graph_units(model)
    layers = sum(n.op_type == "Attention" for n in model.graph.node)
    assert layers >= 1
    for i in range(layers):
        for role in ("attention", "attention-out", "ffn-in", "ffn-out"):
            assert f"{role}.{i}" in {u.name for u in units}
    assert all(u.weights > 0 for u in units)
    named = {n for u in units for n in u.nodes}
    products = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Attention")}
    assert named <= products and len(named) == sum(len(u.nodes) for u in units), "a node in two units"


def test_the_graph_follows_the_plan(seq_optimized: Path, tmp_path: Path) -> None:
    graph = request_graph(seq_optimized)
    units = graph_units(onnx.load(str(graph)))
    int8 = [u for u in units if u.op_type == "MatMul"][:2]
    out = tmp_path / "mixed.onnx"
    built = build_mixed(graph, out, units, {u.name: INT8 for u in int8})
    assert built["int8_units"] == 2 and built["units"] == len(units)
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    quantized = ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"]
    assert quantized == sum(len(u.nodes) for u in int8), ops
    assert ops["Attention"] == sum(u.op_type == "Attention" for u in units), "fp32 attention must stay"


def _weight_zero_points(graph: Path) -> dict[str, int]:
    """Each int8 product's number of weight zero points: 1 per tensor, one per column else."""
    model = onnx.load(str(graph))
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    slot = {"MatMulInteger": 3, "QAttention": 7, "DynamicQuantizeMatMul": 3}
    return {n.name: sizes[n.input[slot[n.op_type]]] for n in model.graph.node if n.op_type in slot}


def test_units_get_one_weight_scale_per_tensor_or_per_column(seq_optimized: Path, tmp_path: Path) -> None:
    graph = request_graph(seq_optimized)
    units = graph_units(onnx.load(str(graph)))
    attention, ffn = (
        next(u for u in units if u.op_type == "Attention"),
        next(u for u in units if u.name.startswith("ffn-in.")),
    )
    out = tmp_path / "mixed.onnx"
    built = build_mixed(graph, out, units, {attention.name: INT8_TENSOR, ffn.name: INT8})
    assert built["int8_units"] == 2 and built["per_tensor_units"] == 1
    points = _weight_zero_points(out)
    assert sorted(points.values())[0] == 1 and len(points) == 2, points
    assert max(points.values()) > 1, "the per-column product keeps a zero point per column"
    per_tensor = next(n for n in onnx.load(str(out)).graph.node if n.name in points and points[n.name] == 1)
    assert per_tensor.op_type == "QAttention", "the attention is the one per tensor"
    assert "per_tensor_units" not in build_mixed(graph, tmp_path / "b.onnx", units, {ffn.name: INT8})


def test_kept_units_can_run_in_blockwise_int8(seq_optimized: Path, tmp_path: Path) -> None:
    graph = request_graph(seq_optimized)
    units = graph_units(onnx.load(str(graph)))
    matmuls = [u for u in units if u.op_type == "MatMul"]
    plan = {matmuls[0].name: INT8, **{u.name: BLOCKWISE for u in matmuls[1:]}}
    out = tmp_path / "mixed.onnx"
    built = build_mixed(graph, out, units, plan)
    assert built["int8_units"] == 1 and built["blockwise_units"] == len(matmuls) - 1
    model = onnx.load(str(out))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == sum(len(u.nodes) for u in matmuls[1:]), ops
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] == len(matmuls[0].nodes), ops
    assert ops["Attention"] == sum(u.op_type == "Attention" for u in units), "fp32 attention must stay"
    # ONNX Runtime runs what was written.
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((1, 5), dtype=np.int64) for i in session.get_inputs()}
    assert np.isfinite(session.run(None, feeds)[0]).all()
    attention = next(u for u in units if u.op_type == "Attention")
    with pytest.raises(ConfigError, match="blockwise and outlier forms"):
        build_mixed(graph, tmp_path / "x.onnx", units, {attention.name: BLOCKWISE})


def test_products_outside_the_units_stay_fp32(seq_optimized: Path, tmp_path: Path) -> None:
    """What --keep-fp32 takes out of the search is not quantized by the plan's int8."""
    graph = request_graph(seq_optimized)
    units = graph_units(onnx.load(str(graph)))
    kept = next(u for u in units if u.name.startswith("ffn-out."))
    rest = [u for u in units if u is not kept]
    out = tmp_path / "mixed.onnx"
    build_mixed(graph, out, rest, {u.name: INT8 for u in rest})
    still = {n.name for n in onnx.load(str(out)).graph.node if n.op_type == "MatMul"}
    assert set(kept.nodes) <= still


class _ScriptedProbe:
    """Overlap falls by 0.02 per unit in int8, and by 0.1 with any blockwise unit: the boundary
    of a 0.95 target is 2 units with fp32 kept units, and none is met with blockwise ones."""

    def measure(self, graph: Path) -> dict[str, float]:
        int8 = sum(
            n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger", "QAttention")
            for n in onnx.load(str(graph)).graph.node
        )
        k = int(re.sub(r"\D", "", graph.stem) or 0) if graph.stem.startswith("k") else 0
        blockwise = any(n.op_type == "MatMulNBits" for n in onnx.load(str(graph)).graph.node)
        overlap = 1.0 - 0.02 * k - (0.1 if blockwise else 0.0)
        return {"overlap@10": overlap, "mean_cosine": 1.0 - 0.001 * int8, "min_cosine": 1.0}


def test_the_search_stops_at_the_last_plan_that_holds_the_target(seq_optimized: Path, tmp_path: Path) -> None:
    graph = request_graph(seq_optimized)
    units = graph_units(onnx.load(str(graph)))
    assert len(units) >= 4
    result = search_plan(graph, units, _ScriptedProbe(), target=0.95, workdir=tmp_path)  # type: ignore[arg-type]
    assert sum(p == INT8 for p in result.plan.values()) == 2
    assert result.fidelity["overlap@10"] >= 0.95
    tried = {t["int8_units"]: t["overlap@10"] for t in result.record["tried"]}
    assert tried[3] < 0.95 <= tried[2], "the next plan must be the first to miss"
    assert set(result.record["sensitivity"]) == {u.name for u in units}
    assert set(result.record["order"][:2]) == {n for n, p in result.plan.items() if p == INT8}
    with pytest.raises(FidelityError, match=r"reaches 1\.0000"):
        search_plan(graph, units, _ScriptedProbe(), target=1.01, workdir=tmp_path)  # type: ignore[arg-type]


def test_the_search_falls_back_to_fp32_kept_units(seq_optimized: Path, tmp_path: Path) -> None:
    graph = request_graph(seq_optimized)
    units = graph_units(onnx.load(str(graph)))
    probe = _ScriptedProbe()
    # Blockwise kept units cost 0.1: a 0.85 target holds with them, 2 units in int8.
    result = search_plan(graph, units, probe, target=0.85, workdir=tmp_path, kept=(BLOCKWISE, FP32))  # type: ignore[arg-type]
    assert result.record["kept"] == BLOCKWISE
    assert sum(p == INT8 for p in result.plan.values()) == 2
    assert {p for p in result.plan.values() if p != INT8} == {BLOCKWISE, FP32}, "attention stays fp32"
    # At 0.95 no blockwise plan holds (1 - 0.1 at best): the same search, the rest fp32.
    result = search_plan(graph, units, probe, target=0.95, workdir=tmp_path, kept=(BLOCKWISE, FP32))  # type: ignore[arg-type]
    assert result.record["kept"] == FP32 and sum(p == INT8 for p in result.plan.values()) == 2
    assert {t["kept"] for t in result.record["tried"]} == {BLOCKWISE, FP32}
    with pytest.raises(FidelityError, match=r"reaches 1\.0000"):
        search_plan(graph, units, probe, target=1.01, workdir=tmp_path, kept=(BLOCKWISE, FP32))  # type: ignore[arg-type]


class _PerTensorProbe:
    """Overlap falls by 0.02 per int8 product and by 0.007 more per product with one weight
    scale: at a 0.95 target the first stage takes 2 units (0.96), and one of them can then go
    per tensor (0.953), not both (0.946)."""

    def measure(self, graph: Path) -> dict[str, float]:
        points = _weight_zero_points(graph)
        tensor = sum(v == 1 for v in points.values())
        overlap = 1.0 - 0.02 * len(points) - 0.007 * tensor
        return {"overlap@10": overlap, "mean_cosine": overlap, "min_cosine": overlap}


def test_the_search_moves_int8_units_per_tensor_while_the_target_holds(
    seq_optimized: Path, tmp_path: Path
) -> None:
    graph = request_graph(seq_optimized)
    units = [u for u in graph_units(onnx.load(str(graph))) if len(u.nodes) == 1]
    probe = _PerTensorProbe()
    result = search_plan(graph, units, probe, target=0.95, workdir=tmp_path, per_tensor=True)  # type: ignore[arg-type]
    assert Counter(result.plan.values()) == Counter({INT8: 1, INT8_TENSOR: 1, FP32: len(units) - 2})
    assert result.fidelity["overlap@10"] == pytest.approx(0.953)
    record = result.record["per_tensor"]
    assert record["units"] == 1 and len(record["sensitivity"]) == 2
    assert {t["per_tensor_units"]: round(t["overlap@10"], 3) for t in record["tried"]} == {1: 0.953, 2: 0.946}
    moved = next(n for n, p in result.plan.items() if p == INT8_TENSOR)
    assert moved == record["order"][0]
    # Without per_tensor (a CPU where it is not faster) the first stage's plan stands.
    plain = search_plan(graph, units, probe, target=0.95, workdir=tmp_path)  # type: ignore[arg-type]
    assert Counter(plain.plan.values())[INT8] == 2 and "per_tensor" not in plain.record


def test_auto_writes_a_measured_mixedrequest_graph(seq_optimized: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto"
    config = QuantizeConfig(mode="auto", towers="user", target_overlap=0.9)
    result = quantize_bundle(seq_optimized, out, config, progress=False)
    manifest = read_manifest(out)
    assert manifest.towers["request"].file.endswith(".mixed.onnx")
    record = encode(manifest)["compression"][-1]
    assert record["mode"] == "auto" and record["target_overlap@10"] == 0.9
    graph = record["graphs"][manifest.towers["request"].file]
    search = graph["search"]
    assert search["chosen"]["overlap@10"] >= 0.9
    assert set(search["sensitivity"]) == set(graph["plan"])
    kept = search["kept_precision"]
    assert kept["try"][-1] == FP32 and search["kept"] in kept["try"]
    latency = kept["latency"]
    for form in KEPT_FORMS:
        faster = all(latency[form][key] < latency[FP32][key] for key in latency[FP32])
        assert (form in kept["try"]) == faster, f"{form} is tried only where it was faster than fp32"
    relative = [sum(latency[f][k] / latency[FP32][k] for k in latency[FP32]) for f in kept["try"][:-1]]
    assert relative == sorted(relative), "the faster form first"
    timing = search["per_tensor_timing"]["latency"]
    faster = all(timing[INT8_TENSOR][key] < timing[INT8][key] for key in timing[INT8])
    assert search["per_tensor_timing"]["faster"] == faster
    assert ("per_tensor" in search) == faster, "units go per tensor only where that was faster"
    assert graph["latency"]["mixed"]["p50_ms_real"] > 0 and graph["latency"]["speedup_vs_input"]
    # The written bundle's own measurement (the gate's) agrees with the target too.
    assert result.fidelity["queries"]["request"]["overlap@10"] >= 0.9
    ops = Counter(n.op_type for n in onnx.load(str(out / manifest.towers["request"].file)).graph.node)
    assert (ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] + ops["QAttention"] > 0) == (
        graph["int8_units"] > 0
    )
    assert Engine.load(out, device="cpu").recommend(text="something to read", k=3)


def test_auto_is_for_the_request_path(seq_optimized: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tower user"):
        quantize_bundle(
            seq_optimized, tmp_path / "x", QuantizeConfig(mode="auto", towers="both"), progress=False
        )
    assert not (tmp_path / "x").exists()
