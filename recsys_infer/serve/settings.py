"""The service's limits and switches: one frozen object, from defaults, environment variables
(``RECSYS_INFER_<FIELD>``, e.g. ``RECSYS_INFER_MAX_COST=5000``) and flags, in that order."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from recsys_infer.enums import Backend, Spin
from recsys_infer.errors import ConfigError
from recsys_infer.runtime.backends import check_precision
from recsys_infer.runtime.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_US
from recsys_infer.runtime.options import EXPLAIN_COST
from recsys_infer.runtime.providers import parse_device

ENV_PREFIX = "RECSYS_INFER_"
#: The API key the editing routes (and, with ``auth_reads``, every route but ``/healthz``) need.
API_KEY_ENV = "RECSYS_INFER_API_KEY"


_BOOLEANS = ("auth_reads",)


@dataclass(frozen=True)
class ServeSettings:
    """What one HTTP request may ask for, how much may wait, and who may read.

    - ``max_body_bytes``: a larger body gets 413 before it is read.
    - ``max_header_bytes`` and ``header_timeout_s``: a request's head (request line and
      headers) larger, or slower to arrive, gets 431 or 408 and its connection closed
      (:mod:`recsys_infer.serve.protocol`).
    - ``max_cost``: result rows one ``/recommend`` body may ask for, ``k`` summed over a batch,
      an explained result counting as ``EXPLAIN_COST`` (8); more gets 422.
    - ``max_pending``: recommendations accepted but not yet answered; past it, 429 with
      ``Retry-After``, so overload is refused at once instead of queueing without bound. At
      least ``max_batch_requests``, so that every batch the limits allow can be admitted.
    - ``auth_reads``: also require the API key for ``/recommend``, ``/info`` and ``/metrics``.
    - ``request_cache``: request vectors kept for texts seen again (0: off).
    - ``spin``: when ONNX Runtime's threads busy-wait (:class:`~recsys_infer.enums.Spin`):
      ``always`` (its default), ``run`` (only while a run lasts) or ``never``, which frees the
      cores for the server's own threads and anything else on the machine.
    - ``device``: where the graphs run (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``tensorrt``);
      ``provider_options``: passed to the GPU provider (``RECSYS_INFER_PROVIDER_OPTIONS`` as
      ``key=value,key=value``).
    - ``backend``: the runtime of the graphs on the CPU, ``onnxruntime``, ``openvino`` or
      ``auto`` (measured per tower at load, :mod:`recsys_infer.runtime.backends`);
      ``openvino_precision``: ``bf16``, ``f16`` or ``f32`` for OpenVINO (empty: its default).
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: int = 10
    max_cost: int = 20_000
    max_pending: int = 64
    max_k: int = 1000
    max_batch_requests: int = 64
    max_history: int = 500
    max_text_chars: int = 2000
    max_ids_per_filter: int = 10_000
    max_items_per_edit: int = 1000
    auth_reads: bool = False
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_us: int = DEFAULT_MAX_WAIT_US
    retry_after_s: int = 1
    request_cache: int = 0
    spin: Spin = Spin.ALWAYS
    device: str = "auto"
    provider_options: dict[str, str] = field(default_factory=dict)
    backend: Backend = Backend.ONNXRUNTIME
    openvino_precision: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "device":
                parse_device(value)
            elif f.name == "spin":
                object.__setattr__(self, "spin", Spin.of(value))
            elif f.name == "backend":
                object.__setattr__(self, "backend", Backend.of(value))
            elif f.name == "openvino_precision":
                check_precision(value or None)  # empty: OpenVINO's default
            elif f.name == "provider_options":
                if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()
                ):
                    raise ConfigError(f"provider_options must map names to strings, got {value!r:.80}")
            elif f.name in _BOOLEANS:
                if not isinstance(value, bool):
                    raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if f.name in ("max_wait_us", "request_cache") else 1)
            ):
                raise ConfigError(f"{f.name} must be a positive integer, got {value!r}")
        if self.max_batch_requests > self.max_pending:
            raise ConfigError(
                f"max_batch_requests ({self.max_batch_requests}) is above max_pending "
                f"({self.max_pending}): a batch that large would be refused with 429 even on an idle "
                "server, and retried for ever. Raise --max-pending or lower --max-batch-requests"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Defaults, then ``RECSYS_INFER_*`` variables, then ``overrides`` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "explain_cost": EXPLAIN_COST}


def parse_provider_options(items: list[str] | str) -> dict[str, str]:
    """``["key=value", ...]`` or ``"key=value,key=value"`` as a dict of strings."""
    parts = [p for p in (items.split(",") if isinstance(items, str) else items) if p.strip()]
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"provider option {part!r:.60} is not KEY=VALUE (for example enable_cuda_graph=1)"
            )
        options[key.strip()] = value.strip()
    return options


def _parse(name: str, raw: str) -> int | bool | str | dict[str, str]:
    env = ENV_PREFIX + name.upper()
    if name in ("device", "backend", "openvino_precision"):
        return raw.strip()
    if name == "spin":  # always, run or never; 1 and 0 stand for always and never
        text = raw.strip().lower()
        return {"1": "always", "0": "never"}.get(text, text)
    if name == "provider_options":
        return parse_provider_options(raw)
    if name in _BOOLEANS:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{env}={raw!r:.40} is not a boolean; use 1 or 0")
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{env}={raw!r:.40} is not an integer") from None
