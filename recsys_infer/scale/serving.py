"""Replicated serving on Ray Serve: the same HTTP service, in ``N`` replicas behind Ray's proxy.

Each replica runs the service of :mod:`recsys_infer.serve` (its routes, limits, errors and
metrics) over its own engine, with Ray Serve's request batching (:func:`ray.serve.batch`) in
place of the in-process micro-batcher. Replicas of a bundle whose index is a Milvus collection
share it, so an edit through any replica (``POST /items``, ``DELETE /items/ID``) is seen by all.
A bundle with an embedded index would give each replica its own copy, so :func:`deploy`
refuses it unless asked (``allow_local_index``, read-only serving).

A new bundle is rolled out by deploying it again (:func:`deploy`, or ``recsys-infer serve NEW
--ray ADDRESS --detach``): Ray Serve replaces the replicas one at a time, each loading the new
bundle before the old one stops. ``POST /admin/swap`` is refused under Ray, since it would swap
one replica only.

Every response carries the replica that answered in the ``x-recsys-replica`` header.

Ray Serve config files can point at :func:`build` (``import_path:
recsys_infer.scale.serving:build``, ``args: {bundle: ..., replicas: 2}``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recsys_infer.errors import ConfigError, MissingDependencyError
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.options import RecommendOptions
from recsys_infer.runtime.types import Query, Recommendation
from recsys_infer.serve.app import Replica, create_app
from recsys_infer.serve.settings import API_KEY_ENV, ServeSettings

try:
    from ray import serve
except ImportError as e:  # pragma: no cover - the module is imported only for --ray
    raise MissingDependencyError("ray[serve]", "scale") from e

logger = logging.getLogger(__name__)

#: The Ray Serve application's name and its deployment's.
APP_NAME = "recsys-infer"
DEPLOYMENT = "Recommender"


class ServeBatcher:
    """The service's batcher on Ray Serve: concurrent requests in a replica are gathered by
    :func:`ray.serve.batch` (up to ``max_batch``, waiting at most ``max_wait_us``), grouped by
    their options, and answered with one :meth:`Engine.recommend_batch` per group, in a thread
    so the replica's event loop keeps taking requests."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int,
        max_wait_us: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_batch = on_batch
        batched: Any = self._batch  # Ray Serve's batching wrapper, tuned per service
        batched.set_max_batch_size(max_batch)
        batched.set_batch_wait_timeout_s(max_wait_us / 1e6)

    async def arecommend(
        self, history: Sequence[str] | None = None, text: str | None = None, *, options: RecommendOptions
    ) -> list[Recommendation]:
        query = Query(history, text)
        self.engine.validate(query, options)  # a bad request fails alone, before batching
        result = await self._batch((query, options))
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batch(
        self, calls: list[tuple[Query, RecommendOptions]]
    ) -> list[list[Recommendation] | BaseException]:
        return await asyncio.to_thread(self._answer, self.engine, calls)

    def _answer(
        self, engine: Engine, calls: list[tuple[Query, RecommendOptions]]
    ) -> list[list[Recommendation] | BaseException]:
        out: list[list[Recommendation] | BaseException] = [[] for _ in calls]
        groups: dict[RecommendOptions, list[int]] = {}
        for n, (_, options) in enumerate(calls):
            groups.setdefault(options, []).append(n)
        for options, members in groups.items():
            try:
                results = engine.recommend_batch([calls[n][0] for n in members], options=options)
            except Exception:  # answer one by one: only the bad request fails
                for n in members:
                    try:
                        out[n] = engine.recommend_batch([calls[n][0]], options=options)[0]
                    except Exception as e:
                        out[n] = e
                continue
            for n, recs in zip(members, results, strict=True):
                out[n] = recs
        if self.on_batch is not None:
            self.on_batch(len(calls))
        return out

    def close(self) -> None:
        """Nothing to stop: Ray Serve owns the batching loop."""


def this_replica() -> Replica:
    """What the service needs to know of the Ray Serve replica it runs in."""
    return Replica(
        name=replica_id(),
        batcher=lambda engine, settings, on_batch: ServeBatcher(
            engine, max_batch=settings.max_batch, max_wait_us=settings.max_wait_us, on_batch=on_batch
        ),
        swap_refusal=(
            "under Ray Serve a swap would change one replica only; roll the new bundle out to "
            "every replica by deploying it: recsys-infer serve NEW_BUNDLE --ray ADDRESS --detach"
        ),
    )


def replica_id() -> str:
    """This replica's id (``"local"`` outside Ray Serve)."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a replica
        return "local"


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class ServiceReplica:
    """One replica: the recsys-infer HTTP service over ``bundle`` (built in the replica)."""

    def __init__(self, bundle: str, settings: dict[str, Any], threads: int | None = None) -> None:
        self.bundle = bundle
        self.settings = ServeSettings(**settings)
        self.threads = threads

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.bundle, threads=self.threads, settings=self.settings, replica=this_replica)


def build(args: dict[str, Any]) -> Any:
    """A Ray Serve application builder, for ``serve run`` and config files: ``args`` has
    ``bundle`` and optionally ``replicas``, ``threads`` and ``settings`` (ServeSettings fields)."""
    if "bundle" not in args:
        raise ConfigError("the Ray Serve application needs args.bundle, the bundle to serve")
    return application(
        Path(args["bundle"]),
        replicas=int(args.get("replicas", 1)),
        threads=args.get("threads"),
        settings=ServeSettings(**args.get("settings", {})),
        allow_local_index=bool(args.get("allow_local_index", False)),
    )


def application(
    bundle: Path,
    *,
    replicas: int = 2,
    threads: int | None = None,
    settings: ServeSettings | None = None,
    allow_local_index: bool = False,
) -> Any:
    """The bound Ray Serve application: ``replicas`` replicas of the service over ``bundle``."""
    if replicas < 1:
        raise ConfigError(f"replicas must be at least 1, got {replicas}")
    bundle = Path(bundle).resolve()
    manifest = read_manifest(bundle)
    if manifest.index.kind != "milvus" and not allow_local_index:
        raise ConfigError(
            f"{bundle}'s index is embedded ({manifest.index.kind}): each replica would hold its own copy, "
            "and an edit through one would not reach the others. Move the index to Milvus first "
            "(recsys-infer index BUNDLE --out NEW --milvus URI), or serve read-only replicas with "
            "--allow-local-index"
        )
    env = {API_KEY_ENV: os.environ[API_KEY_ENV]} if os.environ.get(API_KEY_ENV) else {}
    options: dict[str, Any] = {"num_cpus": threads or 1}
    if env:
        options["runtime_env"] = {"env_vars": env}
    recommender: Any = ServiceReplica  # a Ray Serve Deployment once decorated
    deployment = recommender.options(num_replicas=replicas, ray_actor_options=options)
    return deployment.bind(str(bundle), asdict(settings or ServeSettings()), threads)


def deploy(
    bundle: Path,
    *,
    replicas: int = 2,
    threads: int | None = None,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    allow_local_index: bool = False,
) -> str:
    """Run (or roll out) the application on the Ray cluster at ``address`` (None: a local one),
    behind Ray Serve's HTTP proxy on ``host:port``; returns the service's URL once every
    replica is up. Deploying another bundle under the same name replaces the replicas one by
    one."""
    from .encoding import start_ray

    start_ray(address)
    app = application(
        bundle, replicas=replicas, threads=threads, settings=settings, allow_local_index=allow_local_index
    )
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def shutdown() -> None:
    """Stop the application and Ray Serve (the Ray cluster stays)."""
    serve.shutdown()  # type: ignore[no-untyped-call]
