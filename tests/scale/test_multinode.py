"""A Ray cluster of three nodes on this machine, as a real cluster is laid out: a head and two
worker nodes, each its own raylet with its own resources (Ray's ``cluster_utils.Cluster``, which
Ray's own tests use for this). The commands reach it by address, as they would a remote one:
catalogue encoding whose shards run on several nodes, Ray Serve replicas on different nodes, and
a node lost in the middle of an encoding. Marked ``cluster``; ``.ci/run`` runs them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from recsys_infer.indexing.reindex import MilvusTarget, reindex_bundle  # noqa: E402
from recsys_infer.indexing.shards import encode_catalog  # noqa: E402
from recsys_infer.runtime.catalog import Catalog  # noqa: E402
from recsys_infer.scale.encoding import RayRunner  # noqa: E402
from tests.loopback import free_port, milvus_lite_server  # noqa: E402

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """The head (2 CPUs, where the driver and Ray Serve's controller live) and two worker nodes
    of one CPU each. The tests connect through its address only."""
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    for _ in range(2):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def _actor_nodes(class_name: str) -> dict[str, str]:
    """The live actors whose class name holds ``class_name``: actor id -> node id (from Ray's
    global control store, which needs no dashboard)."""
    from ray._private import state

    return {
        actor_id: info["Address"]["NodeID"]
        for actor_id, info in state.actors().items()
        if class_name in info["ActorClassName"] and info["State"] == "ALIVE"
    }


def test_encoding_shards_run_on_several_nodes(cluster: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    local, _ = encode_catalog(tiny_bundle, texts, tmp_path / "local", items_sha256="x", shard_size=25)
    runner = RayRunner(cluster.address)
    on_ray, report = encode_catalog(tiny_bundle, texts, tmp_path / "ray", items_sha256="x", shard_size=25,
                                      workers=3, threads=1, runner=runner)  # fmt: skip
    assert report.backend == "ray" and float(np.abs(on_ray - local).max()) < 1e-5
    print(f"shards per node: {sorted(runner.shards_by_node.values())}")
    assert len(runner.shards_by_node) >= 2, runner.shards_by_node  # the work crossed nodes
    assert sum(runner.shards_by_node.values()) == -(-len(texts) // 25)


def test_workers_the_cluster_cannot_hold_are_a_clear_error(
    cluster: Any, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Three workers of two CPUs do not fit nodes of 2, 1 and 1 CPUs: refused before any actor
    is asked for, naming the options to change, where Ray would wait for ever."""
    from recsys_infer.errors import ConfigError

    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    with pytest.raises(ConfigError, match=r"room for 1 encoding worker.*4 CPUs on 3 node.*--workers"):
        encode_catalog(tiny_bundle, texts, tmp_path / "ray", items_sha256="x", shard_size=25,
                       workers=3, threads=2, runner=RayRunner(cluster.address))  # fmt: skip


def test_a_node_lost_mid_encoding_changes_nothing(cluster: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    """After the first shard, a worker node that holds an encoding actor is removed (its raylet
    and workers killed): Ray Data starts the actor again on a node that is left, and the run
    finishes with the vectors a run in this process gives."""
    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    local, _ = encode_catalog(tiny_bundle, texts, tmp_path / "local", items_sha256="x", shard_size=25)
    head = cluster.head_node.node_id
    lost: list[str] = []

    def remove_a_worker_node(shard: int) -> None:
        if lost:
            return
        hosting = set(_actor_nodes("_ShardEncoder").values()) - {head}
        victim = next(n for n in cluster.worker_nodes if n.node_id in hosting)
        cluster.remove_node(victim, allow_graceful=False)
        lost.append(victim.node_id)

    runner = RayRunner(cluster.address)
    on_ray, _ = encode_catalog(tiny_bundle, texts, tmp_path / "ray", items_sha256="x", shard_size=25,
                                      workers=2, threads=1, runner=runner,
                                      on_shard=remove_a_worker_node)  # fmt: skip
    assert lost and float(np.abs(on_ray - local).max()) < 1e-5 and on_ray.shape == local.shape
    print(f"removed node {lost[0][:8]}; shards per node: {sorted(runner.shards_by_node.values())}")
    cluster.add_node(num_cpus=1)  # back to three nodes for the tests after this one
    cluster.wait_for_nodes()


def test_replicas_are_placed_on_different_nodes(cluster: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    """Two replicas of one CPU land on two nodes, and both answer."""
    from recsys_infer.scale import serving

    with milvus_lite_server(tmp_path / "srv.db") as (uri, _):
        bundle = tmp_path / "bundle"
        reindex_bundle(tiny_bundle, None, bundle, milvus=MilvusTarget(uri, "items"), progress=False)
        url = serving.deploy(bundle, replicas=2, threads=1, port=free_port(), address=cluster.address)
        try:
            nodes = _actor_nodes("ServeReplica")
            assert len(nodes) == 2 and len(set(nodes.values())) == 2, nodes
            # Ray Serve's proxy prefers the replica on its own node while that one keeps up: under
            # concurrent load the other node's replica answers too.
            with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(16) as pool:

                def ask(_: int) -> str:
                    r = client.post("/recommend", json={"text": "a tent for two", "k": 3})
                    assert r.status_code == 200, r.text
                    return str(r.headers["x-recsys-replica"])

                answered = Counter(pool.map(ask, range(400)))
            print(f"answers per replica under 16 concurrent clients: {sorted(answered.values())}")
            assert len(answered) == 2, answered
        finally:
            serving.shutdown()
