"""Catalogue encoding on a Ray cluster with Ray Data: a :class:`~recsys_infer.indexing.shards.ShardRunner`.

The shards still to do go through :func:`ray.data.Dataset.map_batches` to a pool of
``workers`` actors, each holding one ONNX Runtime session with its share of the cores; vectors
come back to the driver, which writes the shards (so workers need no shared filesystem).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import BackendUnavailableError, ConfigError, MissingDependencyError
from recsys_infer.indexing.shards import ShardWork
from recsys_infer.runtime.engine import load_item_tower


class _ShardEncoder:
    """A Ray Data actor: one ONNX Runtime session of the bundle's item tower."""

    def __init__(self, bundle: str, threads: int, runtime: str = "onnxruntime") -> None:
        self.encoder = load_item_tower(Path(bundle), threads=threads, backend=runtime)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import ray

        shards, vectors = [], []
        for shard, texts in zip(batch["shard"], batch["texts"], strict=True):
            shards.append(int(shard))
            vectors.append(self.encoder.encode([str(t) for t in texts]))
        node = ray.get_runtime_context().get_node_id()
        return {
            "shard": np.asarray(shards),
            "vectors": np.asarray(vectors, dtype=object),
            "node": np.asarray([node] * len(shards)),
        }


def start_ray(address: str | None, *, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (None: start a local one); a clear error when
    it cannot be reached."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "scale") from None
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _reachable(address)
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        raise BackendUnavailableError(
            f"cannot connect to the Ray cluster at {address!r} ({type(e).__name__}: {e}). Start it "
            "(`ray start --head`) or pass its address as --ray HOST:PORT; --ray without an address "
            "starts a local cluster"
        ) from e
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the address, when nothing listens there (``ray.init`` would retry
    for minutes)."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"a Ray address is HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise BackendUnavailableError(
            f"nothing answers at the Ray address {address!r} ({e}). Start the cluster (`ray start --head` "
            "prints its address) or check the address; --ray local starts a local cluster instead"
        ) from e


#: Seconds the pool of encoding actors may take to start before the run gives up.
ACTORS_START_S = 300


class RayRunner:
    """Encodes shards on the Ray cluster at ``address`` (None: a local one, started here)."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        #: Shards encoded per Ray node id, in the last run.
        self.shards_by_node: Counter[str] = Counter()

    def __call__(self, work: ShardWork) -> None:
        workers, threads = work.workers, work.threads
        cpus = None if self.address else max(os.cpu_count() or 1, workers * threads)
        ray = start_ray(self.address, num_cpus=cpus)
        _check_room(ray, workers, threads)
        rows: list[dict[str, Any]] = [{"shard": s, "texts": work.shard_texts(s)} for s in work.todo]
        # Longest texts first, so the slowest shards do not come last.
        rows.sort(key=lambda r: -sum(len(t) for t in r["texts"]))
        # The pool starts whole before any shard is handed out: otherwise the first actor up
        # takes every shard that is quick to encode while the others are still loading.
        context = ray.data.DataContext.get_current()
        waited, context.wait_for_min_actors_s = context.wait_for_min_actors_s, ACTORS_START_S
        try:  # a dataset keeps a copy of the context it was made under
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                _ShardEncoder,
                fn_constructor_kwargs={
                    "bundle": str(work.bundle.resolve()),
                    "threads": threads,
                    "runtime": work.runtime,
                },
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=threads,
                scheduling_strategy="SPREAD",  # over the nodes, not packed on the first with room
                batch_format="numpy",
            )
        finally:
            context.wait_for_min_actors_s = waited
        self.shards_by_node = Counter()
        try:
            for batch in dataset.iter_batches(batch_size=1, batch_format="numpy"):
                for shard, vectors, node in zip(batch["shard"], batch["vectors"], batch["node"], strict=True):
                    work.finished(int(shard), np.asarray(vectors, dtype=np.float32))
                    self.shards_by_node[str(node)] += 1
        except ray.exceptions.GetTimeoutError as e:  # room on paper, taken by other work
            raise BackendUnavailableError(
                f"{workers} encoding workers of {threads} CPU(s) each did not start on the Ray cluster "
                f"within {ACTORS_START_S} s: its CPUs are busy. Ask for fewer (--workers, --threads) or "
                "try again later; shards already encoded are kept, so the run resumes"
            ) from e


def _check_room(ray: Any, workers: int, threads: int) -> None:
    """Refuse, before any actor is asked for, a pool the cluster's nodes cannot hold: Ray would
    keep such actors pending for ever (and a pool given up on leaves them queued)."""
    nodes = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]]
    room = sum(int(cpus // threads) for cpus in nodes)
    if room < workers:
        raise ConfigError(
            f"the Ray cluster has room for {room} encoding worker(s) of {threads} CPU(s) each "
            f"({sum(nodes):g} CPUs on {len(nodes)} node(s)), and {workers} were asked for: ask for "
            "fewer (--workers, --threads) or add nodes"
        )
