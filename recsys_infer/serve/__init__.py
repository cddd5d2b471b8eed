"""``recsys-infer serve``: the engine behind HTTP (FastAPI on uvicorn).

One process owns the engine, its index and catalogue; concurrent requests go through the
micro-batcher. Routes:

- ``POST /recommend``: one request (``history`` and/or ``text``, ``k``, filters, ``explain``);
  ``POST /recommend/batch``: several, as ``{"requests": [...]}`` (still taken on
  ``/recommend`` too, answered with a ``Deprecation`` header);
- ``POST /items`` (add; with ``"replace": true`` add or replace, atomically),
  ``DELETE /items/{item_id}`` (ids may contain ``/``), ``POST /admin/save`` (persist edits into
  the bundle, crash-safely), ``POST /admin/swap`` (load another bundle and switch to it without
  dropping requests): these need the API key from ``RECSYS_INFER_API_KEY`` in an ``X-API-Key``
  header, and are refused when that variable is unset;
- ``GET /healthz`` (liveness, never behind the key), ``GET /info`` (bundle, towers, index and
  every limit in force), ``GET /metrics`` (Prometheus text), and the OpenAPI schema at
  ``/openapi.json``. With ``auth_reads`` on, ``/recommend``, ``/info`` and ``/metrics`` need
  the key too.

Limits (:class:`ServeSettings`, from flags or ``RECSYS_INFER_*`` variables) bound the body
size (413), the work one body asks for (422, ``over_limit``) and the requests waiting (429 with
``Retry-After``). Every error has the body ``{"error": {"type": ..., "message": ...}}`` (see
:mod:`recsys_infer.serve.guard`); an unexpected exception is logged and answered with a 500
that carries no trace. ``/metrics`` counts every response, 500s included. Edits made over HTTP
are saved on shutdown too.
"""

from .app import OverLimitError, Service, create_app
from .guard import ERROR_TYPES
from .settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "ERROR_TYPES", "OverLimitError", "ServeSettings", "Service", "create_app"]
