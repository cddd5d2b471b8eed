"""``recsys-infer serve``: the engine behind HTTP (FastAPI on uvicorn).

One process owns the engine, its index and catalogue; concurrent requests go through the
micro-batcher. Routes:

- ``POST /recommend``: one request (``history`` and/or ``text``, ``k``, filters, ``explain``),
  or a batch as ``{"requests": [...]}``;
- ``POST /items`` (add, or replace with ``"replace": true``), ``DELETE /items/{item_id}``,
  ``POST /admin/save`` (persist edits into the bundle, atomically), ``POST /admin/swap`` (load
  another bundle and switch to it without dropping requests): these need the API key from the
  ``RECSYS_INFER_API_KEY`` environment variable in an ``X-API-Key`` header, and are refused
  when that variable is unset;
- ``GET /healthz``, ``GET /metrics`` (Prometheus text format), and the OpenAPI schema at
  ``/openapi.json`` (docs at ``/docs``).

Inputs are validated with limits (:class:`Limits`); every refusal is a 4xx with a message that
says what to change. Edits made over HTTP are saved on shutdown too.

(No ``from __future__ import annotations`` here: FastAPI reads the route annotations, which
name dependencies local to :func:`create_app`, at definition time.)
"""

import asyncio
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from recsys_infer.errors import QueryError, RecsysError, UnknownItemError

from .runtime.batcher import MicroBatcher
from .runtime.engine import Engine, Recommendation

logger = logging.getLogger(__name__)

API_KEY_ENV = "RECSYS_INFER_API_KEY"


@dataclass(frozen=True)
class Limits:
    """What one HTTP request may ask for."""

    max_history: int = 500
    max_text_chars: int = 2000
    max_k: int = 1000
    max_batch: int = 256
    max_items_per_edit: int = 10_000
    max_ids_per_filter: int = 10_000


LIMITS = Limits()

Scalar = str | int | float | bool


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=LIMITS.max_history, description="Item ids, oldest first."
    )
    text: str | None = Field(
        default=None, max_length=LIMITS.max_text_chars, description="A free-text request."
    )
    k: int = Field(default=10, ge=1, le=LIMITS.max_k)
    exclude_seen: bool = True
    exclude: list[str] = Field(default_factory=list, max_length=LIMITS.max_ids_per_filter)
    allow: list[str] | None = Field(default=None, max_length=LIMITS.max_ids_per_filter)
    where: dict[str, Scalar | list[Scalar]] | None = Field(
        default=None,
        description="Keep items whose attribute equals the value (or, for a list, any of them); "
        "a list-valued attribute matches when it contains the value.",
    )
    explain: bool = False


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendBody] = Field(min_length=1, max_length=LIMITS.max_batch)


class ItemBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=LIMITS.max_text_chars)
    attributes: dict[str, Any] = Field(default_factory=dict)


class ItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemBody] = Field(min_length=1, max_length=LIMITS.max_items_per_edit)
    replace: bool = Field(default=False, description="Replace items that exist instead of refusing them.")


class SwapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1)


def attribute_filter(where: Mapping[str, Any]) -> Any:
    """A predicate on item attributes from the JSON ``where`` object."""
    wanted = {k: set(v) if isinstance(v, list) else {v} for k, v in where.items()}

    def keep(attributes: Mapping[str, Any]) -> bool:
        for key, values in wanted.items():
            have = attributes.get(key)
            have_set = set(have) if isinstance(have, list) else {have}
            try:
                if not have_set & values:
                    return False
            except TypeError:  # unhashable attribute values never match
                return False
        return True

    return keep


class Service:
    """The engine, its batcher and the service's counters; the API routes call into this."""

    def __init__(self, bundle: Path, *, threads: int | None, max_batch: int, max_wait_us: int) -> None:
        self.bundle = Path(bundle)
        self.threads = threads
        self.engine = Engine.load(self.bundle, device="auto", threads=threads)
        self.batcher = MicroBatcher(self.engine, max_batch=max_batch, max_wait_us=max_wait_us)
        self.dirty = False
        self._edit_lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "recsys_batch_size",
            "Requests per micro-batch run",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.errors = Counter("recsys_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.batcher.on_batch = self.batch_sizes.observe

    async def recommend(self, body: RecommendBody) -> list[Recommendation]:
        return await self.batcher.arecommend(
            body.history,
            body.text,
            k=body.k,
            exclude_seen=body.exclude_seen,
            exclude=body.exclude,
            allow=body.allow,
            where=attribute_filter(body.where) if body.where else None,
            explain=body.explain,
        )

    def swap(self, bundle: Path) -> None:
        """Load ``bundle`` and serve from it; requests in flight finish on the old engine."""
        with self._edit_lock:
            if self.dirty:
                raise QueryError("there are unsaved catalogue edits; POST /admin/save first, then swap")
            fresh = Engine.load(bundle, device="auto", threads=self.threads)
            self.engine = fresh
            self.batcher.engine = fresh
            self.bundle = Path(bundle)

    def save(self) -> Path:
        with self._edit_lock:
            path = self.engine.save(self.bundle, overwrite=True)
            self.dirty = False
            return path


def create_app(
    bundle: str | Path,
    *,
    threads: int | None = None,
    max_batch: int = 32,
    max_wait_us: int = 2000,
) -> FastAPI:
    """The ASGI app serving ``bundle`` (loaded when the app starts)."""
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder["service"] = Service(
            Path(bundle), threads=threads, max_batch=max_batch, max_wait_us=max_wait_us
        )
        try:
            yield
        finally:
            service = holder.pop("service")
            service.batcher.close()
            if service.dirty:
                logger.info("saving catalogue edits to %s on shutdown", service.bundle)
                service.save()

    app = FastAPI(
        title="recsys-infer",
        summary="Two-tower recommendations from a recsys-infer bundle.",
        version="1",
        lifespan=lifespan,
    )

    def service() -> Service:
        if "service" not in holder:
            raise HTTPException(503, "the service is starting or stopping")
        return holder["service"]

    def editor(x_api_key: Annotated[str | None, Header()] = None) -> Service:
        expected = os.environ.get(API_KEY_ENV)
        if not expected:
            raise HTTPException(
                403, f"catalogue editing is off: start the service with {API_KEY_ENV} set to enable it"
            )
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
            raise HTTPException(401, "a valid X-API-Key header is required for this route")
        return service()

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        if "service" in holder:
            s = holder["service"]
            s.requests.labels(name, str(response.status_code)).inc()
            s.latency.labels(name).observe(time.perf_counter() - started)
            if response.status_code >= 400:
                s.errors.labels(f"http_{response.status_code}").inc()
        return response

    @app.exception_handler(UnknownItemError)
    async def unknown_item(request: Request, e: UnknownItemError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(e)})

    @app.exception_handler(RecsysError)
    async def refused(request: Request, e: RecsysError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(e)})

    def render(recs: list[Recommendation]) -> list[dict[str, Any]]:
        return [r.to_json() for r in recs]

    @app.post("/recommend", summary="Recommend for one user, or for a batch of users")
    async def recommend(
        body: RecommendBody | BatchBody, s: Annotated[Service, Depends(service)]
    ) -> dict[str, Any]:
        items = len(s.engine)
        checks = body.requests if isinstance(body, BatchBody) else [body]
        too_big = [b.k for b in checks if b.k > items]
        if too_big:
            raise QueryError(f"k={too_big[0]} is larger than the catalogue ({items} items)")
        if isinstance(body, BatchBody):
            results = await asyncio.gather(*(s.recommend(b) for b in body.requests))
            return {"results": [{"items": render(r)} for r in results]}
        return {"items": render(await s.recommend(body))}

    @app.post("/items", summary="Add items (or replace them) in the live catalogue")
    def add_items(body: ItemsBody, s: Annotated[Service, Depends(editor)]) -> dict[str, Any]:
        ids = [i.item_id for i in body.items]
        texts = [i.text for i in body.items]
        attrs = [i.attributes for i in body.items]
        with s._edit_lock:
            if body.replace:
                known = [n for n, i in enumerate(ids) if i in s.engine.catalog]
                new = [n for n, i in enumerate(ids) if i not in s.engine.catalog]
                if known:
                    s.engine.update_items(
                        [ids[n] for n in known], [texts[n] for n in known], [attrs[n] for n in known]
                    )
                if new:
                    s.engine.add_items(
                        [ids[n] for n in new], [texts[n] for n in new], [attrs[n] for n in new]
                    )
            else:
                s.engine.add_items(ids, texts, attrs)
            s.dirty = True
        return {"items": len(s.engine), "changed": len(ids)}

    @app.delete("/items/{item_id}", summary="Remove an item from the live catalogue")
    def remove_item(item_id: str, s: Annotated[Service, Depends(editor)]) -> dict[str, Any]:
        with s._edit_lock:
            s.engine.remove_items([item_id])
            s.dirty = True
        return {"items": len(s.engine), "removed": item_id}

    @app.post("/admin/save", summary="Persist catalogue edits into the bundle (atomically)")
    def save(s: Annotated[Service, Depends(editor)]) -> dict[str, Any]:
        return {"saved": str(s.save()), "items": len(s.engine)}

    @app.post("/admin/swap", summary="Switch to another bundle without a restart")
    def swap(body: SwapBody, s: Annotated[Service, Depends(editor)]) -> dict[str, Any]:
        path = Path(body.bundle)
        if not path.is_dir():
            raise HTTPException(400, f"no bundle directory at {path}")
        s.swap(path)
        return {"bundle": str(path), "items": len(s.engine)}

    @app.get("/healthz", summary="Liveness and what is being served")
    def healthz(s: Annotated[Service, Depends(service)]) -> dict[str, Any]:
        return {
            "status": "ok",
            "bundle": str(s.bundle),
            "items": len(s.engine),
            "device": str(s.engine.device),
            "unsaved_edits": s.dirty,
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics(s: Annotated[Service, Depends(service)]) -> PlainTextResponse:
        return PlainTextResponse(generate_latest(s.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app
