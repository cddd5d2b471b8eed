"""optimize and quantize on the tiny model: the graphs really change, the input never does, the
cost is measured against the reference, and the fidelity gate refuses what it should."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from recsys_infer import Engine
from recsys_infer.cli import app
from recsys_infer.enums import Precision
from recsys_infer.errors import BundleError, DeviceUnavailableError, FidelityError
from recsys_infer.runtime.bundle import read_manifest, sha256_file
from recsys_infer.runtime.schema import encode
from recsys_infer.toolchain.compress.steps import (
    QuantizeConfig,
    optimize_bundle,
    probe_queries,
    quantize_bundle,
)
from recsys_infer.toolchain.export.fidelity import served_vectors


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _fingerprint(bundle: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(bundle.iterdir())}


@pytest.fixture(scope="module")
def optimized(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("opt") / "bundle"
    optimize_bundle(tiny_bundle, out, progress=False)
    return out


def test_optimize_fuses_and_keeps_outputs(tiny_bundle: Path, optimized: Path) -> None:
    manifest = read_manifest(optimized)
    step = encode(manifest)["compression"][0]
    assert step["step"] == "optimize"
    for name, graph in step["graphs"].items():
        ops = _ops(optimized / name)
        assert ops["Attention"] == 2 and ops["LayerNormalization"] == 4, ops
        assert not ops.keys() & {"SkipLayerNormalization", "BiasGelu"}, ops  # slower on a CPU
        assert graph["nodes_after"] < graph["nodes_before"]
    fidelity = encode(manifest)["fidelity"]
    assert fidelity["reference"] == str(tiny_bundle.resolve())
    assert fidelity["overlap@10"] >= 0.99
    assert fidelity["queries"]["user"]["min_cosine"] > 0.9999
    assert fidelity["item"]["min_cosine"] > 0.9999
    assert encode(manifest)["reference"]["manifest_sha256"] == sha256_file(tiny_bundle / "manifest.json")


def test_cpu_sessions_leave_the_residual_add_unfused(optimized: Path, tmp_path: Path) -> None:
    """ONNX Runtime would fold each residual Add into a SkipLayerNormalization at load, whose CPU
    kernel is the slower; CPU sessions switch that optimiser off, GPU sessions keep it."""
    import onnxruntime as ort

    from recsys_infer.runtime.providers import session_options

    graph = next(p for p in optimized.glob("*.onnx") if "item" in p.name)
    for cpu in (True, False):
        options = session_options(threads=1, cpu=cpu)
        options.optimized_model_filepath = str(tmp_path / f"loaded-{cpu}.onnx")
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        fused = _ops(tmp_path / f"loaded-{cpu}.onnx")["SkipLayerNormalization"]
        assert fused == (0 if cpu else 4), (cpu, fused)


def test_dynamic_int8_user_tower(tiny_bundle: Path, optimized: Path, tmp_path: Path) -> None:
    before = _fingerprint(optimized)
    out = tmp_path / "int8"
    result = quantize_bundle(optimized, out, QuantizeConfig(mode="dynamic", towers="user"), progress=False)
    assert _fingerprint(optimized) == before, "the input bundle must not change"
    manifest = read_manifest(out)
    assert manifest.user.precision is Precision.INT8 and manifest.item.precision is Precision.FP32
    assert manifest.item.file == read_manifest(optimized).item.file
    assert sha256_file(out / manifest.item.file) == sha256_file(optimized / manifest.item.file)
    ops = _ops(out / manifest.user.file)
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulInteger"] + ops["QAttention"] > 0, ops
    # Measured against the uncompressed bundle the chain started from, not the optimised input.
    assert result.fidelity["reference"] == str(tiny_bundle.resolve())
    assert [s["step"] for s in encode(manifest)["compression"]] == ["optimize", "quantize"]
    assert 0.0 < result.fidelity["overlap@10"] <= 1.0
    assert result.fidelity["item"]["min_cosine"] > 0.9999  # the item tower was not touched
    assert 0.0 < result.fidelity["queries"]["request"]["overlap@10_batched"] <= 1.0
    engine = Engine.load(out, device="cpu")
    assert len(engine.recommend(history=list(engine.item_ids[:3]), k=5)) == 5
    # Why fidelity encodes one query per run: dynamic int8 scales activations over the batch, so
    # a request's vector among others is not the one it gets alone.
    _, requests = probe_queries(engine, limit=64)
    alone, batched = served_vectors(engine, requests), engine.encode_users(requests)
    assert alone.shape == batched.shape and not np.allclose(alone, batched, rtol=0, atol=1e-6)
    assert np.allclose(alone[:1], engine.encode_users(requests[:1]))
    with pytest.raises(DeviceUnavailableError):
        Engine.load(out, device="cuda")


def test_keep_fp32_leaves_named_matmuls(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    config = QuantizeConfig(mode="dynamic", towers="user", keep_fp32=("ffn-out",))
    result = quantize_bundle(tiny_bundle, out, config, progress=False)
    kept = next(iter(result.step["graphs"].values()))["kept_fp32"]
    assert len(kept) == 2 and all("/output/dense/" in k for k in kept)
    graph = onnx.load(str(out / read_manifest(out).user.file)).graph
    matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(kept) <= matmuls


def test_static_int8_has_qdq_nodes(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "qdq"
    config = QuantizeConfig(mode="static", towers="both", calibration_size=32)
    result = quantize_bundle(tiny_bundle, out, config, progress=False)
    manifest = read_manifest(out)
    for tower in (manifest.user, manifest.item):
        ops = _ops(out / tower.file)
        assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0, ops
        assert tower.precision is Precision.INT8
    assert result.step["calibration"] == "minmax" and result.step["calibration_size"] == 32
    # Both towers changed and the index was kept: stored item vectors are the reference's.
    assert np.array_equal(np.load(out / "item_vectors.npy"), np.load(tiny_bundle / "item_vectors.npy"))
    assert "reference item tower" in encode(manifest)["index"]["built_with"]


def test_fp16_graph_for_cuda(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    result = quantize_bundle(tiny_bundle, out, QuantizeConfig(mode="fp16", towers="user"), progress=False)
    manifest = read_manifest(out)
    assert manifest.user.precision is Precision.FP16
    graph = onnx.load(str(out / manifest.user.file)).graph
    types = Counter(t.data_type for t in graph.initializer)
    assert types[onnx.TensorProto.FLOAT16] > types[onnx.TensorProto.FLOAT], types
    assert result.fidelity["queries"]["user"]["mean_cosine"] > 0.99


def test_reindex_rebuilds_the_index_with_the_new_item_tower(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "reindexed"
    config = QuantizeConfig(mode="dynamic", towers="item", reindex=True)
    result = quantize_bundle(tiny_bundle, out, config, progress=False)
    assert result.step["reindexed"] is True
    new, old = np.load(out / "item_vectors.npy"), np.load(tiny_bundle / "item_vectors.npy")
    assert new.shape == old.shape and not np.array_equal(new, old)
    assert "compressed item tower" in encode(read_manifest(out))["index"]["built_with"]
    engine = Engine.load(out, device="cpu")
    texts = [engine.item(i).text for i in engine.item_ids[:5]]
    # Dynamic int8 scales activations per batch tensor, so batch makeup moves the last digits.
    np.testing.assert_allclose(engine.encode_items(texts), new[:5], atol=1e-3)


def test_fidelity_gate_refuses_and_leaves_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "gated"
    config = QuantizeConfig(mode="static", towers="both", calibration_size=8, max_overlap_drop=0.0)
    with pytest.raises(FidelityError, match="No bundle was written"):
        quantize_bundle(tiny_bundle, out, config, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_output_must_differ_from_input(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="never modifies its input"):
        optimize_bundle(tiny_bundle, tiny_bundle, overwrite=True, progress=False)


def test_sequence_bundle_splits_the_shared_request_graph(
    seq_bundle_for_compress: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seq-int8"
    config = QuantizeConfig(mode="dynamic", towers="user")
    quantize_bundle(seq_bundle_for_compress, out, config, progress=False)
    manifest = read_manifest(out)
    assert manifest.towers["item"].file == "item_tower.onnx"
    assert manifest.towers["request"].file == "request_tower.int8.onnx"
    assert manifest.user.file == "user_sequence.int8.onnx"
    assert manifest.towers["request"].precision is Precision.INT8
    engine = Engine.load(out, device="cpu")
    assert engine.recommend(text="something to read", k=3)


def test_tensors_two_graphs_hold_alike_are_stored_once(seq_bundle_for_compress: Path, tmp_path: Path) -> None:
    """The int8 request graph keeps the item graph's embedding tables as they were: stored once,
    read by both as external data, with the same answers (the tiny model's tables are small, so
    the threshold is lowered here; on MiniLM the word embeddings alone are 47 MB)."""
    from recsys_infer.runtime.providers import create_session
    from recsys_infer.toolchain.compress.share import SHARED, share_weights

    out = tmp_path / "seq-int8"
    quantize_bundle(
        seq_bundle_for_compress, out, QuantizeConfig(mode="dynamic", towers="user"), progress=False
    )
    folder = tmp_path / "graphs"
    folder.mkdir()
    graphs = ["item_tower.onnx", "request_tower.int8.onnx"]
    for name in graphs:
        (folder / name).write_bytes((out / name).read_bytes())
    before = sum((folder / name).stat().st_size for name in graphs)
    feed = {
        "input_ids": np.array([[2, 7, 9, 3]], dtype=np.int64),
        "attention_mask": np.ones((1, 4), np.int64),
    }
    expected = {name: create_session(folder / name, "cpu").run(None, feed)[0] for name in graphs}

    shared = share_weights(folder, graphs, min_bytes=1024)
    assert shared["file"] == SHARED and shared["tensors"] >= 1 and shared["bytes_saved"] > 0
    after = sum((folder / name).stat().st_size for name in [*graphs, SHARED])
    assert after < before
    for name in graphs:
        np.testing.assert_array_equal(create_session(folder / name, "cpu").run(None, feed)[0], expected[name])
    assert share_weights(folder, graphs, min_bytes=1024) == shared  # run again: the same files
    assert share_weights(folder, graphs[:1], min_bytes=1024)["file"] is None  # one graph: nothing to share
    assert not (folder / SHARED).exists()
    np.testing.assert_array_equal(
        create_session(folder / graphs[0], "cpu").run(None, feed)[0], expected[graphs[0]]
    )


def test_cli_quantize_prints_the_cost(optimized: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    report = tmp_path / "q.json"
    result = CliRunner().invoke(
        app, ["quantize", str(optimized), "--out", str(out), "--tower", "user", "--json", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert "user vs reference: overlap@10" in result.output
    payload = json.loads(report.read_text())
    assert payload["step"]["mode"] == "dynamic"
    assert payload["fidelity"]["overlap@10"] == encode(read_manifest(out))["fidelity"]["overlap@10"]


def test_blockwise_int8_is_closer_to_fp32_than_dynamic(optimized: Path, tmp_path: Path) -> None:
    """Blockwise int8 really holds MatMulNBits nodes with 8-bit weights, and its vectors stay
    closer to the reference than dynamic int8's, whose activations share one scale per tensor."""

    out = tmp_path / "b8"
    result = quantize_bundle(
        optimized, out, QuantizeConfig(mode="blockwise", towers="user", block_size=16), progress=False
    )
    manifest = read_manifest(out)
    assert manifest.user.precision is Precision.INT8 and manifest.user.file.endswith(".b8.onnx")
    graph = onnx.load(str(out / manifest.user.file)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and len(nbits) == next(iter(result.step["graphs"].values()))["blockwise_matmuls"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 16 and attrs["accuracy_level"] == 4
    assert result.step["block_size"] == 16
    dynamic = quantize_bundle(optimized, tmp_path / "dyn", QuantizeConfig(towers="user"), progress=False)
    reference = Engine.load(dynamic.fidelity["reference"], device="cpu")
    users, _ = probe_queries(reference)
    expected = reference.encode_users(users)

    def error(bundle: Path) -> float:  # mean |1 - cos|, unrounded: the tiny model's is small
        vectors = Engine.load(bundle, device="cpu").encode_users(users)
        return float(np.mean(np.abs(1 - np.sum(vectors * expected, axis=1))))

    assert 0 < error(out) < error(tmp_path / "dyn")
    engine = Engine.load(out, device="cpu")
    assert len(engine.recommend(history=list(engine.item_ids[:3]), k=5)) == 5
    with pytest.raises(ValueError, match="power of two"):
        QuantizeConfig(mode="blockwise", block_size=48)


def test_the_gate_watches_requests_as_well_as_users() -> None:
    """A sequence bundle's requests can fare far worse than its history users; the gate must
    refuse on the worse of the two and say which it was."""
    from recsys_infer.toolchain.compress.steps import check_gate

    fidelity = {"queries": {"user": {"overlap@10": 0.98}, "request": {"overlap@10": 0.79}}}
    check_gate(fidelity, None, "quantize lowered", "")
    check_gate(fidelity, 0.25, "quantize lowered", "")
    with pytest.raises(FidelityError, match=r"request overlap@10 with the reference to 0\.7900"):
        check_gate(fidelity, 0.05, "quantize lowered", "Compress less.")


def test_transforms_leave_the_working_directory_alone(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's tools keep their scratch files to themselves, and no step changes the
    process's working directory (a server thread may be resolving relative paths meanwhile)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    seen: list[str] = []
    real_chdir = os.chdir
    monkeypatch.setattr(os, "chdir", lambda p: (seen.append(str(p)), real_chdir(p)))
    optimized = optimize_bundle(tiny_bundle, tmp_path / "opt", progress=False).bundle
    for mode in ("dynamic", "static", "blockwise"):
        quantize_bundle(
            optimized if mode != "static" else tiny_bundle,
            tmp_path / mode,
            QuantizeConfig(mode=mode, towers="user", calibration_size=16),
            progress=False,
        )
    assert seen == [] and list(cwd.iterdir()) == [] and Path.cwd() == cwd


def test_keep_fp32_head_keeps_the_heads_gemms(seq_bundle_for_compress: Path, tmp_path: Path) -> None:
    """ONNX Runtime's quantizer renames a Gemm before it reads the exclusions; the trained head
    (Gemm nodes) must still stay fp32 when asked."""
    out = tmp_path / "int8-head"
    config = QuantizeConfig(mode="dynamic", towers="user", keep_fp32=("head",))
    quantize_bundle(seq_bundle_for_compress, out, config, progress=False)
    graph = onnx.load(str(out / read_manifest(out).towers["request"].file)).graph
    head = [
        n
        for n in graph.node
        if n.name.startswith("/head/") and ("MatMul" in n.op_type or n.op_type == "Gemm")
    ]
    assert head and all(n.op_type in ("MatMul", "Gemm") for n in head), [(n.op_type, n.name) for n in head]
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)


def test_static_int8_calibrates_a_two_space_sequence_bundle(
    seq_bundle_for_compress: Path, tmp_path: Path
) -> None:
    """The history graph reads the trained block of the stored two-space vectors, and so must its
    calibration feeds (they were the whole joined vectors: twice the width the graph takes)."""
    assert read_manifest(seq_bundle_for_compress).fusion is not None
    out = tmp_path / "seq-qdq"
    config = QuantizeConfig(mode="static", towers="user", calibration_size=16)
    quantize_bundle(seq_bundle_for_compress, out, config, progress=False)
    assert _ops(out / read_manifest(out).user.file)["QuantizeLinear"] > 0
