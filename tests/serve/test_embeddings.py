"""The embedding APIs clients already speak: OpenAI's POST /v1/embeddings and the Text
Embeddings Inference POST /embed {"inputs": ...}, each equal to the engine's own vectors."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys_infer import Engine
from recsys_infer.serve import create_app
from recsys_infer.serve.models import EmbeddingsResponse
from tests.loopback import serving

TEXTS = ["a red tent for two", "camping lamp"]


def test_openai_route_returns_the_towers_vectors(tiny_bundle: Path) -> None:
    engine = Engine.load(tiny_bundle, device="cpu")
    requests = engine.encode_users([{"text": t} for t in TEXTS])
    with TestClient(create_app(tiny_bundle, threads=1)) as c:
        got = EmbeddingsResponse.model_validate(
            c.post("/v1/embeddings", json={"input": TEXTS, "model": "x"}).json()
        )
        np.testing.assert_allclose(np.array([d.embedding for d in got.data]), requests, atol=1e-6)
        assert [d.index for d in got.data] == [0, 1] and got.model == "x" and got.usage.prompt_tokens > 2
        packed = c.post("/v1/embeddings", json={"input": TEXTS[0], "model": "x", "encoding_format": "base64"})
        first = packed.json()["data"][0]["embedding"]
        np.testing.assert_allclose(np.frombuffer(base64.b64decode(first), "<f4"), requests[0], atol=1e-6)
        items = c.post("/v1/embeddings", json={"input": TEXTS, "model": "item"}).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in items], engine.encode_items(TEXTS), atol=1e-6)
        for bad in (
            {"input": [], "model": "x"},
            {"model": "x"},
            {"input": "x", "model": "x", "dimensions": 7},
        ):
            refused = c.post("/v1/embeddings", json=bad)
            assert refused.status_code in (400, 422) and "error" in refused.json(), (bad, refused.text)


def test_tei_inputs_answer_a_bare_list_of_vectors(tiny_bundle: Path) -> None:
    engine = Engine.load(tiny_bundle, device="cpu")
    with TestClient(create_app(tiny_bundle, threads=1)) as c:
        one = c.post("/embed", json={"inputs": TEXTS[0]}).json()
        np.testing.assert_allclose(one, engine.encode_users([{"text": TEXTS[0]}]), atol=1e-6)
        items = c.post("/embed", json={"inputs": TEXTS, "tower": "item", "truncate": True}).json()
        np.testing.assert_allclose(items, engine.encode_items(TEXTS), atol=1e-6)
        for bad in ({"inputs": []}, {"inputs": "x", "items": ["y"]}, {"inputs": "x", "normalize": False}):
            refused = c.post("/embed", json=bad)
            assert refused.status_code == 422 and "error" in refused.json(), (bad, refused.text)


def test_the_official_openai_client_gets_the_engines_vectors(tiny_bundle: Path) -> None:
    openai = pytest.importorskip("openai")
    engine = Engine.load(tiny_bundle, device="cpu")
    with serving(create_app(tiny_bundle, threads=1)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
        answer = client.embeddings.create(model="request", input=TEXTS)  # base64 on the wire
        got = np.array([d.embedding for d in answer.data])
        np.testing.assert_allclose(got, engine.encode_users([{"text": t} for t in TEXTS]), atol=1e-6)
        floats = client.embeddings.create(model="item", input=TEXTS[1], encoding_format="float")
        np.testing.assert_allclose(floats.data[0].embedding, engine.encode_items([TEXTS[1]])[0], atol=1e-6)
        assert answer.usage.prompt_tokens > 2


def test_info_says_which_components_are_which_space(seq_bundle_for_compress: Path, tiny_bundle: Path) -> None:
    from recsys_infer.serve.models import InfoResponse

    with TestClient(create_app(seq_bundle_for_compress, threads=1)) as c:
        info = InfoResponse.model_validate(c.get("/info").json())
        vector = c.post("/v1/embeddings", json={"input": "tent", "model": "request"}).json()["data"][0]
    assert [(s.name, s.start, s.stop) for s in info.spaces] == [("trained", 0, 32), ("text", 32, 64)]
    assert len(vector["embedding"]) == info.spaces[-1].stop
    with TestClient(create_app(tiny_bundle, threads=1)) as c:
        one = InfoResponse.model_validate(c.get("/info").json()).spaces
    assert [(s.name, s.start, s.stop) for s in one] == [("trained", 0, 32)]
