"""The request cache: the same vectors as without it, bounded, thread-safe, visible in /metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.errors import ConfigError
from recsys_infer.runtime.cache import CachedEncoder


class CountingEncoder:
    dim = 4

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen.extend(texts)
        return np.array([[len(t), t.count("a"), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_hits_misses_and_the_bound() -> None:
    inner = CountingEncoder()
    cache = CachedEncoder(inner, max_entries=2)
    first = cache.encode(["tea", "lamp", "tea"])
    assert inner.seen == ["tea", "lamp"]  # one encode per distinct text, even within a call
    np.testing.assert_array_equal(first, inner.encode(["tea", "lamp", "tea"]))
    inner.seen.clear()
    cache.encode(["  tea ", "lamp"])  # the same text to the tokenizer: a hit
    assert inner.seen == [] and cache.stats().hits == 3 and cache.stats().misses == 2
    cache.encode(["kettle"])  # evicts the least recently used ("tea" was used before "lamp")
    cache.encode(["lamp"])
    assert inner.seen == ["kettle"]
    cache.encode(["tea"])
    assert inner.seen == ["kettle", "tea"]
    stats = cache.stats()
    assert stats.entries == 2 and stats.bytes == 2 * 4 * 4 and stats.max_entries == 2
    with pytest.raises(ConfigError, match="positive number of entries"):
        CachedEncoder(inner, max_entries=0)


def test_an_engine_with_the_cache_answers_as_one_without(bundle_copy: Path) -> None:
    plain = Engine.load(bundle_copy, device="cpu", threads=1)
    cached = Engine.load(bundle_copy, device="cpu", threads=1, request_cache=64)
    assert plain.request_cache() is None
    texts = ["lamp", "running shoes", "a thriller", "lamp", "coffee grinder", "running shoes"] * 5
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: [r.item_id for r in cached.recommend(text=t, k=5)], texts))
    assert got == [[r.item_id for r in plain.recommend(text=t, k=5)] for t in texts]
    np.testing.assert_allclose(
        cached.encode_users([{"text": "lamp"}]), plain.encode_users([{"text": "lamp"}])
    )
    stats = cached.request_cache()
    assert stats is not None and stats.misses >= 4 and stats.hits + stats.misses == 31 and stats.entries == 4


def test_the_service_reports_the_cache(bundle_copy: Path) -> None:
    from fastapi.testclient import TestClient

    from recsys_infer.serve import ServeSettings, create_app

    settings = ServeSettings(request_cache=100)
    with TestClient(create_app(bundle_copy, threads=1, settings=settings)) as client:
        for text in ("lamp", "lamp", "tea"):
            assert client.post("/recommend", json={"text": text, "k": 2}).status_code == 200
        metrics = client.get("/metrics").text
        info = client.get("/info").json()
    assert (
        "recsys_request_cache_hits_total 1.0" in metrics
        and "recsys_request_cache_misses_total 2.0" in metrics
    )
    assert "recsys_request_cache_entries 2.0" in metrics
    assert info["request_cache"]["entries"] == 2 and info["limits"]["request_cache"] == 100
