"""The OpenVINO backend: the same graphs on a second runtime, chosen by measurement."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.enums import Backend
from recsys_infer.errors import ConfigError, MissingDependencyError
from recsys_infer.runtime import backends
from recsys_infer.runtime.backends import MIN_OVERLAP, choose, least_cosine, overlap_at_10

ORT, OV = Backend.ONNXRUNTIME, Backend.OPENVINO
PRECISIONS = {ORT: "fp32", OV: "fp32 graph in bf16"}


def _work(seconds: float, vectors: np.ndarray):  # type: ignore[no-untyped-def]
    def run() -> np.ndarray:
        time.sleep(seconds)
        return vectors

    return run


def test_auto_takes_the_faster_runtime_only_when_it_agrees() -> None:
    same = np.eye(4, dtype=np.float32)
    faster = choose({ORT: _work(0.02, same), OV: _work(0.005, same)}, least_cosine, gate=0.999,
                    precisions=PRECISIONS)  # fmt: skip
    assert faster.backend is OV and faster.ms["openvino"] < faster.ms["onnxruntime"]
    assert faster.why.startswith("faster") and faster.agreement == 1.0

    slower = choose({ORT: _work(0.005, same), OV: _work(0.02, same)}, least_cosine, gate=0.999,
                    precisions=PRECISIONS)  # fmt: skip
    assert slower.backend is ORT and "not 10% faster" in slower.why

    tie = choose({ORT: _work(0.01, same), OV: _work(0.0095, same)}, least_cosine, gate=0.999,
                 precisions=PRECISIONS)  # fmt: skip
    assert tie.backend is ORT  # within the margin: the reference runtime stays

    bent = same.copy()
    bent[0] = [0.9, 0.1, 0.0, 0.0]
    disagrees = choose({ORT: _work(0.02, same), OV: _work(0.001, bent)}, least_cosine, gate=0.999,
                       precisions=PRECISIONS)  # fmt: skip
    assert disagrees.backend is ORT and "agree" in disagrees.why and disagrees.agreement < 0.999


def test_overlap_at_10_is_the_mean_share_of_each_top_ten() -> None:
    tops = {0: [[str(i) for i in range(10)]], 1: [[str(i) for i in range(5, 15)]]}
    agreement = overlap_at_10(lambda v: tops[int(v[0, 0])])
    assert agreement(np.zeros((1, 1)), np.zeros((1, 1))) == 1.0
    assert agreement(np.ones((1, 1)), np.zeros((1, 1))) == 0.5


def test_without_openvino_auto_keeps_onnxruntime_and_openvino_names_the_extra(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an install without the extra sees
    with Engine.load(tiny_bundle, device="cpu", backend="auto") as engine:
        assert {str(t.backend) for t in engine.backends.values()} == {"onnxruntime"}
        assert all("recsys-infer[openvino]" in t.why for t in engine.backends.values())
    with pytest.raises(MissingDependencyError) as caught:
        Engine.load(tiny_bundle, device="cpu", backend="openvino")
    message = str(caught.value)
    assert "\n" not in message and "pip install 'recsys-infer[openvino]'" in message


def test_a_bad_openvino_precision_is_a_clear_error(tiny_bundle: Path) -> None:
    pytest.importorskip("openvino")
    with pytest.raises(ConfigError, match="bf16, f16, f32"):
        Engine.load(tiny_bundle, device="cpu", backend="openvino", openvino_precision="int4")


@pytest.mark.parametrize("precision", [None, "f32"])
def test_openvino_runs_the_same_graphs_within_the_gate(tiny_bundle: Path, precision: str | None) -> None:
    pytest.importorskip("openvino")
    with (
        Engine.load(tiny_bundle, device="cpu") as onnx,
        Engine.load(tiny_bundle, device="cpu", backend="openvino", openvino_precision=precision) as ov,
    ):
        probe = {"history": list(onnx.item_ids[:2]), "text": "a quiet tent for two"}
        assert {str(t.backend) for t in ov.backends.values()} == {"openvino"}
        texts = [item.text for item in onnx.items(list(onnx.item_ids[:32]))]
        assert least_cosine(ov.encode_items(texts), onnx.encode_items(texts)) > 0.999
        users = [probe, {"text": probe["text"]}, {"history": probe["history"]}]
        assert least_cosine(ov.encode_users(users), onnx.encode_users(users)) > 0.999
        top = {e: [r.item_id for r in e.recommend(**probe, k=10)] for e in (onnx, ov)}
        assert len(set(top[onnx]) & set(top[ov])) / 10 >= MIN_OVERLAP - 0.1
        if precision == "f32":
            assert all(t.precision.endswith("in f32") for t in ov.backends.values())
            np.testing.assert_allclose(ov.encode_items(texts), onnx.encode_items(texts), atol=1e-4)


def test_auto_measures_every_tower_and_says_why(tiny_bundle: Path) -> None:
    pytest.importorskip("openvino")
    with Engine.load(tiny_bundle, device="cpu", backend="auto") as engine:
        assert set(engine.backends) == set(engine.manifest.towers)  # type: ignore[union-attr]
        for tower in engine.backends.values():
            assert set(tower.ms) == {"onnxruntime", "openvino"} and tower.agreement is not None
            assert tower.why and str(tower.ms["openvino"]) in tower.why
            faster = tower.ms["openvino"] <= tower.ms["onnxruntime"] * (1 - backends.MARGIN)
            agrees = tower.agreement >= (backends.MIN_ITEM_COSINE if tower is engine.backends["item"]
                                         else MIN_OVERLAP)  # fmt: skip
            assert (tower.backend is OV) == (faster and agrees)
        assert engine.recommend(text="tent", k=3)


@pytest.mark.parametrize("backend", ["openvino", "auto"])
def test_catalogue_encoding_on_openvino_agrees_with_onnxruntime(tiny_bundle: Path, backend: str) -> None:
    pytest.importorskip("openvino")
    from recsys_infer.runtime.catalog import Catalog
    from recsys_infer.runtime.engine import load_item_tower

    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts[:40]
    reference = load_item_tower(tiny_bundle, threads=2).encode(texts)
    encoder = load_item_tower(tiny_bundle, threads=2, backend=backend)
    if backend == "openvino":
        assert encoder.providers[0].startswith("OpenVINO")
    assert least_cosine(encoder.encode(texts), reference) > backends.MIN_ITEM_COSINE
