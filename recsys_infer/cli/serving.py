"""``recsys-infer serve``: one process under uvicorn, or replicas on Ray Serve."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys_infer.enums import Spin

from .app import app
from .common import (
    BACKEND_HELP,
    DEFAULT_DEVICE,
    DEVICE_HELP,
    Command,
    HelpAll,
    HubRevision,
    friendly_errors,
    rare,
)

_LIMITS, _RUNTIME, _RAY = "Limits", "Runtime", "Ray Serve"


def _limit(help_text: str, env: str, default: int) -> Any:
    """A limit of :class:`~recsys_infer.serve.ServeSettings`; its default is shown as written
    there (a test holds the two equal)."""
    return typer.Option(
        min=1, help=f"{help_text} (env RECSYS_INFER_{env})", show_default=f"{default:,}", **rare(_LIMITS)
    )


def _ray(help_text: str, **kwargs: Any) -> Any:
    return typer.Option(help=help_text, **rare(_RAY), **kwargs)


_Limit = int | None
BundleArg = Annotated[
    str,
    typer.Argument(help="The bundle to serve: a directory, or hf://OWNER/NAME on the Hub.", metavar="BUNDLE"),
]
Host = Annotated[str, typer.Option(envvar="RECSYS_INFER_HOST", help="Interface to listen on.")]
Port = Annotated[int, typer.Option(min=1, max=65535, envvar="RECSYS_INFER_PORT", help="Port to listen on.")]
AccessLog = Annotated[
    bool,
    typer.Option(
        "--access-log/--no-access-log",
        envvar="RECSYS_INFER_ACCESS_LOG",
        help="A log line per request (off: writing it took an eighth of the event loop's time "
        "under load; /metrics counts every request by route and status).",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        envvar="RECSYS_INFER_THREADS",
        help="ONNX Runtime intra-op threads.",
        show_default="the physical cores",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help=DEVICE_HELP + " (env RECSYS_INFER_DEVICE)", show_default=DEFAULT_DEVICE)
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        help=BACKEND_HELP + " (env RECSYS_INFER_BACKEND)", show_default="onnxruntime", **rare(_RUNTIME)
    ),
]
OpenVinoPrecision = Annotated[
    str | None,
    typer.Option(
        help="OpenVINO's inference precision: bf16, f16 or f32. (env RECSYS_INFER_OPENVINO_PRECISION)",
        show_default="OpenVINO's: bf16 where the CPU has it",
        **rare(_RUNTIME),
    ),
]
ProviderOption = Annotated[
    list[str] | None,
    typer.Option(
        help="KEY=VALUE for the GPU provider, e.g. enable_cuda_graph=1 or trt_fp16_enable=1 "
        "(repeatable; env RECSYS_INFER_PROVIDER_OPTIONS=k=v,k=v).",
        show_default="none",
        **rare(_RUNTIME),
    ),
]
MaxWait = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="How long the micro-batcher waits to fill a batch, in µs. (env RECSYS_INFER_MAX_WAIT_US)",
        show_default="2,000",
        **rare(_RUNTIME),
    ),
]
RequestCache = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Keep this many request vectors, so a text seen again skips the transformer (0: off). "
        "(env RECSYS_INFER_REQUEST_CACHE)",
        show_default="0",
        **rare(_RUNTIME),
    ),
]
SpinOpt = Annotated[
    Spin | None,
    typer.Option(
        help="When ONNX Runtime's threads busy-wait: always (between runs too), run (only while a run "
        "lasts) or never (they sleep: a shorter tail and free cores when other work shares the "
        "machine). (env RECSYS_INFER_SPIN)",
        show_default="always",
        **rare(_RUNTIME),
    ),
]
AuthReads = Annotated[
    bool | None,
    typer.Option(
        "--auth-reads/--no-auth-reads",
        help="Require the API key for /recommend, /info and /metrics too. (env RECSYS_INFER_AUTH_READS)",
        show_default="no-auth-reads",
    ),
]
Ray = Annotated[
    str | None,
    _ray(
        "Serve replicas on Ray Serve: 'local' starts a local cluster, HOST:PORT joins one. The bundle's "
        "index should be in Milvus (see `index --milvus`). Needs the 'scale' extra.",
        envvar="RECSYS_INFER_RAY",
        show_default="one process, no Ray",
    ),
]
Replicas = Annotated[int, _ray("Replicas on Ray Serve.", min=1, envvar="RECSYS_INFER_REPLICAS")]
Detach = Annotated[bool, _ray("Deploy (or roll out a new bundle) and return, leaving the replicas running.")]
AllowLocalIndex = Annotated[
    bool, _ray("Let Ray Serve replicas each hold a copy of an embedded index (read-only serving).")
]


MaxBatchOpt = Annotated[_Limit, _limit("Most requests the micro-batcher runs at once.", "MAX_BATCH", 32)]
MaxBodyBytesOpt = Annotated[
    _Limit, _limit("Largest request body; larger gets 413.", "MAX_BODY_BYTES", 4_194_304)
]
MaxCostOpt = Annotated[
    _Limit,
    _limit("Result rows one body may ask for (k summed, explained x8); more gets 422.", "MAX_COST", 20_000),
]
MaxPendingOpt = Annotated[
    _Limit, _limit("Recommendations waiting at once; more get 429 with Retry-After.", "MAX_PENDING", 64)
]
MaxKOpt = Annotated[_Limit, _limit("Largest k.", "MAX_K", 1_000)]
MaxBatchRequestsOpt = Annotated[
    _Limit, _limit("Requests in one batch body (at most --max-pending).", "MAX_BATCH_REQUESTS", 64)
]
MaxHeaderBytesOpt = Annotated[
    _Limit,
    _limit("Largest request head (request line and headers); larger gets 431.", "MAX_HEADER_BYTES", 65_536),
]
HeaderTimeoutSOpt = Annotated[
    _Limit,
    _limit("Seconds a client may take to send a request's head; slower gets 408.", "HEADER_TIMEOUT_S", 10),
]
MaxHistoryOpt = Annotated[_Limit, _limit("History items in one request.", "MAX_HISTORY", 500)]
MaxTextCharsOpt = Annotated[_Limit, _limit("Characters of a request or item text.", "MAX_TEXT_CHARS", 2_000)]
MaxIdsPerFilterOpt = Annotated[_Limit, _limit("Ids in exclude or allow.", "MAX_IDS_PER_FILTER", 10_000)]
MaxItemsPerEditOpt = Annotated[_Limit, _limit("Items in one POST /items.", "MAX_ITEMS_PER_EDIT", 1_000)]


@app.command(rich_help_panel="Serve", cls=Command)
@friendly_errors
def serve(
    source: BundleArg,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    access_log: AccessLog = False,
    threads: Threads = None,
    device: DeviceOpt = None,
    backend: BackendOpt = None,
    openvino_precision: OpenVinoPrecision = None,
    provider_option: ProviderOption = None,
    max_batch: MaxBatchOpt = None,
    max_wait_us: MaxWait = None,
    max_body_bytes: MaxBodyBytesOpt = None,
    max_cost: MaxCostOpt = None,
    max_pending: MaxPendingOpt = None,
    max_k: MaxKOpt = None,
    max_batch_requests: MaxBatchRequestsOpt = None,
    max_header_bytes: MaxHeaderBytesOpt = None,
    header_timeout_s: HeaderTimeoutSOpt = None,
    max_history: MaxHistoryOpt = None,
    max_text_chars: MaxTextCharsOpt = None,
    max_ids_per_filter: MaxIdsPerFilterOpt = None,
    max_items_per_edit: MaxItemsPerEditOpt = None,
    request_cache: RequestCache = None,
    spin: SpinOpt = None,
    auth_reads: AuthReads = None,
    ray: Ray = None,
    replicas: Replicas = 2,
    detach: Detach = False,
    allow_local_index: AllowLocalIndex = False,
    revision: HubRevision = None,
    _help_all: HelpAll = False,
) -> None:
    """Serve a bundle over HTTP: /recommend, /embed, /items, /healthz, /info, /metrics (serve extra).

    Limits come from the flags, else RECSYS_INFER_* variables, else the defaults; GET /info shows
    those in force. With --ray, N replicas run on Ray Serve behind its proxy on HOST:PORT."""
    given = dict(locals())  # every option named after a ServeSettings field sets it
    import uvicorn  # the serve extra; a missing one is one line naming it (friendly_errors)

    from recsys_infer.runtime.hub import local_bundle
    from recsys_infer.serve import API_KEY_ENV, ServeSettings, create_app
    from recsys_infer.serve.protocol import bounded_http
    from recsys_infer.serve.settings import parse_provider_options

    bundle = local_bundle(source, revision)  # a Hub bundle is downloaded once, here
    if not bundle.is_dir():
        raise typer.BadParameter(f"no bundle directory at {bundle}", param_hint="BUNDLE")

    fields = {f.name for f in dataclasses.fields(ServeSettings)}
    given["provider_options"] = parse_provider_options(provider_option) if provider_option else None
    settings = ServeSettings.from_env(**{k: v for k, v in given.items() if k in fields})
    if not os.environ.get(API_KEY_ENV):
        typer.echo(f"catalogue editing routes are off: set {API_KEY_ENV} to enable them", err=True)
        if settings.auth_reads:
            raise typer.BadParameter(f"--auth-reads needs {API_KEY_ENV} set to the key clients will send")
    if ray is not None:
        _serve_on_ray(bundle, settings, ray, replicas, threads, host, port, detach, allow_local_index)
        return
    app = create_app(bundle, threads=threads, settings=settings)
    uvicorn.run(
        app, host=host, port=port, log_level="info", access_log=access_log, http=bounded_http(settings)
    )


def _serve_on_ray(
    bundle: Path,
    settings: Any,
    ray: str,
    replicas: int,
    threads: int | None,
    host: str,
    port: int,
    detach: bool,
    allow_local_index: bool,
) -> None:
    if detach and ray == "local":
        raise typer.BadParameter(
            "--detach leaves replicas on a running cluster, but --ray local starts one that ends with this "
            "command; start a cluster (`ray start --head`) and pass --ray HOST:PORT"
        )
    from recsys_infer.scale import serving

    url = serving.deploy(
        bundle, replicas=replicas, threads=threads, settings=settings, host=host, port=port,
        address=None if ray == "local" else ray, allow_local_index=allow_local_index,
    )  # fmt: skip
    typer.echo(f"{replicas} replica(s) of {bundle} serving at {url}")
    if detach:
        return
    typer.echo("Ctrl-C stops them")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serving.shutdown()
