"""The runtimes that run a bundle's graphs on the CPU, and choosing between them by measurement.

ONNX Runtime runs every bundle. OpenVINO (the ``openvino`` extra) opens the same ``.onnx``
files, with no second export; on CPUs with bf16 (AMX, AVX-512 BF16) it runs them in bf16 unless
told otherwise, which encoded a catalogue 1.7 to 2 times as fast as ONNX Runtime's fp32 on a
Zen 4 (AVX-512 BF16), and 3.4 times on a Xeon with AMX, within a cosine of 0.9999 of it
(``benchmarks/README.md``). :class:`OpenVinoSession` puts an OpenVINO compiled model behind
the part of ONNX Runtime's ``InferenceSession`` that the encoders call, so every tower runs on
either unchanged.

``backend="auto"`` measures rather than assumes (:func:`choose`): when the engine loads, each
tower runs its usual work (the item tower a batch of catalogue texts, the request and user towers
probe queries one at a time) on both runtimes, interleaved, and takes OpenVINO only where it is
faster by :data:`MARGIN` and its results agree with ONNX Runtime's: the top 10 of the probe's
queries overlap by :data:`MIN_OVERLAP` or more (the item tower: every vector within
:data:`MIN_ITEM_COSINE`). On a CPU without bf16 OpenVINO runs fp32 and is seldom faster, so ONNX
Runtime stays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from recsys_infer.enums import Backend
from recsys_infer.errors import BundleError, ConfigError, MissingDependencyError
from recsys_infer.ranking import cosines, overlap

from .types import Query

#: What to install for the OpenVINO backend.
OPENVINO_HINT = "pip install 'recsys-infer[openvino]'"
#: OpenVINO's inference precisions a caller may ask for (None: OpenVINO's own choice, bf16 where
#: the CPU has it, else fp32).
OPENVINO_PRECISIONS = ("bf16", "f16", "f32")
#: How much faster OpenVINO must measure for ``auto`` to take it: timings on a shared machine
#: wander by a few percent, and a tie should keep the reference runtime.
MARGIN = 0.10
#: A pause before each runtime's timed work: the threads of the runtime timed just before may
#: still be spinning for work (both do, for a while after each run) and would take the cores.
SETTLE_S = 0.05
#: The least mean overlap@10 (against ONNX Runtime, on the probe's queries) a request or user
#: tower must keep on OpenVINO for ``auto`` to take it.
MIN_OVERLAP = 0.99
#: The least cosine between an item vector from OpenVINO and ONNX Runtime's for ``auto`` to take
#: OpenVINO for the item tower (the index was built from ONNX Runtime's).
MIN_ITEM_COSINE = 0.999


def openvino() -> ModuleType:
    """The ``openvino`` module; :class:`MissingDependencyError` naming the extra when absent."""
    try:
        import openvino as module
    except ImportError as e:
        raise MissingDependencyError(
            "openvino", message=f"the OpenVINO backend needs OpenVINO, not installed here: {OPENVINO_HINT}"
        ) from e
    return module  # type: ignore[no-any-return]  # openvino ships no type information


def check_precision(precision: str | None) -> None:
    """A :class:`ConfigError` unless ``precision`` is one of :data:`OPENVINO_PRECISIONS` or None."""
    if precision is not None and precision not in OPENVINO_PRECISIONS:
        raise ConfigError(
            f"OpenVINO precision must be one of {', '.join(OPENVINO_PRECISIONS)} (or unset), "
            f"got {precision!r:.40}"
        )


def openvino_available() -> bool:
    try:
        openvino()
    except MissingDependencyError:
        return False
    return True


@dataclass(frozen=True)
class _Port:
    name: str


class OpenVinoSession:
    """One graph compiled by OpenVINO for the CPU, behind the calls the encoders make of an ONNX
    Runtime session (``get_inputs``, ``get_outputs``, ``get_providers``, ``run``).

    ``threads``: inference threads (None: OpenVINO's choice). ``streams``: runs that may go at
    once, each on ``threads / streams`` of them (a catalogue encoder's workers). ``precision``:
    one of :data:`OPENVINO_PRECISIONS`, or None for OpenVINO's default. Each calling thread gets
    its own infer request, so one session serves many threads, as an ONNX Runtime one does."""

    def __init__(
        self, path: Path, *, threads: int | None = None, streams: int = 1, precision: str | None = None
    ) -> None:
        check_precision(precision)
        ov = openvino()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"}
        if streams > 1:
            config["NUM_STREAMS"] = streams
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = max(threads, streams)
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as e:  # OpenVINO's own errors: an operator it lacks, a damaged file
            raise BundleError(
                f"OpenVINO could not compile {path.name} ({type(e).__name__}: {str(e)[:300]}); run this "
                "bundle with backend='onnxruntime'"
            ) from e
        self.precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        self._inputs = [port.any_name for port in self._compiled.inputs]
        self._outputs = [port.any_name for port in self._compiled.outputs]
        self._local = threading.local()

    def get_inputs(self) -> list[_Port]:
        return [_Port(name) for name in self._inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(name) for name in self._outputs]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

    def run(self, outputs: Sequence[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(dict(feed))
        return [np.array(result[name]) for name in outputs]  # a copy: the request reuses its buffers


@dataclass(frozen=True)
class TowerBackend:
    """Which runtime runs one tower, and why. ``precision``: what the graph computes in (the
    graph's own precision on ONNX Runtime, OpenVINO's inference precision on OpenVINO).
    ``ms``: with ``auto``, each runtime's time for the tower's probe work (best of the rounds);
    ``agreement``: OpenVINO's overlap@10 with ONNX Runtime (the item tower: its least cosine)."""

    backend: Backend
    precision: str
    why: str
    ms: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ({}, None)}


#: One tower's probe work on one runtime: runs it and returns the vectors it made.
Work = Callable[[], np.ndarray]


def choose(
    work: Mapping[Backend, Work],
    agreement: Callable[[np.ndarray, np.ndarray], float],
    *,
    gate: float,
    precisions: Mapping[Backend, str],
    rounds: int = 4,
) -> TowerBackend:
    """The faster runtime for a tower: ``work`` on each, interleaved for ``rounds`` rounds, each
    round in the other order (the best time of each kept), OpenVINO taken only when it is faster
    by :data:`MARGIN` and ``agreement(openvino_vectors, onnxruntime_vectors)`` is at least
    ``gate``."""
    best = {b: float("inf") for b in work}
    vectors: dict[Backend, np.ndarray] = {}
    for b, run in work.items():
        vectors[b] = run()  # a first run warms the graph up (OpenVINO compiles shapes lazily)
    order = list(work)
    for n in range(rounds):
        for b in order if n % 2 == 0 else order[::-1]:  # neither runtime always goes first
            time.sleep(SETTLE_S)  # the other runtime's threads stop spinning before this one runs
            started = time.perf_counter()
            work[b]()
            best[b] = min(best[b], time.perf_counter() - started)
    ms = {str(b): round(1000 * t, 2) for b, t in best.items()}
    ort, ov = Backend.ONNXRUNTIME, Backend.OPENVINO
    agrees = agreement(vectors[ov], vectors[ort])
    measured = f"{ms[ov]} ms on OpenVINO ({precisions[ov]}) against {ms[ort]} ms on ONNX Runtime"
    if agrees < gate:
        why = f"OpenVINO's results agree {agrees:.4f} < {gate} with ONNX Runtime's ({measured})"
        return TowerBackend(ort, precisions[ort], why, ms, round(agrees, 4))
    if best[ov] > best[ort] * (1 - MARGIN):
        why = f"OpenVINO is not {MARGIN:.0%} faster: {measured}"
        return TowerBackend(ort, precisions[ort], why, ms, round(agrees, 4))
    why = f"faster: {measured}, agreeing {agrees:.4f}"
    return TowerBackend(ov, precisions[ov], why, ms, round(agrees, 4))


Search = Callable[[np.ndarray], list[list[str]]]


def overlap_at_10(search: Search) -> Callable[[np.ndarray, np.ndarray], float]:
    """The mean share of each query's top 10 (``search``) that two runtimes' vectors have in
    common (:func:`recsys_infer.ranking.overlap`)."""
    return lambda a, b: overlap(search(a), search(b))


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The least cosine between matching rows of ``a`` and ``b`` (:func:`recsys_infer.ranking.cosines`)."""
    return cosines(a, b)["min_cosine"]


@dataclass(frozen=True)
class Probe:
    """What ``auto`` times each tower on: item texts (the item tower, as one batch), and
    histories and request texts (the user and request towers, one query at a time)."""

    texts: list[str]
    histories: list[list[str]]
    requests: list[str]


def tower_work(name: str, users: Any, items: Any, probe: Probe) -> Work:
    """The probe work of tower ``name`` on one runtime's encoders (``users`` a user encoder,
    ``items`` the item encoder): what that tower does most in service."""
    if name == "item":
        return lambda: np.asarray(items.encode(probe.texts))
    if name == "request":
        queries = [Query(text=t) for t in probe.requests]
    else:
        queries = [Query(history=h) for h in probe.histories]
    return lambda: np.vstack([users.encode([q]) for q in queries])


def measure(
    towers: Sequence[str],
    encoders: Mapping[Backend, tuple[Any, Any]],
    search: Search,
    probe: Probe,
    precisions: Mapping[str, Mapping[Backend, str]],
) -> dict[str, TowerBackend]:
    """:func:`choose` for each of ``towers``, each runtime's ``(user encoder, item encoder)`` in
    ``encoders``; ``precisions``: per tower, what each runtime computes in."""
    chosen = {}
    for name in towers:
        work = {b: tower_work(name, users, items, probe) for b, (users, items) in encoders.items()}
        agreement: Callable[[np.ndarray, np.ndarray], float] = least_cosine
        gate = MIN_ITEM_COSINE
        if name != "item":
            agreement, gate = overlap_at_10(search), MIN_OVERLAP
        chosen[name] = choose(work, agreement, gate=gate, precisions=precisions[name])
    return chosen
