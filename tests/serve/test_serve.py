"""The micro-batcher and the HTTP service, on the tiny bundle (loopback only, bounded)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_infer import Engine
from recsys_infer.errors import QueryError, UnknownItemError
from recsys_infer.runtime.batcher import BatcherClosedError, MicroBatcher
from recsys_infer.serve import API_KEY_ENV, create_app


@pytest.fixture
def engine(bundle_copy: Path) -> Engine:
    return Engine.load(bundle_copy, device="cpu", threads=1)


def _ids(recs: list[Any]) -> list[str]:
    return [r.item_id for r in recs]


def test_batched_answers_equal_single_calls(engine: Engine) -> None:
    queries = [{"history": list(engine.item_ids[i : i + 1 + i % 4])} for i in range(0, 90, 3)]
    queries += [{"text": t} for t in ("lamp", "running shoes", "a thriller", "coffee grinder")]
    alone = [_ids(engine.recommend(**q, k=5)) for q in queries]  # type: ignore[arg-type]
    sizes: list[int] = []
    with MicroBatcher(engine, max_batch=16, max_wait_us=20_000, on_batch=sizes.append) as batcher:
        with ThreadPoolExecutor(16) as pool:
            futures = list(pool.map(lambda q: batcher.submit(**q, k=5), queries))
            together = [_ids(f.result(timeout=30)) for f in futures]
        assert together == alone
        assert sum(sizes) == len(queries) and max(sizes) > 1  # requests really shared runs
        with pytest.raises(UnknownItemError):
            batcher.submit(history=["no-such-item"])  # fails alone, at once
        assert _ids(asyncio.run(batcher.arecommend(text="lamp", k=5))) == alone[len(queries) - 4]
    with pytest.raises(BatcherClosedError):
        batcher.submit(text="lamp")


def test_a_request_that_goes_bad_in_the_queue_fails_alone(engine: Engine) -> None:
    victim = engine.item_ids[0]
    batcher = MicroBatcher(engine, max_batch=8, max_wait_us=200_000)
    try:
        bad = batcher.submit(history=[victim], k=3)
        good = batcher.submit(text="lamp", k=3)
        engine.remove_items([victim])  # removed after the check, before the batch runs
        with pytest.raises(UnknownItemError):
            bad.result(timeout=10)
        assert len(good.result(timeout=10)) == 3
    finally:
        batcher.close()


@pytest.fixture
def client(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(API_KEY_ENV, "secret")
    with TestClient(create_app(bundle_copy, threads=1, max_wait_us=500)) as c:
        yield c


KEY = {"X-API-Key": "secret"}


def test_recommend_single_and_batch_match_the_engine(client: Any, bundle_copy: Path) -> None:
    engine = Engine.load(bundle_copy, device="cpu", threads=1)
    history = list(engine.item_ids[:3])
    one = client.post("/recommend", json={"history": history, "k": 5})
    assert one.status_code == 200
    assert [r["item_id"] for r in one.json()["items"]] == _ids(engine.recommend(history=history, k=5))
    body = {"requests": [{"history": history, "k": 5}, {"text": "lamp", "k": 2}]}
    batch = client.post("/recommend/batch", json=body)
    assert batch.status_code == 200 and "deprecation" not in batch.headers
    results = batch.json()["results"]
    assert [r["item_id"] for r in results[1]["items"]] == _ids(engine.recommend(text="lamp", k=2))
    # The batch body on /recommend, as before /recommend/batch existed: the same answer, deprecated.
    old = client.post("/recommend", json=body)
    assert old.status_code == 200 and old.json() == batch.json()
    assert old.headers["deprecation"] == "true" and "/recommend/batch" in old.headers["link"]
    explained = client.post("/recommend", json={"history": history, "k": 2, "explain": True}).json()
    assert {b["source"] for b in explained["items"][0]["because"]} <= set(history)
    cat = engine.item(engine.item_ids[0]).attributes["category"]
    where = client.post("/recommend", json={"text": "gift", "k": 3, "where": {"category": cat}}).json()
    assert {r["attributes"]["category"] for r in where["items"]} == {cat}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"history": [], "text": ""}, 400, "needs a history"),
        ({"text": "lamp", "k": 0}, 422, "greater than or equal to 1"),
        ({"text": "lamp", "k": 100000}, 422, "less than or equal to"),
        ({"text": "lamp", "k": 999}, 400, "larger than the catalogue"),
        ({"text": "lamp", "k": True}, 422, "valid integer"),
        ({"text": "lamp", "k": "5"}, 422, "valid integer"),
        ({"text": "x" * 5000}, 422, "at most 2000"),
        ({"history": ["no-such-item"]}, 404, "no-such-item"),
        ({"text": "lamp", "colour": "red"}, 422, "extra"),
        ({"history": "1,2,3"}, 422, "list"),
        ({"requests": []}, 422, "at least 1"),
        # A typo is reported against the one shape a body was meant as, not against both.
        ({"txt": "lamp"}, 422, "txt: extra inputs are not permitted"),
    ],
)
def test_bad_requests_get_clear_4xx(client: Any, body: dict[str, Any], status: int, words: str) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words.lower() in error["message"].lower() and error["type"]
    assert "requests" not in error["message"] or "requests" in body, error


def test_editing_needs_the_key_and_is_persisted(
    client: Any, bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = {"item_id": "new-1", "text": "brass desk lamp with dimmer", "attributes": {"category": "Lamps"}}
    assert client.post("/items", json={"items": [item]}).status_code == 401
    assert client.post("/items", json={"items": [item]}, headers={"X-API-Key": "wrong"}).status_code == 401
    added = client.post("/items", json={"items": [item]}, headers=KEY)
    assert added.status_code == 200 and added.json()["changed"] == 1
    assert client.post("/items", json={"items": [item]}, headers=KEY).status_code == 409  # exists: a conflict
    assert client.post("/items", json={"items": [item], "replace": True}, headers=KEY).status_code == 200
    found = client.post("/recommend", json={"text": "lamp", "k": 1, "allow": ["new-1"]}).json()
    assert found["items"][0]["item_id"] == "new-1"
    # Attributes are any JSON, an integer beyond 64 bits included (orjson refuses those).
    big = {**item, "attributes": {"category": "Lamps", "serial": 2**70}}
    assert client.post("/items", json={"items": [big], "replace": True}, headers=KEY).status_code == 200
    found = client.post("/recommend", json={"text": "lamp", "k": 1, "allow": ["new-1"]})
    assert found.status_code == 200 and found.json()["items"][0]["attributes"]["serial"] == 2**70
    gone = Engine.load(bundle_copy, device="cpu").item_ids[0]
    assert client.delete(f"/items/{gone}", headers=KEY).status_code == 200
    assert client.delete(f"/items/{gone}", headers=KEY).status_code == 404
    assert client.get("/healthz").json()["unsaved_edits"] is True
    unsaved = client.post("/admin/swap", json={"bundle": str(bundle_copy)}, headers=KEY)
    assert unsaved.status_code == 409 and "unsaved" in unsaved.text
    assert client.post("/admin/save", headers=KEY).status_code == 200
    saved = Engine.load(bundle_copy, device="cpu")
    assert "new-1" in saved.item_ids and gone not in saved.item_ids
    monkeypatch.delenv(API_KEY_ENV)
    refused = client.delete("/items/new-1", headers=KEY)
    assert refused.status_code == 403 and API_KEY_ENV in refused.text


def test_hot_swap_health_metrics_and_schema(client: Any, tiny_bundle: Path) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    for _ in range(3):
        assert client.post("/recommend", json={"text": "lamp", "k": 2}).status_code == 200
    swapped = client.post("/admin/swap", json={"bundle": str(tiny_bundle)}, headers=KEY)
    assert swapped.status_code == 200 and client.get("/healthz").json()["bundle"] == tiny_bundle.name
    assert client.post("/recommend", json={"text": "lamp", "k": 2}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'recsys_http_requests_total{route="/recommend",status="200"} 4.0' in metrics
    assert "recsys_batch_size_count" in metrics and "recsys_http_request_duration_seconds_bucket" in metrics
    assert "recsys_queue_depth 0.0" in metrics and "process_resident_memory_bytes" in metrics
    assert f'recsys_build_info{{bundle="{tiny_bundle}",device="cpu"' in metrics
    assert f"recsys_catalogue_items {len(Engine.load(tiny_bundle, device='cpu'))}.0" in metrics
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/items", "/items/{item_id}", "/healthz", "/metrics"} <= set(schema["paths"])
    # The key is documented where it is needed: the editing routes; reads are open by default.
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert schema["paths"]["/items"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/recommend"]["post"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "history": st.lists(st.text(max_size=12), max_size=5) | json_values,
            "text": st.text(max_size=300) | json_values,
            "k": st.integers(-5, 2000) | json_values,
            "explain": st.booleans(),
            "where": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2) | json_values,
        },
    )
)
def test_no_request_body_crashes_the_service(client: Any, body: dict[str, Any]) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code in (200, 400, 404, 422), (body, response.text)
    assert set(response.json()) in ({"error"}, {"items"}), response.text


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_raw_bytes_including_invalid_utf8_get_4xx(client: Any, raw: bytes) -> None:
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404, 422), response.text


@pytest.mark.parametrize(
    "text", ["🎧🎧 headphones 🎧", "tab\there\x00\x07 bell", "\u202e\u200b", "ünïcödé lamp"]
)
def test_odd_texts_are_served(client: Any, text: str) -> None:
    response = client.post("/recommend", json={"text": text, "k": 3})
    assert response.status_code == 200 and len(response.json()["items"]) == 3


def test_service_under_concurrent_clients_has_no_errors(client: Any) -> None:
    def one(n: int) -> int:
        body = (
            {"text": ["lamp", "shoes", "coffee"][n % 3], "k": 5}
            if n % 2
            else {"requests": [{"text": "tea"}] * 3}
        )
        return int(client.post("/recommend" if n % 2 else "/recommend/batch", json=body).status_code)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(120)))
    assert codes == [200] * 120
    counts = json.dumps(client.get("/metrics").text)
    assert "recsys_batch_size_sum" in counts


def test_batcher_refuses_bad_options_at_once(engine: Engine) -> None:
    with MicroBatcher(engine) as batcher:
        with pytest.raises(QueryError, match="positive integer"):
            batcher.submit(text="lamp", k=0)
        with pytest.raises(QueryError, match="list of item ids"):
            batcher.submit(text="lamp", exclude="abc")


def test_load_over_loopback_has_no_errors(bundle_copy: Path) -> None:
    """A real uvicorn server on 127.0.0.1 and several keep-alive clients, bounded in count."""
    import socket

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(bundle_copy, threads=1), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started

        def client(n: int) -> list[int]:
            with httpx.Client(base_url=base, timeout=30) as c:
                return [
                    c.post(
                        "/recommend",
                        json={"text": f"lamp {i}", "k": 5} if i % 2 else {"history": [], "text": "tea"},
                    ).status_code
                    for i in range(25)
                ]

        with ThreadPoolExecutor(6) as pool:
            codes = [code for batch in pool.map(client, range(6)) for code in batch]
        assert codes == [200] * 150
        metrics = httpx.get(f"{base}/metrics").text
        assert 'recsys_http_requests_total{route="/recommend",status="200"} 150.0' in metrics
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_routes_over_a_real_server_match_their_typed_schema(bundle_copy: Path) -> None:
    """/embed, /info, /healthz and /recommend on uvicorn over loopback: each answer equals the
    engine's and validates against the response model the OpenAPI schema names for it."""
    import httpx
    import numpy as np

    from recsys_infer.serve import models
    from tests.loopback import serving

    engine = Engine.load(bundle_copy, device="cpu", threads=1)
    texts = ["wireless headphones", "a cozy mystery set in Scotland"]
    users = [{"history": list(engine.item_ids[:3])}, {"text": "tent", "history": [engine.item_ids[5]]}]
    with (
        serving(create_app(bundle_copy, threads=1, max_wait_us=500)) as base,
        httpx.Client(base_url=base) as c,
    ):
        items = c.post("/embed", json={"items": texts})
        assert items.status_code == 200
        got = models.EmbedResponse.model_validate(items.json())
        assert got.kind == "items" and got.dim == engine.dim
        np.testing.assert_allclose(np.array(got.vectors), engine.encode_items(texts), atol=1e-6)
        embedded_users = models.EmbedResponse.model_validate(c.post("/embed", json={"users": users}).json())
        assert embedded_users.kind == "users"
        np.testing.assert_allclose(np.array(embedded_users.vectors), engine.encode_users(users), atol=1e-6)
        for bad in ({}, {"items": texts, "users": users}, {"items": []}, {"items": ["x"] * 1000}):
            refused = c.post("/embed", json=bad)
            assert refused.status_code == 422 and "error" in refused.json(), (bad, refused.text)
        assert c.post("/embed", json={"users": [{"history": ["no-such-item"]}]}).status_code == 404

        info = models.InfoResponse.model_validate(c.get("/info").json())
        assert info.device == "cpu" and info.device_fallback is None  # "auto" with the CPU build: no fallback
        assert info.providers == ["CPUExecutionProvider"] and info.items == len(engine)
        assert {"user", "item"} <= set(info.towers) and info.towers["item"].precision == "fp32"
        assert info.limits["device"] == "auto" and info.schema_version is not None
        assert set(info.backends) == set(info.towers)  # the default: ONNX Runtime for every tower, as asked
        assert {(b.backend, b.why) for b in info.backends.values()} == {
            ("onnxruntime", "backend='onnxruntime' (the engine's setting)")
        }
        health = models.HealthResponse.model_validate(c.get("/healthz").json())
        assert health.device == "cpu" and health.device_fallback == info.device_fallback

        one = models.RecommendResponse.model_validate(
            c.post("/recommend", json={"text": "tent", "k": 3}).json()
        )
        assert [i.item_id for i in one.items] == _ids(engine.recommend(text="tent", k=3))
        batch = c.post(
            "/recommend/batch", json={"requests": [{"text": "tent", "k": 2}, {"text": "lamp", "k": 1}]}
        )
        assert [len(r.items) for r in models.BatchRecommendResponse.model_validate(batch.json()).results] == [
            2,
            1,
        ]

        schema = c.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/embed", "/v1/embeddings", "/info", "/healthz", "/recommend", "/recommend/batch"} <= set(paths)

    def response_schema(path: str, method: str) -> Any:
        return paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]

    embed = response_schema("/embed", "post")["anyOf"]  # ours, or TEI's bare list for inputs
    assert {"$ref": "#/components/schemas/EmbedResponse"} in embed and {"type": "array"}.items() <= embed[
        1
    ].items()
    assert response_schema("/v1/embeddings", "post") == {"$ref": "#/components/schemas/EmbeddingsResponse"}
    assert response_schema("/info", "get") == {"$ref": "#/components/schemas/InfoResponse"}
    assert response_schema("/healthz", "get") == {"$ref": "#/components/schemas/HealthResponse"}
    recommend = json.dumps(response_schema("/recommend", "post"))
    assert "RecommendResponse" in recommend and "BatchRecommendResponse" in recommend
    assert {"EmbedResponse", "InfoResponse", "RecommendedItem"} <= set(schema["components"]["schemas"])


def test_device_and_provider_options_come_from_flags_or_the_environment() -> None:
    from recsys_infer.errors import ConfigError
    from recsys_infer.serve.settings import ServeSettings, parse_provider_options

    env = {
        "RECSYS_INFER_DEVICE": "cuda:1",
        "RECSYS_INFER_PROVIDER_OPTIONS": "enable_cuda_graph=1,gpu_mem_limit=2e9",
    }
    settings = ServeSettings.from_env(env)
    assert settings.device == "cuda:1"
    assert settings.provider_options == {"enable_cuda_graph": "1", "gpu_mem_limit": "2e9"}
    assert ServeSettings.from_env(env, device="cpu").device == "cpu"  # a flag wins over the environment
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        ServeSettings.from_env({"RECSYS_INFER_DEVICE": "gpu"})
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_provider_options(["enable_cuda_graph"])


def test_the_schema_declares_the_errors_as_they_are_sent(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every operation declares every error status with the one error body, and the errors the
    server really sends parse as that body (a client generated from the schema reads them)."""
    from recsys_infer.serve import API_KEY_ENV, ServeSettings
    from recsys_infer.serve.guard import ERROR_TYPES
    from recsys_infer.serve.models import ErrorBody

    monkeypatch.setenv(API_KEY_ENV, "secret")
    settings = ServeSettings(max_body_bytes=4096)
    with TestClient(create_app(bundle_copy, threads=1, settings=settings)) as c:
        schema = c.get("/openapi.json").json()
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                for status in ERROR_TYPES:
                    declared = operation["responses"][str(status)]["content"]["application/json"]["schema"]
                    assert declared == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
        assert "HTTPValidationError" not in json.dumps(schema)
        sent = [
            c.post("/recommend", json={"txt": "x"}),  # 422
            c.post("/recommend", json={"history": ["no-such-item"], "k": 2}),  # 404
            c.get("/recommend"),  # 405
            c.post("/recommend", content=b"x" * 5000, headers={"content-type": "application/json"}),  # 413
            c.delete("/items/1"),  # 401: no key
        ]
        assert [r.status_code for r in sent] == [422, 404, 405, 413, 401]
        for response in sent:
            body = ErrorBody.model_validate(response.json())
            assert body.error.type == ERROR_TYPES[response.status_code]
