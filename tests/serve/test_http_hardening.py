"""The service as a hostile or careless client meets it: a real uvicorn server on 127.0.0.1.

Each test names the defect it guards against (from the hardening issue). Every request loop is
bounded in count and time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_infer import Engine
from recsys_infer.serve import API_KEY_ENV, ServeSettings, create_app
from tests.loopback import serving

KEY = {"X-API-Key": "secret"}


@pytest.fixture
def server(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv(API_KEY_ENV, "secret")
    app = create_app(bundle_copy, threads=1, settings=ServeSettings(max_body_bytes=200_000, max_cost=5000))
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]), body
    response.content.decode("ascii")  # error bodies are ASCII: they always encode
    return body["error"]  # type: ignore[no-any-return]


def _raw(client: httpx.Client, path: str, text: str, **kw: Any) -> httpx.Response:
    return client.post(
        path,
        content=text.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json", **kw.pop("headers", {})},
        **kw,
    )


def test_lone_surrogates_and_nan_are_4xx_not_500(server: httpx.Client) -> None:
    error = _error(_raw(server, "/recommend", '{"text": "ear\\ud800", "k": 3}'), 422)
    assert "unicode" in error["message"]
    assert _error(_raw(server, "/recommend", '{"text": "x", "k": NaN}'), 422)["type"] == "invalid_request"
    assert _error(_raw(server, "/recommend", '{"text": "x", "k": Infinity}'), 422)
    error = _error(_raw(server, "/recommend", '{"text": "x", "\\udc80\\ud800": 1}'), 422)
    assert len(error["message"]) < 1000  # a summary, never the input


def test_nested_attributes_cannot_break_filters_or_responses(server: httpx.Client) -> None:
    added = server.post(
        "/items",
        headers=KEY,
        json={"items": [{"item_id": "m1", "text": "a lamp with meta", "attributes": {"meta": {"a": 1}}}]},
    )
    assert added.status_code == 200, added.text
    found = server.post("/recommend", json={"text": "t", "where": {"meta": "x"}, "k": 3})
    assert found.status_code == 200 and found.json()["items"] == []
    deep: Any = "leaf"
    for _ in range(600):
        deep = {"d": deep}
    refused = server.post(
        "/items", headers=KEY, json={"items": [{"item_id": "d1", "text": "deep lamp", "attributes": deep}]}
    )
    assert "nested deeper" in _error(refused, 400)["message"]
    nan = '{"items": [{"item_id": "n1", "text": "nan lamp", "attributes": {"x": NaN}}]}'
    assert "finite numbers" in _error(_raw(server, "/items", nan, headers=KEY), 400)["message"]
    assert server.post("/recommend", json={"text": "lamp", "k": 5}).status_code == 200


def test_unexpected_errors_are_counted_500s_without_a_trace(
    server: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Engine, "recommend_batch", boom)
    error = _error(server.post("/recommend", json={"text": "lamp", "k": 2}), 500)
    assert error["type"] == "internal" and "secret" not in json.dumps(error)
    metrics = server.get("/metrics").text
    assert 'recsys_http_requests_total{route="/recommend",status="500"} 1.0' in metrics
    assert 'recsys_errors_total{kind="http_500"} 1.0' in metrics
    monkeypatch.undo()
    monkeypatch.setenv(API_KEY_ENV, "secret")
    assert server.get("/healthz").status_code == 200  # it keeps answering


def test_cost_and_body_limits(server: httpx.Client) -> None:
    costly = {"requests": [{"text": "lamp", "k": 200, "explain": True}] * 64}
    started = time.perf_counter()
    error = _error(server.post("/recommend", json=costly), 422)
    assert error["type"] == "over_limit" and "5000" in error["message"]
    assert time.perf_counter() - started < 10  # refused before any work (a generous bound)
    big = json.dumps({"text": "x" * 300_000})
    assert "200000 bytes" in _error(_raw(server, "/recommend", big), 413)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it is read
        yield b'{"text": "'
        for _ in range(50):
            yield b"y" * 10_000
        yield b'"}'

    chunked = server.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert _error(chunked, 413)
    metrics = server.get("/metrics").text
    assert 'status="413"} 2.0' in metrics and 'route="/recommend",status="422"} 1.0' in metrics
    info = server.get("/info").json()
    assert info["limits"]["max_body_bytes"] == 200_000 and info["limits"]["max_cost"] == 5000


def test_strict_types_and_slash_ids(server: httpx.Client) -> None:
    for k in (True, "5", 2.5):
        assert _error(server.post("/recommend", json={"text": "lamp", "k": k}), 422)
    item = {"item_id": "shelf/a b", "text": "a slashed lamp"}
    assert server.post("/items", headers=KEY, json={"items": [item]}).status_code == 200
    gone = server.delete("/items/shelf%2Fa%20b", headers=KEY)
    assert gone.status_code == 200 and gone.json()["removed"] == "shelf/a b"
    assert "item id(s)" in _error(server.delete("/items/shelf%2Fa%20b", headers=KEY), 404)["message"]
    assert "history" not in server.delete("/items/nope", headers=KEY).text


def test_replace_is_one_atomic_upsert_and_save_over_the_served_bundle(
    server: httpx.Client, bundle_copy: Path
) -> None:
    first = Engine.load(bundle_copy, device="cpu").item_ids[0]
    items = [{"item_id": first, "text": "replaced text lamp"}, {"item_id": "brand-new", "text": "new lamp"}]
    assert server.post("/items", headers=KEY, json={"items": items, "replace": True}).status_code == 200
    saved = server.post("/admin/save", headers=KEY)
    assert saved.status_code == 200, saved.text
    engine = Engine.load(bundle_copy, device="cpu")
    assert engine.item(first).text == "replaced text lamp" and "brand-new" in engine.item_ids
    assert server.post("/admin/save", headers=KEY).status_code == 200  # again, over itself
    assert [p.name for p in bundle_copy.parent.iterdir() if p.name.startswith(".")] == []


def test_swap_to_a_malformed_bundle_is_400(server: httpx.Client, bundle_copy: Path, tmp_path: Path) -> None:
    import shutil

    bad = Path(shutil.copytree(bundle_copy, tmp_path / "bad"))
    doc = json.loads((bad / "manifest.json").read_text())
    doc["index"]["M"] = "16"
    doc.pop("digest", None)  # as a manifest written before digests
    (bad / "manifest.json").write_text(json.dumps(doc))
    error = _error(server.post("/admin/swap", headers=KEY, json={"bundle": str(bad)}), 400)
    assert "index.M: expected an integer, found a string" in error["message"]


def test_reads_can_require_the_key(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "secret")
    monkeypatch.setenv("RECSYS_INFER_AUTH_READS", "1")
    with serving(create_app(bundle_copy, threads=1)) as base, httpx.Client(base_url=base) as c:
        assert _error(c.post("/recommend", json={"text": "lamp"}), 401)
        assert _error(c.get("/info"), 401) and _error(c.get("/metrics"), 401)
        assert c.post("/recommend", json={"text": "lamp"}, headers=KEY).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness stays open
        assert c.get("/info", headers=KEY).json()["limits"]["auth_reads"] is True
        paths = c.get("/openapi.json", headers=KEY).json()["paths"]
        assert paths["/recommend"]["post"]["security"] == [{"APIKeyHeader": []}]


def test_a_full_queue_answers_429_at_once(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two places, eight slow concurrent requests: some are answered, the rest get 429
    with Retry-After quickly, and the service answers normally afterwards."""
    slow = Engine.recommend_batch

    def slowed(self: Engine, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "recommend_batch", slowed)
    app = create_app(
        bundle_copy, threads=1, settings=ServeSettings(max_pending=2, max_batch_requests=2, max_wait_us=0)
    )
    with serving(app) as base:

        def one(n: int) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            with httpx.Client(base_url=base, timeout=60) as c:
                r = c.post("/recommend", json={"text": f"lamp {n}", "k": 2})
            return r.status_code, time.perf_counter() - started, r.headers.get("retry-after")

        barrier = threading.Barrier(8)

        def synced(n: int) -> tuple[int, float, str | None]:
            barrier.wait(timeout=30)
            return one(n)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(synced, range(8)))
        codes = sorted(code for code, _, _ in results)
        assert set(codes) == {200, 429} and codes.count(200) >= 2, results
        assert all(retry == "1" for code, _, retry in results if code == 429)
        assert max(t for code, t, _ in results if code == 429) < 0.3 * codes.count(200)
        monkeypatch.undo()
        assert one(99)[0] == 200


# -- fuzzing the whole HTTP layer ------------------------------------------------------------------

_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_texts = st.text(alphabet=st.characters() | _surrogates, max_size=40)
_numbers = st.integers(-(10**20), 10**20) | st.floats(allow_nan=True, allow_infinity=True)
_scalars = st.none() | st.booleans() | _numbers | _texts
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=15,
)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity as Python's json writes them


@st.composite
def _bodies(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["fields", "deep", "huge", "value"]))
    if kind == "deep":
        n = draw(st.integers(100, 20_000))
        return "[" * n + "]" * n if draw(st.booleans()) else '{"text": ' + '{"a": ' * n + "1" + "}" * n + "}"
    if kind == "huge":
        return _dumps({"text": "z" * draw(st.integers(150_000, 400_000))})
    if kind == "value":
        return _dumps(draw(_values))
    body = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "history": st.lists(_texts, max_size=5) | _values,
                "text": _texts | _values,
                "k": st.integers(-5, 2000) | _values,
                "explain": st.booleans() | _values,
                "where": st.dictionaries(_texts, _scalars, max_size=2) | _values,
                "exclude": st.lists(_texts, max_size=3) | _values,
                "requests": st.lists(st.fixed_dictionaries({"text": _texts, "k": _numbers}), max_size=3),
            },
        )
    )
    return _dumps(body)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(body=_bodies())
def test_fuzz_never_a_500(server: httpx.Client, body: str) -> None:
    response = _raw(server, "/recommend", body)
    assert response.status_code in (200, 400, 404, 413, 422), (body[:200], response.text[:300])
    assert set(response.json()) in ({"error"}, {"items"}, {"results"})


def test_fuzz_leaves_the_service_answering(server: httpx.Client) -> None:
    for text in ('{"text": "\\ud800"}', "[" * 50_000 + "]" * 50_000, '{"k": NaN}', "\xff\xfe"):
        assert server.post("/recommend", content=text.encode("utf-8", "surrogatepass")).status_code < 500
    assert server.post("/recommend", json={"text": "lamp", "k": 3}).status_code == 200
    assert 'status="500"' not in server.get("/metrics").text


def test_settings_come_from_defaults_then_environment_then_flags() -> None:
    from recsys_infer.enums import Spin
    from recsys_infer.errors import ConfigError

    env = {"RECSYS_INFER_MAX_COST": "5_000", "RECSYS_INFER_AUTH_READS": "yes", "RECSYS_INFER_MAX_K": "50"}
    s = ServeSettings.from_env(env, max_k=20, max_pending=None)
    assert (s.max_cost, s.auth_reads, s.max_k, s.max_pending) == (5000, True, 20, ServeSettings().max_pending)
    with pytest.raises(ConfigError, match="RECSYS_INFER_MAX_COST='lots' is not an integer"):
        ServeSettings.from_env({"RECSYS_INFER_MAX_COST": "lots"})
    with pytest.raises(ConfigError, match="max_pending must be a positive integer"):
        ServeSettings(max_pending=0)
    assert ServeSettings().spin is Spin.ALWAYS
    assert ServeSettings.from_env({"RECSYS_INFER_SPIN": "0"}).spin is Spin.NEVER
    assert ServeSettings.from_env({"RECSYS_INFER_SPIN": "Run"}).spin is Spin.RUN
    with pytest.raises(ConfigError, match="spin must be one of always, run, never"):
        ServeSettings.from_env({"RECSYS_INFER_SPIN": "sometimes"})
