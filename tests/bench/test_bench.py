"""The bench harness: its timing primitives, and `recsys-infer bench --quick` on the tiny model
(the JSON's schema and the consistency of its numbers, never their speed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recsys_infer import Engine
from recsys_infer.bench.run import SCHEMA, SCHEMA_VERSION, breakdown
from recsys_infer.bench.timing import interleaved, percentiles
from recsys_infer.cli import app
from recsys_infer.data.readers import write_generic
from tests.conftest import small_sample


def test_percentiles_by_hand() -> None:
    p = percentiles([float(v) for v in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5)
    assert p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5) and p["n"] == 100
    with pytest.raises(ValueError, match="no samples"):
        percentiles([])


def test_rounds_interleave_subjects_within_each_measurement() -> None:
    order: list[str] = []

    def call(tag: str) -> Any:
        return lambda: order.append(tag)

    plans = {s: {m: [call(f"{s}{m}")] for m in ("x", "y")} for s in ("A", "B")}
    samples = interleaved(plans, rounds=2, warmup=0)
    assert order == ["Ax", "Bx", "Ay", "By"] * 2
    assert {len(v) for s in samples.values() for v in s.values()} == {2}


def test_breakdown_splits_time_and_restores_the_engine(tiny_bundle: Path) -> None:
    engine = Engine.load(tiny_bundle, device="cpu", threads=1)
    parts = (engine.user_encoder, engine.store, engine.user_encoder.encoder.tokenizer)  # type: ignore[attr-defined]
    before = engine.recommend(history=[engine.item_ids[0]], k=5)
    calls = [lambda: engine.recommend(text="wireless headphones", k=5)] * 20
    shares = breakdown(engine, calls)
    assert set(shares) == {"tokenize", "graph", "search", "other"}
    assert all(v >= 0 for v in shares.values()) and sum(shares.values()) == pytest.approx(1, abs=0.01)
    assert shares["graph"] > 0 and shares["tokenize"] > 0 and shares["search"] > 0
    assert (engine.user_encoder, engine.store, engine.user_encoder.encoder.tokenizer) == parts  # type: ignore[attr-defined]
    assert engine.recommend(history=[engine.item_ids[0]], k=5) == before


@pytest.fixture(scope="module")
def quick_report(tiny_checkpoint: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recsys_infer.enums import QuantMode, TowerChoice
    from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle

    root = tmp_path_factory.mktemp("bench")
    (root / "data").mkdir()
    write_generic(small_sample(), root / "data")
    int8 = root / "int8"
    quantize_bundle(
        tiny_bundle, int8, QuantizeConfig(mode=QuantMode.DYNAMIC, towers=TowerChoice.BOTH), progress=False
    )
    args = [
        "bench", str(tiny_bundle), str(int8), "--data", str(root / "data"),
        "--reference", str(tiny_checkpoint), "--threads", "1", "--quick",
        "--json", str(root / "bench.json"), "--md", str(root / "bench.md"),
        "--plot", str(root / "bench.png"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root


def test_quick_bench_report_schema_and_consistency(quick_report: Path, tiny_bundle: Path) -> None:
    report = json.loads((quick_report / "bench.json").read_text())
    assert report["schema"] == SCHEMA and report["schema_version"] == SCHEMA_VERSION
    assert report["settings"]["quick"] is True and report["environment"]["threads"] == 1
    for key in ("cpu", "cores", "versions", "providers", "cpu_flags"):
        assert key in report["environment"]
    names = [s["name"] for s in report["subjects"]]
    openvino_peers = ["st-openvino", "st-openvino-int8"] if importlib.util.find_spec("optimum.intel") else []
    peers = ["st-onnx", "st-onnx-int8", *openvino_peers]
    assert names == ["pytorch-fp32", "pytorch-bf16", "bundle", "int8", *peers]
    assert report["reference"]["name"] == "pytorch-fp32"
    by = {s["name"]: s for s in report["subjects"]}
    for s in report["subjects"]:
        assert s["size_mb"] > 0 and s["load_s"] >= 0
        for m, p in s["latency_ms"].items():
            assert 0 < p["p50"] <= p["p95"] <= p["p99"], (s["name"], m)
        assert all(v > 0 for v in s["throughput"].values())
        # every ratio is the reference's p50 over this subject's, from the same report
        ref = by["pytorch-fp32"]["latency_ms"]
        for m, p in s["latency_ms"].items():
            assert s["vs_reference"][f"speedup_{m}"] == pytest.approx(ref[m]["p50"] / p["p50"], rel=0.01)
    ref = by["pytorch-fp32"]
    assert ref["vs_reference"]["speedup_text@64"] == 1.0
    assert ref["quality"]["user_overlap@10"] == 1.0 and ref["quality"]["request_overlap@10"] == 1.0
    # The fp32 ONNX bundle is the reference exported: the same recommendations, nearly always.
    fp32 = by["bundle"]
    assert fp32["quality"]["user_overlap@10"] >= 0.9 and fp32["quality"]["request_overlap@10"] >= 0.9
    assert fp32["quality"]["request_overlap@10_batched"] >= 0.9  # fp32: batching changes nothing much
    assert fp32["manifest_sha256"] and fp32["memory_mb"]["peak_mb"] >= fp32["memory_mb"]["rss_loaded_mb"] > 0
    assert by["int8"]["size_mb"] < fp32["size_mb"]
    for name in ("bundle", "int8", "pytorch-fp32"):
        q = by[name]["quality"]
        assert 0 <= q["recall@10"]["mean"] <= 1 and q["recall@10"]["ci95"][0] <= q["recall@10"]["mean"]
        shares = by[name]["breakdown"]["recommend@request"]
        assert sum(shares.values()) == pytest.approx(1, abs=0.01)
    assert by["bundle"]["quality"]["paired_vs_reference"]["recall@10"]["b"] == "pytorch-fp32"
    for peer in peers:
        assert by[peer]["kind"] == "peer" and 0 < by[peer]["quality"]["request_overlap@10_vs_own_fp32"] <= 1
    # the plain peer is our encoder in fp32 ONNX: its neighbours are its PyTorch encoder's
    assert by["st-onnx"]["quality"]["request_overlap@10_vs_own_fp32"] >= 0.9
    hnsw = report["hnsw"]
    assert list(hnsw) == ["bundle"]  # int8 kept the same item vectors: swept once
    sweep = hnsw["bundle"]["sweep"]
    assert [p["ef"] for p in sweep] == [10, 40] and all(
        0 < p["recall@10"] <= 1 and p["qps"] > 0 for p in sweep
    )
    assert sweep[-1]["recall@10"] >= sweep[0]["recall@10"]
    assert report["inputs"]["fixed_tokens"] == {
        "32": 32,
        "64": 48,
        "128": 48,
    }  # the tiny model's 48-token cap


def test_quick_bench_writes_a_table_and_a_plot(quick_report: Path) -> None:
    table = (quick_report / "bench.md").read_text()
    for name in ("pytorch-fp32", "pytorch-bf16", "| bundle |", "| int8 |", "st-onnx-int8", "| ef |"):
        assert name in table
    assert (quick_report / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_runs_a_bundle_under_each_runtime_asked_for(
    tiny_checkpoint: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    (tmp_path / "data").mkdir()
    write_generic(small_sample(), tmp_path / "data")
    result = CliRunner().invoke(
        app, ["bench", str(tiny_bundle), "--data", str(tmp_path / "data"),
              "--reference", str(tiny_checkpoint), "--backends", "onnxruntime,openvino",
              "--threads", "1", "--quick", "--no-peers",
              "--json", str(tmp_path / "b.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    by = {s["name"]: s for s in json.loads((tmp_path / "b.json").read_text())["subjects"]}
    assert {"bundle", "bundle@openvino"} <= set(by)
    assert {t["backend"] for t in by["bundle@openvino"]["extra"]["backends"].values()} == {"openvino"}
    assert {t["backend"] for t in by["bundle"]["extra"]["backends"].values()} == {"onnxruntime"}
    # measured after its catalogue was re-encoded on OpenVINO: the same recommendations, nearly
    quality = by["bundle@openvino"]["quality"]
    assert quality["user_overlap@10"] >= 0.8 and quality["request_overlap@10"] >= 0.8


def test_bench_refuses_data_the_bundle_was_not_built_from(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "items.csv").write_text("item_id,title\nx1,a lamp\nx2,a chair\nx3,a desk\n")
    (folder / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u,x{i % 3 + 1},{i}\n" for i in range(6))
    )
    result = CliRunner().invoke(
        app, ["bench", str(tiny_bundle), "--data", str(folder), "--json", str(tmp_path / "b.json"),
              "--quick", "--no-peers"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "are not in bundle's catalogue" in result.output and not (tmp_path / "b.json").exists()


def test_bench_reads_its_data_from_the_bundle_and_measures_one_device() -> None:
    from recsys_infer.bench import BenchConfig
    from recsys_infer.data.readers import data_spec
    from recsys_infer.errors import ConfigError

    assert (
        data_spec("builtin:sample?version=1&items=3000&users=1000&seed=7")
        == "sample:items=3000,users=1000,seed=7"
    )
    assert data_spec("/data/ml-100k") == "/data/ml-100k"
    assert BenchConfig().device == BenchConfig(device="auto").device == "cpu"  # auto names the one it is
    with pytest.raises(ConfigError, match="unknown device"):
        BenchConfig(device="gpu")
    assert BenchConfig(device="cuda:1").device == "cuda:1"
