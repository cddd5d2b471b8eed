"""The service: the engine behind HTTP (FastAPI on uvicorn).

(No ``from __future__ import annotations`` here: FastAPI reads the route annotations, which
name the per-app body models, at definition time.)
"""

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException
from starlette.routing import Match

from recsys_infer.errors import (
    BackendUnavailableError,
    BundleError,
    ConfigError,
    ConflictError,
    OverloadedError,
    QueryError,
    RecsysError,
    UnknownItemError,
)
from recsys_infer.runtime.batcher import MicroBatcher
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.options import EXPLAIN_COST, RecommendOptions, excerpt
from recsys_infer.runtime.schema import encode
from recsys_infer.runtime.types import Recommendation
from recsys_infer.version import __version__

from .guard import ERROR_TYPES, Guard, error_response
from .models import (
    BatchRecommendResponse,
    Bodies,
    EmbeddingsResponse,
    EmbedResponse,
    ErrorBody,
    HealthResponse,
    InfoResponse,
    ItemRemoved,
    ItemsChanged,
    RecommendResponse,
    Saved,
    Swapped,
    make_bodies,
)
from .settings import API_KEY_ENV, ServeSettings

logger = logging.getLogger(__name__)


#: The response header naming the replica that answered, when the app is one of several.
REPLICA_HEADER = "x-recsys-replica"


class Batcher(Protocol):
    """What the service asks of its batcher: the in-process :class:`MicroBatcher`, or one a
    replicated deployment brings (:class:`Replica`)."""

    engine: Engine

    async def arecommend(
        self, history: Sequence[str] | None = None, text: str | None = None, *, options: RecommendOptions
    ) -> list[Recommendation]: ...

    def close(self) -> None: ...


#: Builds a batcher over an engine, with the service's settings and a callback per batch run.
BatcherFactory = Callable[[Engine, ServeSettings, Callable[[int], None]], Batcher]


def micro_batcher(engine: Engine, settings: ServeSettings, on_batch: Callable[[int], None]) -> Batcher:
    """The single-process service's batcher: requests gathered in this process."""
    return MicroBatcher(
        engine,
        max_batch=settings.max_batch,
        max_wait_us=settings.max_wait_us,
        max_queue=settings.max_pending,
        on_batch=on_batch,
    )


@dataclasses.dataclass(frozen=True)
class Replica:
    """What a replicated deployment hands the service, which itself knows nothing of it:
    the replica's ``name`` (sent in :data:`REPLICA_HEADER` and ``/info``), its ``batcher``, and
    why ``POST /admin/swap`` is refused (a swap would change this replica alone)."""

    name: str
    batcher: BatcherFactory
    swap_refusal: str


#: Every status the service may answer with an error, each with the one error body, so that the
#: OpenAPI schema (and a client generated from it) reads errors as they are sent.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "model": ErrorBody,
        "description": f"error.type {kind!r}" + (" or 'over_limit'" if status == 422 else ""),
    }
    for status, kind in ERROR_TYPES.items()
}


#: The ids (histories and filters together) a body's options are built from on the event loop;
#: more are built on a worker thread, so that one large body does not hold up other clients
#: (190,000 ids in a 3.9 MB batch took the loop 80 ms).
_INLINE_IDS = 2_000


class OverLimitError(QueryError):
    """A request asks for more work than the service's limits allow (HTTP 422)."""


class Metrics:
    """The service's Prometheus metrics (one registry per app), named as Prometheus advises:
    ``_total`` counters, ``_seconds`` durations, process metrics and a ``build_info``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=r)  # python_info
        self.build = Info("recsys_build", "The package and what it serves", registry=r)
        self.requests = Counter(
            "recsys_http_requests", "HTTP responses by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "recsys_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_sizes = Histogram(
            "recsys_batch_size",
            "Requests per micro-batch run",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.errors = Counter("recsys_errors", "Error responses by kind", ["kind"], registry=r)
        self.pending = Gauge(
            "recsys_queue_depth", "Recommendations and embeddings accepted, not yet answered", registry=r
        )
        self.items = Gauge("recsys_catalogue_items", "Items in the catalogue being served", registry=r)
        self.engine: Engine | None = None
        r.register(_CacheCollector(self))

    def describe(self, engine: Engine, bundle: Path) -> None:
        """Fill ``build_info`` (and the item count) for the engine now serving."""
        manifest = engine.manifest
        self.build.info(
            {
                "version": __version__,
                "bundle": str(bundle),
                "schema_version": str(manifest.schema_version if manifest else ""),
                "device": engine.device_name,
                "precision": "/".join(sorted({str(t.precision) for t in manifest.towers.values()}))
                if manifest
                else "",
            }
        )
        self.items.set(len(engine))
        self.engine = engine

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(f"http_{status}").inc()


class _CacheCollector(Collector):
    """The request cache's counters, read from the engine being served at each scrape (a swap
    starts a new cache, so the counters restart with it)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        engine = self.metrics.engine
        stats = engine.request_cache() if engine is not None else None
        if stats is None:
            return
        for name, doc, value in (
            ("recsys_request_cache_hits", "Requests answered from the request cache", stats.hits),
            ("recsys_request_cache_misses", "Requests the request tower encoded", stats.misses),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("recsys_request_cache_entries", "Request vectors held", value=stats.entries)
        yield GaugeMetricFamily(
            "recsys_request_cache_bytes", "Memory of the request vectors held", value=stats.bytes
        )


class Service:
    """The engine, its batcher and the admission count; the routes call into this."""

    def __init__(
        self,
        bundle: Path,
        settings: ServeSettings,
        *,
        threads: int | None,
        metrics: Metrics,
        replica: Replica | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        self.settings = settings
        self.threads = threads
        self.replica = replica
        self.engine = self._load(self.bundle)
        make_batcher = replica.batcher if replica is not None else micro_batcher
        self.batcher: Batcher = make_batcher(self.engine, settings, metrics.batch_sizes.observe)
        self.metrics = metrics
        self.dirty = False
        self.edit_lock = threading.Lock()
        self._pending = 0
        self._pending_lock = threading.Lock()

    def _load(self, bundle: Path) -> Engine:
        try:
            return Engine.load(
                bundle,
                device=self.settings.device,
                threads=self.threads,
                provider_options=self.settings.provider_options or None,
                request_cache=self.settings.request_cache,
                spin=self.settings.spin,
                backend=self.settings.backend,
                openvino_precision=self.settings.openvino_precision or None,
            )
        except OSError as e:  # a file of it unreadable (permissions, a name too long): no 500
            raise BundleError(f"cannot read the bundle at {bundle}: {e.strerror or e}") from e

    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Hold ``n`` places among ``max_pending``; :class:`OverloadedError` when they are taken."""
        with self._pending_lock:
            if self._pending + n > self.settings.max_pending:
                raise OverloadedError(
                    f"{self._pending} recommendations are already waiting and this asks for {n} more; "
                    f"the limit is {self.settings.max_pending} (--max-pending). Retry shortly."
                )
            self._pending += n
            self.metrics.pending.set(self._pending)
        try:
            yield
        finally:
            with self._pending_lock:
                self._pending -= n
                self.metrics.pending.set(self._pending)

    async def recommend(self, bodies: list[Any]) -> list[list[Recommendation]]:
        with self.admit(len(bodies)):  # first: a body refused for overload costs nothing more
            ids = sum(len(b.history) + len(b.exclude) + len(b.allow or ()) for b in bodies)
            options: list[RecommendOptions]
            if ids > _INLINE_IDS:  # each id is checked: thousands take milliseconds, off the event loop
                options = await asyncio.to_thread(lambda: [b.options() for b in bodies])
            else:
                options = [b.options() for b in bodies]
            cost = sum(o.cost for o in options)
            if cost > self.settings.max_cost:
                raise OverLimitError(
                    f"this request asks for {cost} result rows (k summed over its requests, an explained "
                    f"result counting {EXPLAIN_COST}); the limit is {self.settings.max_cost} "
                    "(--max-cost). Ask for a smaller k, fewer requests per body, or explanations for "
                    "fewer of them."
                )
            calls = [
                self.batcher.arecommend(b.history, b.text, options=o)
                for b, o in zip(bodies, options, strict=True)
            ]
            if len(calls) == 1:  # the usual case: awaited directly, no task to gather
                return [await calls[0]]
            results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    def embed(self, body: Any) -> Any:
        """Vectors from the engine's towers: item texts, users (history and/or text), or, for
        TEI's ``inputs``, texts through the request or item tower as a bare list of vectors."""
        if body.inputs is not None:
            texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
            return self.embed_texts(texts, body.tower).tolist()
        if body.items is not None:
            kind, vectors = "items", self.embed_texts(list(body.items), "item")
        else:
            kind, users = "users", [{"history": u.history, "text": u.text} for u in body.users]
            with self.admit(len(users)):
                vectors = self.engine.encode_users(users)
        return {"kind": kind, "dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    def embed_texts(self, texts: list[str], tower: str) -> np.ndarray:
        """``texts`` through the item tower (``tower="item"``) or the request tower."""
        with self.admit(len(texts)):
            if tower == "item":
                return self.engine.encode_items(texts)
            return self.engine.encode_users([{"text": t} for t in texts])

    def count_tokens(self, texts: list[str], tower: str) -> int:
        """Tokens the tower read for ``texts`` (0 for an encoder without a tokenizer)."""
        encoder = self.engine.item_encoder if tower == "item" else self.engine.request_encoder
        tokenizer = getattr(encoder, "tokenizer", None)
        return sum(tokenizer.count_tokens(texts)) if tokenizer is not None else 0

    def openai_embeddings(self, body: Any) -> dict[str, Any]:
        """OpenAI's embeddings answer; ``model`` names the tower (see the body's model)."""
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        model = body.model.lower()
        tower = "item" if model in ("item", "items") or model.endswith("/item") else "request"
        vectors = self.embed_texts(texts, tower).astype("<f4")
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise QueryError(
                f"dimensions {body.dimensions} asked, but this bundle's vectors have {vectors.shape[1]}; "
                "leave dimensions out"
            )
        as_base64 = body.encoding_format == "base64"  # little-endian float32, as OpenAI sends it
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.tobytes()).decode() if as_base64 else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = self.count_tokens(texts, tower)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": body.model, "usage": usage}

    def swap(self, bundle: Path) -> None:
        """Load ``bundle`` and serve from it; requests in flight finish on the old engine."""
        with self.edit_lock:
            if self.replica is not None:
                raise QueryError(self.replica.swap_refusal)
            if self.dirty:
                raise ConflictError("there are unsaved catalogue edits; POST /admin/save first, then swap")
            fresh = self._load(bundle)
            self.engine = fresh
            self.batcher.engine = fresh
            self.bundle = Path(bundle)

    def save(self) -> Path:
        with self.edit_lock:
            path = self.engine.save(self.bundle, overwrite=True)
            self.dirty = False
            return path

    def info(self) -> dict[str, Any]:
        engine = self.engine
        towers = {}
        if engine.manifest is not None:
            towers = {
                n: {"file": t.file, "kind": t.kind, "precision": str(t.precision), "dim": t.dim}
                for n, t in engine.manifest.towers.items()
            }
        return {
            "version": __version__,
            "bundle": str(self.bundle),
            "schema_version": engine.manifest.schema_version if engine.manifest else None,
            "items": len(engine),
            "device": engine.device_name,
            "device_fallback": engine.device_fallback,
            "providers": list(getattr(engine.item_encoder, "providers", [])),
            "backends": {n: t.to_json() for n, t in engine.backends.items()},
            "towers": towers,
            "spaces": _spaces(engine),
            # the live count: edits since the bundle was written included
            "index": {**encode(engine.manifest.index), "count": len(engine)} if engine.manifest else None,
            "seen_penalty": {"history": engine.seen.penalty, "history + request": engine.seen.with_request},
            "limits": self.settings.to_json(),
            "request_cache": dataclasses.asdict(cache) if (cache := engine.request_cache()) else None,
            "replica": self.replica.name if self.replica else None,
            "editing": bool(os.environ.get(API_KEY_ENV)),
            "unsaved_edits": self.dirty,
        }


def _spaces(engine: Engine) -> list[dict[str, Any]]:
    """The spaces a served vector holds: the trained then the text space of a two-space bundle,
    or one space over all its components."""
    fusion = engine.manifest.fusion if engine.manifest is not None else None
    if fusion is None:
        return [{"name": "trained", "start": 0, "stop": engine.dim}]
    trained, text = fusion.dims
    return [
        {"name": "trained", "start": 0, "stop": trained},
        {"name": "text", "start": trained, "stop": trained + text},
    ]


#: Where Swagger UI's script and stylesheet are served from, for the page at /docs.
DOCS_STATIC = "/docs/static"


def create_app(
    bundle: str | Path,
    *,
    threads: int | None = None,
    settings: ServeSettings | None = None,
    max_batch: int | None = None,
    max_wait_us: int | None = None,
    replica: Callable[[], Replica] | None = None,
) -> FastAPI:
    """The ASGI app serving ``bundle`` (loaded when the app starts). ``settings`` default to
    :meth:`ServeSettings.from_env`; ``max_batch`` and ``max_wait_us`` override theirs.
    ``replica``: called once the app starts, when it is one replica of several (Ray Serve's,
    :mod:`recsys_infer.scale.serving`): what that deployment hands the service."""
    settings = settings or ServeSettings.from_env()
    _check_key_form(os.environ.get(API_KEY_ENV))
    if max_batch is not None:
        settings = dataclasses.replace(settings, max_batch=max_batch)
    if max_wait_us is not None:
        settings = dataclasses.replace(settings, max_wait_us=max_wait_us)
    holder: dict[str, Service] = {}
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder["service"] = Service(
            Path(bundle), settings, threads=threads, metrics=metrics, replica=replica() if replica else None
        )
        try:
            yield
        finally:
            service = holder.pop("service")
            service.batcher.close()
            if service.dirty:
                logger.info("saving catalogue edits to %s on shutdown", service.bundle)
                service.save()

    # FastAPI with /docs served from the package's own copy of Swagger UI (fastapi-offline), so
    # the page renders on a machine without internet; ReDoc, a second viewer, is left out.
    app = FastAPIOffline(
        title="recsys-infer",
        summary="Two-tower recommendations from a recsys-infer bundle.",
        version="1",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        redoc_url=None,
        static_url=DOCS_STATIC,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )
    app.add_middleware(
        Guard,
        max_body=settings.max_body_bytes,
        observe=metrics.observe,
        route_of=lambda scope: _route_of(app, scope),
    )
    if replica is not None:
        _name_the_replica(app, holder)
    _install_error_handlers(app, settings)
    deps = _Dependencies(holder, settings)
    bodies = make_bodies(settings)
    _recommend_routes(app, deps, bodies)
    _edit_routes(app, deps, bodies)
    _status_routes(app, deps, metrics)
    _errors_are_json(app)
    return app


def _route_of(app: FastAPI, scope: Any) -> str:
    """The template of the route ``scope`` is for (its mount, for static files), found for a
    request the router did not label (a 413 refused before routing, the docs pages), so that
    /metrics counts it under its route and keeps "unmatched" for paths no route serves."""
    for route in app.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


def _errors_are_json(app: FastAPI) -> None:
    """FastAPI files a route's declared error bodies under the route's own media type, text/plain
    for /metrics; errors are JSON on every route, so the schema says so."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    for status in ERROR_TYPES:
                        response = operation["responses"].get(str(status), {})
                        content = response.get("content", {})
                        if content and "application/json" not in content:
                            response["content"] = {"application/json": next(iter(content.values()))}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _name_the_replica(app: FastAPI, holder: dict[str, Service]) -> None:
    @app.middleware("http")
    async def replica_header(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        service = holder.get("service")
        if service is not None and service.replica is not None:
            response.headers[REPLICA_HEADER] = service.replica.name
        return response


class _Dependencies:
    """The route dependencies: the running service, and the API-key checks. The key is read
    through FastAPI's ``APIKeyHeader``, which also documents it in the OpenAPI schema; with
    reads open (the default) the read routes declare no key at all."""

    def __init__(self, holder: dict[str, Service], settings: ServeSettings) -> None:
        api_key = APIKeyHeader(name="X-API-Key", auto_error=False)

        def running() -> Service:
            if "service" not in holder:
                raise HTTPException(503, "the service is starting or stopping")
            return holder["service"]

        # Coroutines, not plain functions: FastAPI runs a plain dependency on its thread pool,
        # a thread hand-off per request for a dictionary lookup.
        async def service() -> Service:
            return running()

        async def editor(key: Annotated[str | None, Security(api_key)]) -> Service:
            _check_key(key, feature="catalogue editing")
            return running()

        async def keyed_reader(key: Annotated[str | None, Security(api_key)]) -> Service:
            _check_key(key, feature="reading (auth_reads is on)")
            return running()

        self.service, self.editor = service, editor
        self.reader = keyed_reader if settings.auth_reads else service


def _check_key_form(key: str | None) -> None:
    """A key a client can send: printable ASCII, as an HTTP header carries it (a key with other
    characters could never match, and every client would get 401)."""
    if key and not all(" " < c <= "~" for c in key):
        raise ConfigError(
            f"{API_KEY_ENV} must be printable ASCII without spaces, which an X-API-Key header can carry; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def _check_key(given: str | None, *, feature: str) -> None:
    expected = os.environ.get(API_KEY_ENV)
    if not expected:
        raise HTTPException(403, f"{feature} is off: start the service with {API_KEY_ENV} set to enable it")
    if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
        raise HTTPException(401, "a valid X-API-Key header is required for this route")


def _install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Any:
        problems = [
            {"loc": _loc(err.get("loc", ())), "message": str(err.get("msg"))[:200]} for err in e.errors()[:5]
        ]
        summary = "; ".join(f"{p['loc']}: {p['message']}" for p in problems)
        return error_response(422, summary or "the request body is not valid", errors=problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Any:
        return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(RecsysError)
    async def refused(request: Request, e: RecsysError) -> Any:
        if isinstance(e, OverloadedError):
            return error_response(429, str(e), headers={"Retry-After": str(settings.retry_after_s)})
        if isinstance(e, UnknownItemError):
            return error_response(404, str(e))
        if isinstance(e, ConflictError):
            return error_response(409, str(e))
        if isinstance(e, BackendUnavailableError):
            return error_response(503, str(e), headers={"Retry-After": str(settings.retry_after_s)})
        if isinstance(e, OverLimitError):
            return error_response(422, str(e), kind="over_limit")
        return error_response(400, str(e))


def _loc(parts: Any) -> str:
    shown = [str(p) if isinstance(p, int) else excerpt(p, 40).strip("'") for p in parts if p != "body"]
    return ".".join(shown) or "body"


def _json(content: Any) -> Response:
    """A JSON response encoded by orjson: a page of ten results with item texts and attributes
    takes it 3.5 µs, the standard library's encoder (Starlette's JSONResponse) 62. What orjson
    refuses, an integer beyond 64 bits in an item's attributes, goes to the standard library."""
    try:
        body = orjson.dumps(content)
    except orjson.JSONEncodeError:
        body = json.dumps(content, ensure_ascii=False, allow_nan=False).encode()
    return Response(body, media_type="application/json")


def _recommend_routes(app: FastAPI, deps: _Dependencies, bodies: Bodies) -> None:
    Many, Either = bodies.batch, bodies.either

    async def batch(body: Any, s: Service) -> Response:
        results = await s.recommend(list(body.requests))
        return _json({"results": [{"items": [r.to_json() for r in recs]} for recs in results]})

    @app.post(
        "/recommend",
        summary="Recommend for one user. A batch body ({'requests': [...]}) still works here but is "
        "deprecated (answered with a Deprecation header): send it to /recommend/batch",
        response_model=RecommendResponse | BatchRecommendResponse,
        operation_id="recommend",
    )
    async def recommend(body: Either, s: Annotated[Service, Depends(deps.reader)]) -> Any:  # type: ignore[valid-type]
        data: Any = body
        if isinstance(data, Many):
            response = await batch(data, s)
            response.headers["Deprecation"] = "true"
            response.headers["Link"] = '</recommend/batch>; rel="successor-version"'
            return response
        (recs,) = await s.recommend([data])
        return _json({"items": [r.to_json() for r in recs]})

    @app.post(
        "/recommend/batch",
        summary="Recommend for a batch of users, in one micro-batch",
        response_model=BatchRecommendResponse,
    )
    async def recommend_batch(body: Many, s: Annotated[Service, Depends(deps.reader)]) -> Any:  # type: ignore[valid-type]
        return await batch(body, s)

    Embed, Embeddings = bodies.embed, bodies.embeddings

    @app.post(
        "/embed",
        summary="Vectors from the towers: item texts ({'items': [...]}), users ({'users': [...]}), "
        "or texts as Text Embeddings Inference takes them ({'inputs': ...}: a bare list of vectors)",
        response_model=EmbedResponse | list[list[float]],
    )
    def embed(body: Embed, s: Annotated[Service, Depends(deps.reader)]) -> Any:  # type: ignore[valid-type]
        return _json(s.embed(body))

    @app.post(
        "/v1/embeddings",
        summary="OpenAI-compatible embeddings: model 'item' for the item tower, any other for requests",
        response_model=EmbeddingsResponse,
    )
    def embeddings(body: Embeddings, s: Annotated[Service, Depends(deps.reader)]) -> Any:  # type: ignore[valid-type]
        return _json(s.openai_embeddings(body))


#: OpenAPI links between the editing routes, so that a client generator (and Schemathesis's
#: stateful tests) can follow an item from its addition to a recommendation, its removal and a save.
_ADDED_LINKS = {
    "RecommendTheFirstAdded": {
        "operationId": "recommend",
        "requestBody": {
            "history": ["$request.body#/items/0/item_id"],
            "allow": ["$request.body#/items/0/item_id"],
            "exclude_seen": False,
            "k": 1,
        },
        "description": "The first item this call added, recommended: it is the only one allowed.",
    },
    "RemoveTheFirstAdded": {
        "operationId": "remove_item",
        "parameters": {"item_id": "$request.body#/items/0/item_id"},
        "description": "The first item this call added, removed again.",
    },
    "SaveTheEdit": {"operationId": "save", "description": "The edit made durable in the bundle."},
}
_REMOVED_LINKS = {"SaveTheEdit": _ADDED_LINKS["SaveTheEdit"]}


def _edit_routes(app: FastAPI, deps: _Dependencies, bodies: Bodies) -> None:
    Items, Swap = bodies.items, bodies.swap

    @app.post(
        "/items",
        summary="Add items (or, with replace, add or replace them) in the live catalogue",
        operation_id="add_items",
        responses={200: {"links": _ADDED_LINKS}},
    )
    def add_items(body: Items, s: Annotated[Service, Depends(deps.editor)]) -> ItemsChanged:  # type: ignore[valid-type]
        data: Any = body
        ids = [i.item_id for i in data.items]
        texts = [i.text for i in data.items]
        attrs = [i.attributes for i in data.items]
        with s.edit_lock:
            if data.replace:
                s.engine.upsert_items(ids, texts, attrs)
            else:
                s.engine.add_items(ids, texts, attrs)
            s.dirty = not s.engine.shared_index
        return ItemsChanged(items=len(s.engine), changed=len(ids))

    @app.delete(
        "/items/{item_id:path}",
        summary="Remove an item from the live catalogue (ids may hold '/')",
        operation_id="remove_item",
        responses={200: {"links": _REMOVED_LINKS}},
    )
    def remove_item(item_id: str, s: Annotated[Service, Depends(deps.editor)]) -> ItemRemoved:
        with s.edit_lock:
            s.engine.remove_items([item_id])
            s.dirty = not s.engine.shared_index
        return ItemRemoved(items=len(s.engine), removed=item_id)

    @app.post(
        "/admin/save", summary="Persist catalogue edits into the bundle (crash-safe)", operation_id="save"
    )
    def save(s: Annotated[Service, Depends(deps.editor)]) -> Saved:
        return Saved(saved=str(s.save()), items=len(s.engine))

    @app.post("/admin/swap", summary="Switch to another bundle without a restart")
    def swap(body: Swap, s: Annotated[Service, Depends(deps.editor)]) -> Swapped:  # type: ignore[valid-type]
        data: Any = body
        path = Path(data.bundle)
        try:
            found = path.is_dir()
        except OSError:  # a name too long for the file system, say: no such directory either
            found = False
        if not found:
            raise HTTPException(404, f"no bundle directory at {excerpt(data.bundle, 200)}")
        s.swap(path)
        return Swapped(bundle=str(path), items=len(s.engine))


def _status_routes(app: FastAPI, deps: _Dependencies, metrics: Metrics) -> None:
    @app.get("/healthz", summary="Liveness and what is being served")
    def healthz(s: Annotated[Service, Depends(deps.service)]) -> HealthResponse:
        return HealthResponse(
            status="ok",
            bundle=s.bundle.name,  # open to all, so the folder's name, not where it lies
            items=len(s.engine),
            device=s.engine.device_name,
            device_fallback=s.engine.device_fallback,
            unsaved_edits=s.dirty,
        )

    @app.get("/info", summary="The bundle, its towers and index, and the service's limits")
    def info(s: Annotated[Service, Depends(deps.reader)]) -> InfoResponse:
        return InfoResponse.model_validate(s.info())

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus(s: Annotated[Service, Depends(deps.reader)]) -> PlainTextResponse:
        metrics.describe(s.engine, s.bundle)  # edits and swaps change these between scrapes
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)
