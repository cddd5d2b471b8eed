"""The engine: composition, query rules, ranking equal to brute force, devices."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from recsys_infer import Engine, Query
from recsys_infer.enums import Device, Precision, Spin
from recsys_infer.errors import (
    ConfigError,
    DeviceUnavailableError,
    MissingDependencyError,
    QueryError,
    UnknownItemError,
)
from recsys_infer.ranking import recall_at_k
from recsys_infer.runtime import providers
from recsys_infer.runtime.catalog import Catalog, Item
from recsys_infer.runtime.index import ExactIndex
from recsys_infer.runtime.manifest import SeenSpec
from recsys_infer.runtime.store import LocalItems
from recsys_infer.runtime.userinput import UserInputFormat
from recsys_infer.runtime.users import TextUserEncoder

# -- user input rendering ---------------------------------------------------------------------------


def test_user_input_most_recent_first_with_request() -> None:
    fmt = UserInputFormat(max_history=2, item_separator=" ; ", request_separator=" || ")
    assert fmt.render(["old", "mid", "new"]) == "new ; mid"
    assert fmt.render(["a"], "  cozy mysteries ") == "cozy mysteries || a"
    assert fmt.render([], "just text") == "just text"
    assert UserInputFormat.from_dict(fmt.to_dict()) == fmt
    with pytest.raises(ValueError):
        UserInputFormat(max_history=0)


# -- an engine of hand-made parts -------------------------------------------------------------------


class KeywordEncoder:
    """Encodes a text as the normalised counts of a few keywords (a fake tower)."""

    words = ("tent", "stove", "novel", "kettle")

    @property
    def dim(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        # Distinct small offsets per keyword keep every score distinct (no ties to break).
        counts = np.array(
            [[t.lower().count(w) + 0.01 * (j + 1) for j, w in enumerate(self.words)] for t in texts],
            dtype=np.float32,
        )
        return counts / np.linalg.norm(counts, axis=1, keepdims=True)


@pytest.fixture
def handmade() -> Engine:
    catalog = Catalog(
        [
            Item("t1", "tent", {"category": "camping"}),
            Item("t2", "tent tent stove"),
            Item("s1", "stove"),
            Item("n1", "novel"),
            Item("k1", "kettle"),
        ]
    )
    encoder = KeywordEncoder()
    store = LocalItems(index=ExactIndex(encoder.encode(catalog.texts)), catalog=catalog, item_ids=catalog.ids)
    return Engine(
        user_encoder=TextUserEncoder(encoder, store, UserInputFormat()), item_encoder=encoder, store=store
    )


def test_recommend_by_text_and_history(handmade: Engine) -> None:
    recs = handmade.recommend(text="tent", k=2)
    assert [r.item_id for r in recs] == ["t1", "t2"]
    assert recs[0].score == pytest.approx(1.0, abs=1e-5)
    assert recs[0].text == "tent" and recs[0].attributes["category"] == "camping"
    # History items are excluded by default and allowed on request.
    assert [r.item_id for r in handmade.recommend(history=["t1"], k=2)] == ["t2", "k1"]
    assert [r.item_id for r in handmade.recommend(history=["t1"], k=1, exclude_seen=False)] == ["t1"]
    # History and text combine.
    assert handmade.user_text(Query(history=("n1", "t1"), text="stove")) == "stove || tent ; novel"


@pytest.mark.parametrize("penalty", [0.05, 0.3, 2.0])
def test_history_items_allowed_back_compete_less_the_seen_penalty(handmade: Engine, penalty: float) -> None:
    engine = Engine(
        user_encoder=handmade.user_encoder, item_encoder=handmade.item_encoder, store=handmade.store,
        seen=SeenSpec(penalty=penalty, with_request=penalty),
    )  # fmt: skip
    vectors = handmade.item_encoder.encode(handmade.store.catalog.texts)
    for history, text in [(["t1"], "tent"), (["t1", "s1"], "tent stove"), (["n1", "k1", "t2"], None)]:
        query = engine.encode_users([Query(history, text)])[0]
        scores = {
            item.item_id: float(v @ query) for item, v in zip(handmade.store.catalog, vectors, strict=True)
        }
        expected = sorted(
            ((i, s - penalty if i in history else s) for i, s in scores.items()), key=lambda p: -p[1]
        )[:3]
        got = engine.recommend(history=history, text=text, k=3, exclude_seen=False)
        assert [r.item_id for r in got] == [i for i, _ in expected]
        assert [r.score for r in got] == pytest.approx([s for _, s in expected], abs=1e-5)
        # Excluding history items is unchanged by the penalty.
        kept = [r.item_id for r in engine.recommend(history=history, text=text, k=2)]
        assert kept == [r.item_id for r in handmade.recommend(history=history, text=text, k=2)]
    # A small penalty still lets an exact match through; the largest never does.
    top = engine.recommend(history=["t1"], text="tent", k=1, exclude_seen=False)[0].item_id
    assert top == ("t1" if penalty < 0.1 else "t2")
    # A history sent with a request has its own penalty.
    alone = Engine(
        user_encoder=handmade.user_encoder, item_encoder=handmade.item_encoder, store=handmade.store,
        seen=SeenSpec(penalty=penalty, with_request=0.0),
    )  # fmt: skip
    assert alone.recommend(history=["t1"], text="tent", k=1, exclude_seen=False)[0].item_id == "t1"


def test_fewer_results_when_history_covers_the_catalog(handmade: Engine) -> None:
    recs = handmade.recommend(history=["t1", "t2", "s1", "n1"], k=5)
    assert [r.item_id for r in recs] == ["k1"]


def test_batch_equals_single_requests(handmade: Engine) -> None:
    requests = [{"history": ["t1"]}, {"text": "novel"}, Query(history=("k1",), text="stove")]
    batch = handmade.recommend_batch(requests, k=3)
    singles = [
        handmade.recommend(history=["t1"], k=3),
        handmade.recommend(text="novel", k=3),
        handmade.recommend(history=["k1"], text="stove", k=3),
    ]
    assert [[r.item_id for r in recs] for recs in batch] == [[r.item_id for r in recs] for recs in singles]
    for got, want in zip(batch, singles, strict=True):
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-6)
    assert handmade.recommend_batch([], k=3) == []


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda e: e.recommend(k=3), QueryError, "needs a history, a text request, or both"),
        (lambda e: e.recommend(text="   ", k=3), QueryError, "both were empty"),
        (lambda e: e.recommend(history="t1", k=3), QueryError, "list of item ids"),
        (lambda e: e.recommend(history=[1], k=3), QueryError, "non-empty strings"),
        (lambda e: e.recommend(text="x", k=0), QueryError, "positive integer"),
        (lambda e: e.recommend(text="x", k=True), QueryError, "positive integer"),
        (lambda e: e.recommend(text="x", k=6), QueryError, "larger than the catalogue"),
        (lambda e: e.recommend(history=["t1", "nope"], k=1), UnknownItemError, "'nope'"),
        (lambda e: e.recommend_batch({"text": "x"}, k=1), QueryError, "takes a list"),
        (lambda e: e.recommend_batch([{"txt": "x"}], k=1), QueryError, "unknown request field"),
        (lambda e: e.encode_items("tent"), QueryError, "list of texts"),
    ],
)
def test_bad_queries_are_clear(handmade: Engine, call, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        call(handmade)


def test_unknown_ids_are_listed(handmade: Engine) -> None:
    with pytest.raises(UnknownItemError) as info:
        handmade.recommend(history=["x1", "t1", "x2"], k=1)
    assert info.value.unknown == ["x1", "x2"]
    assert isinstance(info.value, ValueError)


# -- an engine loaded from a real (tiny) bundle -----------------------------------------------------


def brute_force(engine: Engine, vectors: np.ndarray, query: Query, k: int) -> list[str]:
    scores = vectors @ engine.encode_users([query])[0]
    order = np.argsort(-scores, kind="stable")
    ids = [engine.item_ids[i] for i in order if engine.item_ids[i] not in set(query.history)]
    return ids[:k]


def test_engine_equals_numpy_brute_force(tiny_bundle: Path) -> None:
    exact = Engine.load(tiny_bundle, device="cpu", exact=True)
    hnsw = Engine.load(tiny_bundle, device="cpu")
    vectors = np.load(tiny_bundle / "item_vectors.npy")
    import json

    probe = json.loads((tiny_bundle / "probe.json").read_text())
    queries = [Query(history=tuple(h)) for h in probe["histories"][:30]] + [Query(text="camping tent")]
    approx_lists, exact_lists = [], []
    for q in queries:
        expected = brute_force(exact, vectors, q, 10)
        got = [r.item_id for r in exact.recommend(history=q.history, text=q.text, k=10)]
        assert got == expected
        exact_lists.append([exact.item_ids.index(i) for i in expected])
        approx_lists.append(
            [hnsw.item_ids.index(r.item_id) for r in hnsw.recommend(history=q.history, text=q.text, k=10)]
        )
    assert recall_at_k(np.array(approx_lists), np.array(exact_lists)) >= 0.9


def test_encode_shapes_and_unit_norm(tiny_bundle: Path) -> None:
    engine = Engine.load(tiny_bundle, device="cpu")
    items = engine.encode_items(["red tent", "a kettle for tea", "x"])
    users = engine.encode_users([{"text": "tent"}, {"history": [engine.item_ids[0]]}])
    assert items.dtype == users.dtype == np.float32
    assert items.shape == (3, engine.dim) and users.shape == (2, engine.dim)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)
    # The stored catalogue vectors are what the item tower computes.
    stored = np.load(tiny_bundle / "item_vectors.npy")[:5]
    np.testing.assert_allclose(
        engine.encode_items([i.text for i in engine.items(engine.item_ids[:5])]), stored, atol=1e-5
    )
    assert engine.device is Device.CPU and len(engine) == len(engine.item_ids) == 300


def test_batches_group_texts_of_similar_token_counts(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_infer.runtime import tokenizer as tokenization

    tok = tokenization.TextTokenizer.from_file(
        tiny_bundle / "tokenizer.json", max_length=16, pad_token="[PAD]"
    )
    words = ["tent", "kettle", "lamp", "rope", "stove", "chair", "table", "tarp", "boots", "map"]
    # Character counts that disagree with token counts: one long word against several short ones.
    texts = [" ".join(words[: 1 + i % 7]) if i % 3 else "x" * (30 + i) for i in range(23)]
    batches = list(tok.batches(texts, 4))
    rows = [r for idx, _ in batches for r in idx]
    assert sorted(rows) == list(range(len(texts))), "every text once"
    longest = [int(f["attention_mask"].sum(axis=1).max()) for _, f in batches]
    assert longest == sorted(longest), "batches come in order of token count"
    for idx, features in batches:
        alone = tok([texts[i] for i in idx])  # what tokenising the batch by itself gives
        assert features.keys() == alone.keys()
        for name in alone:
            np.testing.assert_array_equal(features[name], alone[name])
    # Across windows too: the positions map back to the caller's texts.
    monkeypatch.setattr(tokenization, "WINDOW", 5)
    seen = []
    for idx, features in tokenization.length_batches(tok, texts, 3):
        np.testing.assert_array_equal(features["input_ids"], tok([texts[i] for i in idx])["input_ids"])
        seen += idx
    assert sorted(seen) == list(range(len(texts)))
    with pytest.raises(ConfigError, match="positive"):
        next(tok.batches(texts, 0))


def test_batches_keep_to_a_token_budget(tiny_bundle: Path) -> None:
    from recsys_infer.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(tiny_bundle / "tokenizer.json", max_length=16, pad_token="[PAD]")
    texts = [" ".join(["tent"] * (i % 13)) or "x" for i in range(40)]
    lengths = dict(enumerate(tok.count_tokens(texts)))
    batches = list(tok.batches(texts, 64, tokens=24))
    assert sorted(r for idx, _ in batches for r in idx) == list(range(len(texts))), "every text once"
    for idx, features in batches:
        longest = max(lengths[i] for i in idx)
        assert features["input_ids"].shape == (len(idx), longest)
        # Within the budget, padding included; a text longer than the budget goes alone.
        assert len(idx) * longest <= 24 or len(idx) == 1
        np.testing.assert_array_equal(features["input_ids"], tok([texts[i] for i in idx])["input_ids"])
    # Each batch takes as many texts as fit: the next batch's first would have broken the budget.
    for (idx, _), (after, _) in pairwise(batches):
        assert (len(idx) + 1) * lengths[after[0]] > 24
    assert len(batches) > 40 * 3 // 24, "the budget, not the 64 texts, set the batches"
    with pytest.raises(ConfigError, match="positive"):
        next(tok.batches(texts, 4, tokens=0))


def test_catalog_batches_run_side_by_side_in_the_callers_order(tiny_bundle: Path) -> None:
    from recsys_infer.runtime.encoder import OnnxEncoder

    engine = Engine.load(tiny_bundle, device="cpu", threads=2)
    items = engine.item_encoder
    assert isinstance(items, OnnxEncoder)
    # The item graph is its own (no other tower runs it): one thread per run, two runs at once.
    assert items.workers == 2 and items.batch_tokens is not None
    assert items._session.get_session_options().intra_op_num_threads == 1
    texts = [*(i.text for i in engine.items(engine.item_ids[:70])), "x", "a long " * 20]
    one_by_one = OnnxEncoder(items._session, items.tokenizer, dim=items.dim, batch_size=5)
    side_by_side = OnnxEncoder(items._session, items.tokenizer, dim=items.dim, batch_tokens=40, workers=3)
    np.testing.assert_allclose(side_by_side.encode(texts), one_by_one.encode(texts), atol=1e-5)
    with pytest.raises(ConfigError, match="positive"):
        OnnxEncoder(items._session, items.tokenizer, dim=items.dim, workers=0)


def test_an_item_graph_that_serves_requests_keeps_its_threads(seq_bundle_for_compress: Path) -> None:
    from recsys_infer.runtime.bundle import read_manifest

    towers = read_manifest(seq_bundle_for_compress).towers
    assert towers["request"].file == towers["item"].file  # the sequence kind reads requests with it
    engine = Engine.load(seq_bundle_for_compress, device="cpu", threads=2)
    assert engine.item_encoder.workers == 1  # type: ignore[attr-defined]
    assert engine.item_encoder._session.get_session_options().intra_op_num_threads == 2  # type: ignore[attr-defined]


def test_encode_restores_the_callers_order(tiny_bundle: Path) -> None:
    engine = Engine.load(tiny_bundle, device="cpu")
    texts = [*[i.text for i in engine.items(engine.item_ids[:70])][::-1], "x", "a long " * 20]
    together = engine.encode_items(texts)
    alone = np.concatenate([engine.encode_items([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


# -- devices ------------------------------------------------------------------------------------------


def test_cuda_unavailable_is_an_error_and_auto_falls_back(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    for device in ("cuda", "cuda:1", "tensorrt"):
        with pytest.raises(DeviceUnavailableError, match=rf"'{device}'.*CPU build.*recsys-infer\[gpu\]"):
            Engine.load(tiny_bundle, device=device)
    with caplog.at_level("WARNING", logger="recsys_infer"):
        engine = Engine.load(tiny_bundle, device="auto")
    # The CPU build alone: nothing to fall back from, so no warning and no fallback to show.
    assert engine.device is Device.CPU and engine.device_name == "cpu" and engine.device_fallback is None
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_auto_falls_back_with_a_warning_when_the_gpu_build_cannot_start(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime-gpu on a machine whose CUDA libraries are missing: it lists the CUDA provider,
    then drops it when a session starts. 'auto' must say so loudly and keep the reason."""
    real_session = ort.InferenceSession

    def dropping_session(
        path: str, sess_options: object = None, providers: list[object] | None = None
    ) -> object:
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(providers, "installed_runtime_distributions", lambda: ["onnxruntime-gpu 1.31.1"])
    monkeypatch.setattr(ort, "InferenceSession", dropping_session)
    with caplog.at_level("WARNING", logger="recsys_infer"):
        engine = Engine.load(tiny_bundle, device="auto")
    assert engine.device is Device.CPU
    assert (
        engine.device_fallback is not None
        and "could not start its CUDAExecutionProvider" in engine.device_fallback
    )
    assert any(r.levelname == "WARNING" and "running on the CPU" in r.getMessage() for r in caplog.records)
    with pytest.raises(DeviceUnavailableError, match="could not start"):
        Engine.load(tiny_bundle, device="cuda")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cpu", (Device.CPU, None)),
        ("auto", (Device.AUTO, None)),
        ("cuda", (Device.CUDA, None)),
        ("CUDA:1", (Device.CUDA, 1)),
        ("tensorrt:0", (Device.TENSORRT, 0)),
    ],
)
def test_device_names_parse(spec: str, expected: tuple[Device, int | None]) -> None:
    assert providers.parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "auto:1", ""])
def test_unknown_device_names_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"use auto, cpu, cuda, cuda:N"):
        providers.parse_device(spec)


def test_provider_options_reach_the_gpu_provider() -> None:
    cuda = providers.Placement(
        Device.CUDA, 1, {"enable_cuda_graph": "1", "arena_extend_strategy": "kSameAsRequested"}
    )
    assert cuda.providers() == [
        (
            "CUDAExecutionProvider",
            {"device_id": 1, "enable_cuda_graph": "1", "arena_extend_strategy": "kSameAsRequested"},
        ),
        "CPUExecutionProvider",
    ]
    assert str(cuda) == "cuda:1"
    trt = providers.Placement(Device.TENSORRT, 0, {"trt_fp16_enable": "1", "trt_engine_cache_enable": "1"})
    assert trt.providers() == [
        (
            "TensorrtExecutionProvider",
            {"device_id": 0, "trt_fp16_enable": "1", "trt_engine_cache_enable": "1"},
        ),
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(ConfigError, match="provider options are for the GPU"):
        providers.plan_placement("cpu", [Precision.FP32], provider_options={"enable_cuda_graph": "1"})


def test_without_onnxruntime_the_engine_names_the_install(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without [cpu] or [gpu] sees
    with pytest.raises(MissingDependencyError, match=r"pip install 'recsys-infer\[cpu\]'"):
        Engine.load(tiny_bundle, device="cpu")


def test_device_plan_when_cuda_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(providers, "installed_runtime_distributions", lambda: ["onnxruntime-gpu 1.31.1"])
    assert providers.plan_device(Device.CUDA, [Precision.FP32]) is Device.CUDA
    assert providers.plan_device(Device.AUTO, [Precision.FP16]) is Device.CUDA
    assert providers.plan_placement("cuda:1", [Precision.FP16]) == providers.Placement(Device.CUDA, 1)
    with pytest.raises(DeviceUnavailableError, match=r"int8 graphs.*--mode fp16"):
        providers.plan_device(Device.CUDA, [Precision.INT8])
    auto = providers.plan_placement(Device.AUTO, [Precision.INT8])
    assert auto.device is Device.CPU and auto.fallback is not None and "int8" in auto.fallback
    assert providers.plan_device(Device.CPU, [Precision.FP32]) is Device.CPU
    with pytest.raises(DeviceUnavailableError, match="TensorRT provider is not available"):
        providers.plan_device("tensorrt", [Precision.FP32])


def test_both_runtime_packages_installed_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(
        providers, "installed_runtime_distributions", lambda: ["onnxruntime 1.32.0", "onnxruntime-gpu 1.31.1"]
    )
    with pytest.raises(DeviceUnavailableError, match="both onnxruntime and onnxruntime-gpu"):
        providers.plan_device(Device.CUDA, [Precision.FP32])


def test_cuda_provider_dropped_by_runtime_is_detected(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime silently drops a provider it cannot start; the engine must notice."""

    class FakeSession:
        def __init__(self, path: str, sess_options: object, providers: list[object]) -> None:
            self.asked = providers

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    with pytest.raises(DeviceUnavailableError, match=r"could not start its CUDAExecutionProvider.*on GPU 0"):
        providers.create_session(tiny_bundle / "user_tower.onnx", Device.CUDA)


def test_io_binding_gives_the_same_vectors(tiny_bundle: Path) -> None:
    """The CUDA path binds inputs and outputs; the same code runs on the CPU provider here."""
    engine = Engine.load(tiny_bundle, device="cpu", threads=1)
    texts = ["wireless headphones", "a cozy mystery set in Scotland", "garden hose"]
    plain = engine.encode_items(texts)
    engine.item_encoder.io_binding = True  # type: ignore[attr-defined]
    np.testing.assert_array_equal(engine.encode_items(texts), plain)


def test_how_threads_wait_never_changes_an_answer(tiny_bundle: Path) -> None:
    """spin only changes how ONNX Runtime's idle threads wait, never a result."""
    spinning = Engine.load(tiny_bundle, device="cpu", threads=2)
    texts = ["a lamp for the desk", "garden chairs"]
    for spin in (False, "run", Spin.NEVER):
        other = Engine.load(tiny_bundle, device="cpu", threads=2, spin=spin)
        assert np.array_equal(spinning.encode_items(texts), other.encode_items(texts))
        assert spinning.recommend(text="lamp", k=3) == other.recommend(text="lamp", k=3)
    with pytest.raises(ConfigError, match="always, run, never"):
        Engine.load(tiny_bundle, device="cpu", spin="sometimes")


def test_spin_modes_set_onnx_runtime_options() -> None:
    def entries(spin: bool | str) -> dict[str, str]:
        options = providers.session_options(threads=2, spin=spin)
        found = {}
        for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
            with contextlib.suppress(RuntimeError):  # not set: ONNX Runtime's default
                found[key] = options.get_session_config_entry(key)
        return found

    assert entries(True) == entries("always") == {}
    assert entries("run") == {"session.force_spinning_stop": "1"}
    assert entries(False) == entries("never") == {"session.intra_op.allow_spinning": "0"}


def test_an_engine_describes_itself_and_closes(tiny_bundle: Path) -> None:
    from recsys_infer import Engine
    from recsys_infer.errors import QueryError

    with Engine.load(tiny_bundle, device="cpu") as engine:
        assert repr(engine) == f"<Engine {str(tiny_bundle)!r}, {len(engine)} items, {engine.dim}-d, on cpu>"
        assert len(engine.recommend(text="tent", k=3, exclude=["P00001"])) == 3
    assert repr(engine).endswith("closed>")
    with pytest.raises(QueryError, match="closed"):
        engine.recommend(text="tent", k=3)
    engine.close()  # twice is fine


def test_recommend_keywords_override_the_options_value(tiny_bundle: Path) -> None:
    from recsys_infer import Engine, RecommendOptions

    engine = Engine.load(tiny_bundle, device="cpu")
    options = RecommendOptions(k=7, explain=True)
    recs = engine.recommend(text="tent", options=options, k=2)
    assert len(recs) == 2 and all(r.because for r in recs)  # k overridden, explain kept
    assert len(engine.recommend_batch([{"text": "tent"}, {"text": "lamp"}], k=4)[1]) == 4
