"""Micro-batching: concurrent ``recommend`` calls grouped into one ONNX run.

Callers on many threads (or coroutines) submit one request each. A worker thread (two by
default, so that one assembles results while the other runs a graph) takes the first waiting
request, gathers more until ``max_batch`` are waiting or ``max_wait_us`` has
passed since the first arrived, groups them by their options and by input length (so short
requests are not padded to long ones), and answers each group with one
:meth:`Engine.recommend_batch`. Under load the graph runs on batches, which is where a CPU's
throughput is; with a single caller the added latency is at most ``max_wait_us``.

Each request is checked before it is queued, so a bad one fails alone and at once; should a
batch still fail (an item removed meanwhile), its requests are answered one by one so that only
the bad one gets the error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from recsys_infer.errors import ConfigError, OverloadedError, QueryError

from .engine import Engine
from .options import RecommendOptions
from .types import Query, Recommendation
from .users import SequenceUserEncoder

logger = logging.getLogger(__name__)

#: Most requests one graph run takes, and how long the first waits for company (µs).
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_US = 2000


@dataclass
class _Pending:
    query: Query
    options: RecommendOptions
    future: Future[list[Recommendation]] = field(default_factory=Future)

    @property
    def bucket(self) -> int:
        """Input size on a log scale: history items plus request words."""
        size = len(self.query.history) + len((self.query.text or "").split())
        return math.ceil(math.log2(size + 1))


class BatcherClosedError(QueryError):
    """The micro-batcher was closed; no request is accepted any more."""


class MicroBatcher:
    """Groups concurrent recommendations into batched engine calls (see the module docstring).

    ``engine`` may be replaced while serving (hot swap): batches already running finish on the
    engine they started with; later ones use the new one.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_us: int = DEFAULT_MAX_WAIT_US,
        workers: int = 2,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch must be positive, got {max_batch}")
        if max_wait_us < 0:
            raise ConfigError(f"max_wait_us must be 0 or more, got {max_wait_us}")
        if workers < 1:
            raise ConfigError(f"workers must be positive, got {workers}")
        if max_queue < 1:
            raise ConfigError(f"max_queue must be positive, got {max_queue}")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        self.max_queue = max_queue
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._closed = False
        self.batches = 0  # counters for metrics: batches run and requests answered
        self.requests = 0
        self.on_batch = on_batch  # called with each batch's size (from a worker thread)
        self._count_lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, name=f"recsys-microbatcher-{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    # -- submitting -----------------------------------------------------------------------------

    def submit(
        self,
        history: Sequence[str] | None = None,
        text: str | None = None,
        *,
        options: RecommendOptions | None = None,
        **overrides: Any,
    ) -> Future[list[Recommendation]]:
        """Queue one request; the future resolves to what :meth:`Engine.recommend` returns.
        Raises :class:`OverloadedError` when ``max_queue`` requests are already waiting."""
        pending = self._prepare(history, text, RecommendOptions.of(options, **overrides))
        self._enqueue(pending)
        return pending.future

    def _prepare(
        self, history: Sequence[str] | None, text: str | None, options: RecommendOptions
    ) -> _Pending:
        if self._closed:
            raise BatcherClosedError("the micro-batcher is closed")
        query = Query(history, text)
        self.engine.validate(query, options)  # unknown items and a too-large k fail here, alone
        return _Pending(query, options)

    def _enqueue(self, pending: _Pending) -> None:
        # Puts are not atomic with the size check; the bound may be passed by a few concurrent
        # callers, never by a growing amount.
        if self._queue.qsize() >= self.max_queue:
            raise OverloadedError(
                f"{self.max_queue} requests are already waiting (max_queue); retry in a moment"
            )
        self._queue.put(pending)

    def _bypasses(self, pending: _Pending) -> bool:
        """A history without text in a sequence bundle runs no transformer: its small graph gains
        nothing from a batch, and the hand-off to a worker would cost more than it saves."""
        return not pending.query.text and isinstance(self.engine.user_encoder, SequenceUserEncoder)

    def _direct(self, pending: _Pending) -> list[Recommendation]:
        return self.engine.recommend_batch([pending.query], options=pending.options)[0]

    def recommend(
        self,
        history: Sequence[str] | None = None,
        text: str | None = None,
        *,
        options: RecommendOptions | None = None,
        **overrides: Any,
    ) -> list[Recommendation]:
        """Like :meth:`Engine.recommend`, through the batcher; blocks until answered."""
        pending = self._prepare(history, text, RecommendOptions.of(options, **overrides))
        if self._bypasses(pending):
            return self._direct(pending)
        self._enqueue(pending)
        return pending.future.result()

    async def arecommend(
        self,
        history: Sequence[str] | None = None,
        text: str | None = None,
        *,
        options: RecommendOptions | None = None,
        **overrides: Any,
    ) -> list[Recommendation]:
        """The same, for asyncio: awaits without blocking the event loop."""
        pending = self._prepare(history, text, RecommendOptions.of(options, **overrides))
        if self._bypasses(pending):
            return await asyncio.get_running_loop().run_in_executor(None, self._direct, pending)
        self._enqueue(pending)
        return await asyncio.wrap_future(pending.future)

    # -- the worker -----------------------------------------------------------------------------

    def _gather(self, first: _Pending) -> list[_Pending]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # closing: put the sentinel back for the loop to see
                self._queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._gather(first)
            groups: dict[tuple[RecommendOptions, int], list[_Pending]] = {}
            for p in batch:
                groups.setdefault((p.options, p.bucket), []).append(p)
            engine = self.engine
            for (options, _), members in groups.items():
                self._answer(engine, options, members)

    def _answer(self, engine: Engine, o: RecommendOptions, members: list[_Pending]) -> None:
        live = [p for p in members if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = engine.recommend_batch([p.query for p in live], options=o)
        except Exception as error:
            if len(live) == 1:
                live[0].future.set_exception(error)
                return
            for p in live:  # answer one by one: only the bad request fails
                try:
                    p.future.set_result(engine.recommend_batch([p.query], options=o)[0])
                except Exception as e:
                    p.future.set_exception(e)
            return
        with self._count_lock:
            self.batches += 1
            self.requests += len(live)
        if self.on_batch is not None:
            self.on_batch(len(live))
        for p, recs in zip(live, results, strict=True):
            p.future.set_result(recs)

    # -- closing --------------------------------------------------------------------------------

    def close(self, timeout: float | None = 10.0) -> None:
        """Answer what is queued, then stop the worker. Later submissions are refused."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
