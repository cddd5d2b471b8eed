"""On a local Ray cluster started here: catalogue encoding on Ray Data, and two Ray Serve
replicas sharing one Milvus collection (on Milvus Lite and on a Milvus server). Marked
``cluster`` (a cluster start costs seconds to a minute); ``.ci/run`` runs them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("milvus_lite")
httpx = pytest.importorskip("httpx")

from recsys_infer.enums import Consistency  # noqa: E402
from recsys_infer.indexing.reindex import MilvusTarget, reindex_bundle  # noqa: E402
from recsys_infer.indexing.shards import encode_catalog  # noqa: E402
from recsys_infer.runtime.catalog import Catalog  # noqa: E402
from recsys_infer.scale.encoding import RayRunner  # noqa: E402
from tests.conftest import milvus_place  # noqa: E402
from tests.loopback import free_port, milvus_lite_server  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_data_encodes_the_same_vectors_and_resumes(
    cluster: None, tiny_bundle: Path, tmp_path: Path
) -> None:
    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    local, _ = encode_catalog(tiny_bundle, texts, tmp_path / "local", items_sha256="x", shard_size=50)
    done: list[int] = []

    def die_after_three(shard: int) -> None:
        done.append(shard)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_catalog(tiny_bundle, texts, tmp_path / "ray", items_sha256="x", shard_size=50, workers=2,
                         runner=RayRunner(), on_shard=die_after_three)  # fmt: skip
    redone: list[int] = []
    on_ray, report = encode_catalog(tiny_bundle, texts, tmp_path / "ray", items_sha256="x", shard_size=50,
                                      workers=2, runner=RayRunner(), on_shard=redone.append)  # fmt: skip
    assert float(np.abs(on_ray - local).max()) < 1e-5
    assert report.backend == "ray" and report.reused_shards == 3 and sorted(redone + done) == list(range(6))


def _alive_pids(class_name: str) -> list[int]:
    """The processes of the live Ray actors whose class name holds ``class_name`` (a Ray worker
    names its process ``ray::CLASS...``; read from /proc, as the dashboard is off)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and class_name in title:
            pids.append(int(proc.name))
    return sorted(pids)


def test_a_ray_data_worker_killed_mid_encoding_changes_nothing(
    cluster: None, tiny_bundle: Path, tmp_path: Path
) -> None:
    """A worker process killed with SIGKILL after the first shard: Ray restarts it and retries its
    work, and the run finishes with the vectors a run in this process gives."""
    import os
    import signal

    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    local, _ = encode_catalog(tiny_bundle, texts, tmp_path / "local", items_sha256="x", shard_size=25)
    killed: list[int] = []

    def kill_a_worker(shard: int) -> None:
        if not killed:
            pids = _alive_pids("_ShardEncoder")
            assert pids, "no encoding worker found to kill"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    on_ray, report = encode_catalog(tiny_bundle, texts, tmp_path / "ray", items_sha256="x", shard_size=25,
                                      workers=2, runner=RayRunner(), on_shard=kill_a_worker)  # fmt: skip
    assert killed and float(np.abs(on_ray - local).max()) < 1e-5
    assert report.backend == "ray" and on_ray.shape == local.shape


@pytest.fixture
def milvus_uri(tmp_path: Path) -> Iterator[str]:
    with milvus_lite_server(tmp_path / "srv.db") as (uri, _):
        yield uri


def _by_replica(client: httpx.Client, body: dict[str, object], calls: int = 40) -> dict[str, set[str]]:
    """The items each replica answered with, over enough calls to reach both."""
    seen: dict[str, set[str]] = {}
    for _ in range(calls):
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        seen.setdefault(r.headers["x-recsys-replica"], set()).update(i["item_id"] for i in r.json()["items"])
    return seen


#: Where the two replicas' collection lives, how they read it, and how long one replica's edit
#: may take to reach the other: a Milvus Lite server process applies every edit at once; a
#: Milvus server read strongly shows it at once, read by session within moments.
SHARED = [
    pytest.param(("lite", Consistency.SESSION, 0.0), id="lite"),
    pytest.param(("server", Consistency.STRONG, 0.0), id="server-strong"),
    pytest.param(("server", Consistency.SESSION, 5.0), id="server-session"),
]


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[MilvusTarget, float]]:
    backend, consistency, lag = request.param
    if backend == "lite":
        with milvus_lite_server(tmp_path / "srv.db") as (uri, _):
            yield MilvusTarget(uri, "items", consistency), lag
        return
    with milvus_place("server", request, tmp_path) as (uri, name):
        yield MilvusTarget(uri, name, consistency), lag


def _settled(client: httpx.Client, body: dict[str, object], holds: Any, within: float) -> tuple[bool, str]:
    """Whether what each replica answers (20 calls a round) comes to satisfy ``holds`` within
    ``within`` seconds (in the first round when 0), and after how many rounds and seconds."""
    started, rounds = time.monotonic(), 0
    while True:
        rounds += 1
        if holds(_by_replica(client, body, calls=20)):
            return True, f"{rounds} round(s), {time.monotonic() - started:.2f} s"
        if time.monotonic() - started > within:
            return False, f"{rounds} round(s), {time.monotonic() - started:.2f} s"


def test_two_replicas_share_one_collection(
    cluster: None,
    tiny_bundle: Path,
    tmp_path: Path,
    shared: tuple[MilvusTarget, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An edit through one replica is seen by the other: at once where its reads are strong (and
    on Milvus Lite, which applies edits at once), within moments where they are by session; a
    removed item never comes back once it has gone. The replica that made an edit sees it at once."""
    from recsys_infer.scale import serving

    monkeypatch.setenv("RECSYS_INFER_API_KEY", "secret")
    target, lag = shared
    bundle = tmp_path / "bundle"
    reindex_bundle(tiny_bundle, None, bundle, milvus=target, progress=False)
    url = serving.deploy(bundle, replicas=2, port=free_port())
    key = {"x-api-key": "secret"}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            text = {"text": "solar powered espresso machine", "k": 5}
            added = client.post(
                "/items", headers=key, json={"items": [{"item_id": "zz-new", "text": text["text"]}]}
            )
            assert added.status_code == 200, added.text
            editor = added.headers["x-recsys-replica"]
            mine = client.post("/recommend", json=text)
            if mine.headers["x-recsys-replica"] == editor:  # read-your-writes, whatever the consistency
                assert "zz-new" in {i["item_id"] for i in mine.json()["items"]}
            both_see, took = _settled(client, text, lambda seen: len(seen) == 2 and all(
                "zz-new" in items for items in seen.values()), lag)  # fmt: skip
            print(f"{target.consistency}: both replicas returned the addition after {took}")
            assert both_see, f"the other replica did not see the addition within {lag} s"
            removed = client.delete("/items/zz-new", headers=key)
            assert removed.status_code == 200
            gone, took = _settled(client, {**text, "k": 20}, lambda seen: len(seen) == 2 and not any(
                "zz-new" in items for items in seen.values()), lag)  # fmt: skip
            print(f"{target.consistency}: neither replica returned the removed item after {took}")
            assert gone, f"a replica still returned the removed item after {lag} s"
            seen = _by_replica(client, {**text, "k": 20})  # and it never comes back
            assert not any("zz-new" in items for items in seen.values())
            refused = client.post("/admin/swap", headers=key, json={"bundle": str(bundle)})
            assert refused.status_code == 400 and "every replica" in refused.json()["error"]["message"]
            # Rolling out another bundle reaches every replica.
            smaller = tmp_path / "smaller"
            items = tmp_path / "items.jsonl"
            rows = [json.loads(line) for line in (tiny_bundle / "catalog.jsonl").read_text().splitlines()][
                :100
            ]
            items.write_text(
                "".join(json.dumps({"item_id": r["item_id"], "text": r["text"]}) + "\n" for r in rows)
            )
            other = MilvusTarget(target.uri, f"{target.collection}_smaller", target.consistency)
            reindex_bundle(tiny_bundle, items, smaller, milvus=other, progress=False)
            serving.deploy(smaller, replicas=2, port=int(url.rsplit(":", 1)[1]))
            infos = {}
            for _ in range(40):
                r = client.get("/info")
                infos[r.headers["x-recsys-replica"]] = (r.json()["bundle"], r.json()["items"])
            assert set(infos.values()) == {(str(smaller.resolve()), 100)} and len(infos) == 2
    finally:
        serving.shutdown()


def test_a_replica_killed_under_load_is_replaced_while_the_other_answers(
    cluster: None, tiny_bundle: Path, tmp_path: Path, milvus_uri: str
) -> None:
    """One of two Ray Serve replicas killed (SIGKILL on its process) while a client keeps sending:
    the other answers throughout, and Ray Serve's controller starts a replacement."""
    import os
    import signal

    from recsys_infer.scale import serving

    bundle = tmp_path / "bundle"
    reindex_bundle(tiny_bundle, None, bundle, milvus=MilvusTarget(milvus_uri, "items"), progress=False)
    url = serving.deploy(bundle, replicas=2, port=free_port())
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            body = {"text": "solar powered espresso machine", "k": 5}
            before = _by_replica(client, body)
            assert len(before) == 2
            victim = _alive_pids("ServeReplica")[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            statuses: list[int] = []
            replicas: set[str] = set()
            while time.monotonic() - killed_at < 120:
                r = client.post("/recommend", json=body)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    replicas.add(r.headers["x-recsys-replica"])
                if len(replicas - set(before)) >= 1 and len(statuses) > 20:
                    break  # a replacement has answered
            failed = [s for s in statuses if s != 200]
            print(f"{len(statuses)} requests after the kill, {len(failed)} failed ({sorted(set(failed))}); "
                  f"a replacement answered after {time.monotonic() - killed_at:.1f} s")  # fmt: skip
            assert len(failed) <= 3, statuses  # at most the requests the dead replica held
            assert replicas - set(before), "no replacement replica answered within 120 s"
    finally:
        serving.shutdown()
