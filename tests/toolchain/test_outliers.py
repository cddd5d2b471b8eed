"""The kept precision ``int8-outliers``: a product's outlier input channels in an fp32 side product,
the rest in dynamic int8 (the same function in fp32; closer to it in int8), on the tiny models."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from recsys_infer.errors import ConfigError
from recsys_infer.toolchain.compress.graphs import graph_units
from recsys_infer.toolchain.compress.mixed import FP32, INT8, OUTLIERS, build_mixed, search_plan
from recsys_infer.toolchain.compress.outliers import SUFFIX, outlier_channels, split_outliers
from recsys_infer.toolchain.compress.smooth import activation_ranges, smooth_graph
from tests.conftest import request_graph, text_feeds

PLANTED = (3, 17)


def _run(graph: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in f.items() if k in names})[0] for f in feeds])


def _ffn_in(graph: Path) -> str:
    unit = next(u for u in graph_units(onnx.load(str(graph))) if u.name == "ffn-in.0")
    return unit.nodes[0]


@pytest.fixture
def planted(seq_optimized: Path, tmp_path: Path) -> Path:
    """The tiny request graph with two outlier channels planted in the first FFN's input: the
    LayerNorm before it scales them 40x (as trained BERT-style models do to a few channels)."""
    src = request_graph(seq_optimized)
    model = onnx.load(str(src))
    ffn = next(n for n in model.graph.node if n.name == _ffn_in(src))
    norm = next(n for n in model.graph.node if ffn.input[0] in n.output)
    assert norm.op_type == "LayerNormalization"
    weights = {t.name: t for t in model.graph.initializer}
    for name in norm.input[1:3]:
        value = numpy_helper.to_array(weights[name]).copy()
        value[list(PLANTED)] *= 40.0
        weights[name].CopyFrom(numpy_helper.from_array(value, name))
    out = tmp_path / "planted.onnx"
    onnx.save(model, str(out))
    return out


def test_calibration_finds_the_outlier_channels(planted: Path) -> None:
    node = _ffn_in(planted)
    picked = outlier_channels(planted, text_feeds(planted, [4, 9]), [node], k=2)
    assert picked[node].tolist() == list(PLANTED)
    with pytest.raises(ConfigError, match="no node"):
        outlier_channels(planted, text_feeds(planted, [4]), ["nope"])
    with pytest.raises(ConfigError, match="positive"):
        outlier_channels(planted, text_feeds(planted, [4]), [node], k=0)


def test_the_split_keeps_the_function_in_fp32(planted: Path, tmp_path: Path) -> None:
    units = [u for u in graph_units(onnx.load(str(planted))) if u.op_type == "MatMul"]
    nodes = [n for u in units for n in u.nodes]
    feeds = text_feeds(planted, [4, 7, 11])
    channels = outlier_channels(planted, feeds, nodes, k=3)
    out = tmp_path / "split.onnx"
    record = split_outliers(planted, out, channels)
    assert sorted(record["channels"]) == sorted(nodes)
    assert all(record["channels"][n] == channels[n].tolist() for n in nodes)
    model = onnx.load(str(out))
    ops = Counter(n.op_type for n in model.graph.node if n.name.endswith(SUFFIX) or SUFFIX + "_" in n.name)
    assert ops["Gather"] == ops["Add"] == len(nodes) and ops["MatMul"] == len(nodes)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.name in channels):
        assert not weights[node.input[1]][channels[node.name]].any(), "the int8 half drops the channels"
    unseen = text_feeds(planted, [5, 9], seed=3)
    np.testing.assert_allclose(_run(out, unseen), _run(planted, unseen), atol=2e-5)


def test_a_smoothed_product_folds_the_mask_into_its_scale(planted: Path, tmp_path: Path) -> None:
    feeds = text_feeds(planted, [4, 7])
    smoothed = tmp_path / "smoothed.onnx"
    smooth_graph(planted, smoothed, activation_ranges(planted, feeds), 0.7)
    node = _ffn_in(smoothed)
    out = tmp_path / "split.onnx"
    channels = outlier_channels(smoothed, feeds, [node], k=2)
    split_outliers(smoothed, out, channels)
    model = onnx.load(str(out))
    added = [n.op_type for n in model.graph.node if SUFFIX in n.name]
    assert sorted(added) == ["Add", "Gather", "MatMul"], "no mask Mul: the smoothing Mul zeroes the channels"
    unseen = text_feeds(planted, [6, 10], seed=4)
    np.testing.assert_allclose(_run(out, unseen), _run(planted, unseen), atol=2e-5)


def test_outlier_units_in_int8_stay_closer_to_fp32(planted: Path, tmp_path: Path) -> None:
    units = graph_units(onnx.load(str(planted)))
    ffn = next(u for u in units if u.name == "ffn-in.0")
    channels = outlier_channels(planted, text_feeds(planted, [4, 9, 12]), list(ffn.nodes), k=2)
    plain, split = tmp_path / "plain.onnx", tmp_path / "split.onnx"
    build_mixed(planted, plain, units, {ffn.name: INT8})
    built = build_mixed(planted, split, units, {ffn.name: OUTLIERS}, outliers=channels)
    assert built["outlier_units"] == 1 and built["plan"][ffn.name] == OUTLIERS
    assert built["outliers"]["channels"] == {n: channels[n].tolist() for n in ffn.nodes}
    ops = Counter(n.op_type for n in onnx.load(str(split)).graph.node)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] == len(ffn.nodes)
    unseen = text_feeds(planted, [5, 8, 13], seed=5)
    reference = _run(planted, unseen)
    error = {p.stem: float(np.abs(_run(p, unseen) - reference).max()) for p in (plain, split)}
    assert error["split"] < error["plain"] / 3, error
    with pytest.raises(ConfigError, match="calibrated"):
        build_mixed(planted, tmp_path / "x.onnx", units, {ffn.name: OUTLIERS})
    attention = next(u for u in units if u.op_type == "Attention")
    with pytest.raises(ConfigError, match="outlier forms"):
        build_mixed(planted, tmp_path / "x.onnx", units, {attention.name: OUTLIERS}, outliers=channels)


class _ByUnits:
    """Overlap falls by 0.02 per unit in plain int8 (the search names candidates ``k<units>``)."""

    def measure(self, graph: Path) -> dict[str, float]:
        k = int(graph.stem[1:]) if graph.stem[1:].isdigit() else 0
        return {"overlap@10": 1.0 - 0.02 * k, "mean_cosine": 1.0 - 0.001 * k, "min_cosine": 1.0}


def test_the_search_keeps_units_as_int8_with_outliers(planted: Path, tmp_path: Path) -> None:
    units = graph_units(onnx.load(str(planted)))
    products = [n for u in units if u.op_type == "MatMul" for n in u.nodes]
    channels = outlier_channels(planted, text_feeds(planted, [4, 9]), products)
    result = search_plan(
        planted,
        units,
        _ByUnits(),  # type: ignore[arg-type]
        target=0.95,
        workdir=tmp_path,
        kept=(OUTLIERS, FP32),
        outliers=channels,
    )
    assert result.record["kept"] == OUTLIERS
    assert sum(p == INT8 for p in result.plan.values()) == 2
    kept = {u.name: result.plan[u.name] for u in units if result.plan[u.name] != INT8}
    assert kept and all(
        p == (OUTLIERS if u.op_type == "MatMul" else FP32) for u in units if (p := kept.get(u.name))
    )
    out = tmp_path / "chosen.onnx"
    build_mixed(planted, out, units, result.plan, outliers=channels)
    sides = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMul" and n.name.endswith(SUFFIX)]
    assert len(sides) == sum(len(u.nodes) for u in units if result.plan[u.name] == OUTLIERS)
