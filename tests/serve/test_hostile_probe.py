"""The second hostile probe's reproductions (the reliability issue), each against a real uvicorn
server on 127.0.0.1 served as `recsys-infer serve` serves it. Each test names its defect; each
failed before its fix."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recsys_infer import Engine
from recsys_infer.errors import ConfigError, OutputExistsError
from recsys_infer.serve import API_KEY_ENV, ServeSettings, create_app
from tests.loopback import serving

KEY = {"X-API-Key": "secret"}
SETTINGS = ServeSettings(header_timeout_s=1, max_header_bytes=16_384)


@pytest.fixture
def server(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv(API_KEY_ENV, "secret")
    app = create_app(bundle_copy, threads=1, settings=SETTINGS)
    with serving(app, SETTINGS) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def _raw(base: str, payload: bytes, *, read: bool = True, timeout: float = 10) -> bytes:
    """Send ``payload`` on a fresh connection; what the server answered before it closed."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(payload)
        if not read:
            return b""
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_huge_header_is_refused_with_431_and_others_are_served(server: httpx.Client) -> None:
    """Defect: no header size limit; an 80 MB header stalled everyone for 5.1 s."""
    base = str(server.base_url)
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = _raw(base, big)
    assert _status(answer) == 431 and b'"headers_too_large"' in answer, answer[:200]
    assert server.get("/healthz").status_code == 200
    # Just under the limit is served.
    fine = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + b"a" * 8_000 + b"\r\n\r\n"
    assert _status(_raw(base, fine)) == 200


def test_a_client_that_sends_no_head_is_answered_408_and_closed(server: httpx.Client) -> None:
    """Defect: idle and slow connections were never closed."""
    base = str(server.base_url)
    assert _status(_raw(base, b"")) == 408  # connected, sent nothing
    assert _status(_raw(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")) == 408  # a head never finished
    assert server.get("/healthz").status_code == 200


def test_every_batch_the_limits_allow_is_admitted(server: httpx.Client) -> None:
    """Defect: the batch limit (256) was above the pending limit (64), so a batch of 65 got 429
    for ever. Now the defaults agree, and settings that disagree are refused at start-up."""
    n = SETTINGS.max_batch_requests
    assert n <= SETTINGS.max_pending
    batch = server.post("/recommend/batch", json={"requests": [{"text": "lamp", "k": 1}] * n})
    assert batch.status_code == 200 and len(batch.json()["results"]) == n
    texts = server.post("/embed", json={"items": ["a lamp"] * n})
    assert texts.status_code == 200
    with pytest.raises(ConfigError, match=r"max_batch_requests .* is above max_pending"):
        ServeSettings(max_batch_requests=65, max_pending=64)


def test_an_aborted_upload_is_not_executed(server: httpx.Client) -> None:
    """Defect: a client that closed mid-body had its partial body run (an item was added)."""
    base = str(server.base_url)
    body = json.dumps({"items": [{"item_id": "half-sent", "text": "a lamp sent in half"}]}).encode()
    head = (
        f"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: secret\r\n"
        f"Content-Length: {len(body) + 500}\r\n\r\n"
    ).encode()
    _raw(base, head + body, read=False)  # the connection closes 500 bytes short
    for _ in range(50):  # let the server see the disconnect
        if 'status="499"' in server.get("/metrics").text:
            break
    assert 'route="/items",status="499"' in server.get("/metrics").text
    allowed = server.post("/recommend", json={"text": "lamp", "k": 1, "allow": ["half-sent"]})
    assert allowed.status_code == 200 and allowed.json()["items"] == []


def test_ids_that_a_url_cannot_carry_are_refused(server: httpx.Client) -> None:
    """Defect: an id holding a newline could be added, then never deleted over HTTP."""
    for bad in ("nl\nid", "tab\tid", "nul\x00id"):
        added = server.post("/items", headers=KEY, json={"items": [{"item_id": bad, "text": "a lamp"}]})
        assert added.status_code in (400, 422) and "control character" in added.text, added.text
    assert not server.get("/healthz").json()["unsaved_edits"]


def test_broken_bundles_are_refused_on_swap_without_a_500(server: httpx.Client, tmp_path: Path) -> None:
    """Defect: a listed file that is a symlink loop, and an ONNX file of garbage whose checksum
    matches, answered 500 on /admin/swap."""
    import shutil

    from recsys_infer.runtime.bundle import read_manifest, write_manifest

    source = Path(server.get("/info").json()["bundle"])
    loop = Path(shutil.copytree(source, tmp_path / "loop"))
    graph = read_manifest(loop).item.file
    (loop / graph).unlink()
    os.symlink(loop / "a", loop / graph)
    os.symlink(loop / graph, loop / "a")
    garbage = Path(shutil.copytree(source, tmp_path / "garbage"))
    (garbage / graph).write_bytes(b"not a graph at all" * 100)
    write_manifest(garbage, read_manifest(garbage))  # its checksum now matches the garbage
    for bundle, words in ((loop, "cannot be followed"), (garbage, "ONNX Runtime could not load")):
        swapped = server.post("/admin/swap", headers=KEY, json={"bundle": str(bundle)})
        assert swapped.status_code == 400 and words in swapped.text, swapped.text
    assert server.post("/recommend", json={"text": "lamp", "k": 2}).status_code == 200
    assert 'status="500"' not in server.get("/metrics").text


def test_a_key_no_client_could_send_is_refused_at_start_up(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: with a non-ASCII API key the server started, and every client got 401."""
    monkeypatch.setenv(API_KEY_ENV, "clé-secrète")
    with pytest.raises(ConfigError, match="printable ASCII"):
        create_app(bundle_copy, threads=1)


def test_metrics_name_every_route_and_info_counts_live_items(server: httpx.Client) -> None:
    """Defects: 413s, /docs and /openapi.json were counted as route="unmatched"; /info showed the
    index count the bundle was written with, not the live catalogue's."""
    assert server.get("/docs").status_code == 200 and server.get("/openapi.json").status_code == 200
    assert server.get("/docs/static/swagger-ui.css").status_code == 200
    assert server.post("/recommend", content=b"x" * 5_000_000).status_code == 413
    assert server.get("/no-such-route").status_code == 404
    metrics = server.get("/metrics").text
    for route, status in (("/docs", 200), ("/openapi.json", 200), ("/docs/static", 200), ("/recommend", 413)):
        assert f'route="{route}",status="{status}"' in metrics, route
    assert 'route="unmatched",status="404"' in metrics
    before = server.get("/info").json()["index"]["count"]
    added = server.post(
        "/items", headers=KEY, json={"items": [{"item_id": "live-1", "text": "a brass lamp"}]}
    )
    assert added.status_code == 200
    info = server.get("/info").json()
    assert info["index"]["count"] == info["items"] == before + 1


def test_healthz_shows_no_path_and_where_refuses_a_lone_surrogate(server: httpx.Client) -> None:
    """Defects: the open /healthz showed the bundle's absolute path; a surrogate as a where value
    was accepted."""
    health = server.get("/healthz").json()
    assert "/" not in health["bundle"]
    answer = server.post(
        "/recommend",
        content=b'{"text": "lamp", "where": {"category": "\\ud800"}}',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code in (400, 422) and "surrogate" in answer.text, answer.text


def test_overwrite_never_deletes_a_folder_that_is_not_a_bundle(bundle_copy: Path, tmp_path: Path) -> None:
    """Defect: save(overwrite=True) deleted a folder that merely held a file named manifest.json."""
    target = tmp_path / "d"
    target.mkdir()
    (target / "manifest.json").write_text('{"name": "ext"}')
    (target / "precious.txt").write_text("keep")
    engine = Engine.load(bundle_copy, device="cpu")
    with pytest.raises(OutputExistsError, match="not list"):
        engine.save(target, overwrite=True)
    assert (target / "precious.txt").read_text() == "keep"
    engine.save(tmp_path / "b")  # a real bundle, with a stranger put inside it
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes\.txt"):
        engine.save(tmp_path / "b", overwrite=True)
    (tmp_path / "b" / "notes.txt").unlink()
    engine.save(tmp_path / "b", overwrite=True)  # a bundle alone is replaced
