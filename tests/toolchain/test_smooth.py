"""quantize --smooth: activation smoothing of the request graph before dynamic int8 (the same
function in fp32, its ranges moved into the weights), its strength's search, and the bundles it
writes, on the tiny models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from recsys_infer import Engine
from recsys_infer.errors import ConfigError
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.schema import encode
from recsys_infer.toolchain.compress.graphs import graph_units
from recsys_infer.toolchain.compress.smooth import (
    ALPHAS,
    SUFFIX,
    activation_ranges,
    smooth_graph,
    smooth_search,
)
from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle
from tests.conftest import request_graph, text_feeds


def _run(graph: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in f.items() if k in names})[0] for f in feeds])


def test_ranges_cover_every_smoothed_input(seq_optimized: Path) -> None:
    graph = request_graph(seq_optimized)
    model = onnx.load(str(graph))
    roles = {u.name.split(".")[0] for u in graph_units(model)}
    assert {"attention", "ffn-in", "ffn-out"} <= roles
    few = activation_ranges(graph, text_feeds(graph, [3, 5]))
    more = activation_ranges(graph, text_feeds(graph, [3, 5]) + text_feeds(graph, [9, 4], seed=1))
    assert set(few) == set(more) and len(few) >= 3
    for name, top in few.items():
        assert top.ndim == 1 and (top > 0).all(), name
        assert (more[name] >= top).all(), "a range over more texts can only grow"
    with pytest.raises(ConfigError, match="calibration text"):
        activation_ranges(graph, [])


def test_smoothing_keeps_the_function_and_moves_the_range_into_the_weights(
    seq_optimized: Path, tmp_path: Path
) -> None:
    graph = request_graph(seq_optimized)
    feeds = text_feeds(graph, [4, 7, 11])
    ranges = activation_ranges(graph, feeds)
    out = tmp_path / "smoothed.onnx"
    record = smooth_graph(graph, out, ranges, 0.7)
    before, after = onnx.load(str(graph)), onnx.load(str(out))
    muls = [n for n in after.graph.node if n.op_type == "Mul" and n.name.endswith(SUFFIX)]
    assert record["smoothed"] == len(muls) > 0
    units = {n: u.name.split(".")[0] for u in graph_units(before) for n in u.nodes}
    readers = {n.input[0]: n for n in after.graph.node if n.name in units}
    for mul in muls:
        node = readers[mul.output[0]]
        assert units[node.name] in ("attention", "ffn-in", "ffn-out")
        # s_k = max|X_k|^alpha / max|W_k|^(1 - alpha): rows of W times s, X times 1 / s.
        old = numpy_helper.to_array(next(t for t in before.graph.initializer if t.name == node.input[1]))
        new = numpy_helper.to_array(next(t for t in after.graph.initializer if t.name == node.input[1]))
        inverse = numpy_helper.to_array(next(t for t in after.graph.initializer if t.name == mul.input[1]))
        s = ranges[mul.input[0]] ** 0.7 / np.abs(old).max(axis=1) ** 0.3
        np.testing.assert_allclose(1 / inverse, s, rtol=1e-5)
        np.testing.assert_allclose(new, old * s[:, None], rtol=1e-5)
    # The graph still computes the same vectors in fp32, on texts the ranges never saw.
    unseen = text_feeds(graph, [5, 9], seed=3)
    np.testing.assert_allclose(_run(out, unseen), _run(graph, unseen), atol=2e-5)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        smooth_graph(graph, tmp_path / "x.onnx", ranges, 1.0)


def test_the_search_keeps_the_strength_closest_to_the_reference(seq_optimized: Path, tmp_path: Path) -> None:
    graph = request_graph(seq_optimized)
    ranges = activation_ranges(graph, text_feeds(graph, [4, 6]))
    sources: list[Path] = []

    def quantize(src: Path, dst: Path) -> None:
        sources.append(src)
        dst.write_bytes(src.read_bytes())

    def scripted(best: float | None) -> Callable[[Path], dict[str, float]]:
        """Candidates come in the order None, *ALPHAS; ``best`` is the closest."""
        measured: list[float | None] = []

        def measure(path: Path) -> dict[str, float]:
            alpha = [None, *ALPHAS][len(measured)]
            measured.append(alpha)
            smoothed = any(n.name.endswith(SUFFIX) for n in onnx.load(str(path)).graph.node)
            assert smoothed == (alpha is not None)
            return {"overlap@10": 0.9, "mean_cosine": 0.99 if alpha == best else 0.98, "min_cosine": 0.9}

        return measure

    alpha, record = smooth_search(graph, ranges, scripted(0.7), quantize, tmp_path)
    assert alpha == 0.7 and record["chosen_alpha"] == 0.7
    assert [t["alpha"] for t in record["tried"]] == [None, *ALPHAS]
    assert sources[0] == graph, "no smoothing is measured too"
    alpha, _ = smooth_search(graph, ranges, scripted(None), quantize, tmp_path)
    assert alpha is None
    assert not list(tmp_path.glob("smooth-*")), "candidates are removed"


def test_dynamic_int8_with_smoothing_writes_a_measured_bundle(seq_optimized: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoothed"
    config = QuantizeConfig(mode="dynamic", towers="user", smooth="auto")
    result = quantize_bundle(seq_optimized, out, config, progress=False)
    manifest = read_manifest(out)
    record = encode(manifest)["compression"][-1]
    assert record["smooth"] == "auto"
    smoothing = record["graphs"][manifest.towers["request"].file]["smoothing"]
    assert [t["alpha"] for t in smoothing["tried"]] == [None, *ALPHAS]
    best = max(smoothing["tried"], key=lambda t: t["mean_cosine"])
    assert smoothing["alpha"] == best["alpha"]
    nodes = onnx.load(str(out / manifest.towers["request"].file)).graph.node
    ops = Counter(n.op_type for n in nodes)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] > 0 and ops["QAttention"] > 0
    smoothed = sum(n.name.endswith(SUFFIX) for n in nodes)
    assert (smoothed > 0) == (smoothing["alpha"] is not None)
    # The bundle's own measurement is the search's choice, one request per call.
    request = result.fidelity["queries"]["request"]
    assert request["mean_cosine"] == pytest.approx(best["mean_cosine"], abs=1e-6)
    assert Engine.load(out, device="cpu").recommend(text="something to read", k=3)

    fixed = tmp_path / "fixed"
    config = QuantizeConfig(mode="dynamic", towers="user", smooth="0.6")
    quantize_bundle(seq_optimized, fixed, config, progress=False)
    manifest = read_manifest(fixed)
    smoothing = encode(manifest)["compression"][-1]["graphs"][manifest.towers["request"].file]["smoothing"]
    assert smoothing["alpha"] == 0.6 and "tried" not in smoothing


def test_auto_mode_smooths_by_default(seq_optimized: Path, tmp_path: Path) -> None:
    assert QuantizeConfig(mode="auto", towers="user").smooth == "auto"
    assert QuantizeConfig(mode="dynamic").smooth == "off"
    out = tmp_path / "auto"
    config = QuantizeConfig(mode="auto", towers="user", target_overlap=0.9)
    quantize_bundle(seq_optimized, out, config, progress=False)
    manifest = read_manifest(out)
    graph = encode(manifest)["compression"][-1]["graphs"][manifest.towers["request"].file]
    assert len(graph["smoothing"]["tried"]) == len(ALPHAS) + 1
    assert graph["search"]["chosen"]["overlap@10"] >= 0.9
    unsmoothed = tmp_path / "plain"
    config = QuantizeConfig(mode="auto", towers="user", target_overlap=0.9, smooth="off")
    quantize_bundle(seq_optimized, unsmoothed, config, progress=False)
    manifest = read_manifest(unsmoothed)
    assert "smoothing" not in encode(manifest)["compression"][-1]["graphs"][manifest.towers["request"].file]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "static", "towers": "user", "smooth": "auto"}, "dynamic int8"),
        ({"mode": "dynamic", "towers": "both", "smooth": "0.7"}, "--tower user"),
        ({"mode": "dynamic", "towers": "user", "smooth": "1.5"}, "off, auto or a strength"),
        ({"mode": "dynamic", "towers": "user", "smooth": "strong"}, "off, auto or a strength"),
    ],
)
def test_smoothing_options_are_checked(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantizeConfig(**options)  # type: ignore[arg-type]


def test_the_item_tower_is_smoothed_on_the_catalog(seq_optimized: Path, tmp_path: Path) -> None:
    out = tmp_path / "item"
    config = QuantizeConfig(mode="dynamic", towers="item", smooth="auto", reindex=True)
    quantize_bundle(seq_optimized, out, config, progress=False)
    manifest = read_manifest(out)
    record = encode(manifest)["compression"][-1]
    graph = manifest.towers["item"].file
    assert manifest.towers["request"].file != graph, "the request path keeps its own graph"
    smoothing = record["graphs"][graph]["smoothing"]
    assert "catalogue texts" in smoothing["measured_on"]
    assert [t["alpha"] for t in smoothing["tried"]] == [None, *ALPHAS]
    assert smoothing["alpha"] == max(smoothing["tried"], key=lambda t: t["mean_cosine"])["alpha"]
    nodes = onnx.load(str(out / graph)).graph.node
    assert (sum(n.name.endswith(SUFFIX) for n in nodes) > 0) == (smoothing["alpha"] is not None)
    assert any(n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger") for n in nodes)
    assert record["reindexed"] is True
    assert Engine.load(out, device="cpu").recommend(text="something to read", k=3)
