"""Timing primitives: warm-up, ``perf_counter_ns`` loops, percentiles, interleaved rounds, and
transparent proxies that split a recommendation's time between its parts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

#: A measurement: what to call, one call at a time.
Call = Callable[[], object]


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and the mean of ``samples_ms`` (milliseconds), plus the sample count."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarise")
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(p50), 4),
        "p95": round(float(p95), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(a.mean()), 4),
        "n": int(a.size),
    }


def timed(calls: Sequence[Call], *, warmup: int) -> list[float]:
    """Run ``calls`` in order after ``warmup`` untimed ones; milliseconds per call."""
    for call in calls[:warmup]:
        call()
    out = []
    for call in calls:
        t = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def interleaved(
    plans: Mapping[str, Mapping[str, Sequence[Call]]], *, rounds: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Time every subject's calls for every measurement, round after round.

    ``plans[subject][measurement]`` is a list of calls. Within a round each measurement runs
    for every subject in turn before the next measurement starts, so drift of a shared machine
    hits all subjects alike. Returns ``samples[subject][measurement]``, pooled over rounds.
    """
    measurements: list[str] = []
    for plan in plans.values():
        measurements += [m for m in plan if m not in measurements]
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in plans}
    for _ in range(rounds):
        for m in measurements:
            for subject, plan in plans.items():
                if m in plan:
                    samples[subject].setdefault(m, []).extend(timed(plan[m], warmup=warmup))
    return samples


class Stopwatch:
    """Accumulated milliseconds of the calls a proxy forwarded."""

    def __init__(self) -> None:
        self.ms = 0.0

    def reset(self) -> None:
        self.ms = 0.0


class TimedCallable:
    """Wraps a callable (a tokenizer) and adds each call's wall time to a stopwatch, and that of
    its ``batches`` (a tokenizer's batching, run to its end here); every other attribute is the
    wrapped object's."""

    def __init__(self, wrapped: Any, watch: Stopwatch) -> None:
        self._wrapped = wrapped
        self._watch = watch

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter_ns()
        try:
            return self._wrapped(*args, **kwargs)
        finally:
            self._watch.ms += (time.perf_counter_ns() - t) / 1e6

    def batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        t = time.perf_counter_ns()
        try:
            made = list(self._wrapped.batches(*args, **kwargs))
        finally:
            self._watch.ms += (time.perf_counter_ns() - t) / 1e6
        return iter(made)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class TimedMethod:
    """Wraps an object and times one of its methods (``encode`` of an encoder, ``search`` of an
    index); everything else passes through."""

    def __init__(self, wrapped: Any, method: str, watch: Stopwatch) -> None:
        self._wrapped = wrapped
        self._method = method
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._wrapped, name)
        if name != self._method:
            return attr
        watch = self._watch

        def call(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter_ns()
            try:
                return attr(*args, **kwargs)
            finally:
                watch.ms += (time.perf_counter_ns() - t) / 1e6

        return call

    def __len__(self) -> int:
        return len(self._wrapped)
