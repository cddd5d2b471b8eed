"""Text encoders: texts in, unit vectors out.

An :class:`Encoder` turns a sequence of texts into a ``float32 (n, dim)`` matrix. The runtime's
implementation, :class:`OnnxEncoder`, runs one tower's ONNX graph (pooling and normalisation are
inside the graph) after the tower's own tokenizer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np

from recsys_infer.errors import BundleError, ConfigError

from .providers import run_graph
from .tokenizer import TextTokenizer, length_batches

if TYPE_CHECKING:
    import onnxruntime as ort

_KNOWN_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})

#: Tokens per batch, padding included, when a text tower encodes many texts on the CPU. Batches
#: of 64 short item texts (about 1,200 tokens) ran 15% slower than batches of 512 tokens, whose
#: activations stay in the cores' caches; texts of 64 tokens lost nothing (benchmarks/README.md,
#: "Catalogue encoding").
CPU_BATCH_TOKENS = 512


class Encoder(Protocol):
    """Anything that maps texts to unit vectors of a fixed dimension."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class OnnxEncoder:
    """One tower: a tokenizer plus an ONNX Runtime session.

    ``encode`` batches texts of similar token counts (:func:`length_batches`: less padding), of
    up to ``batch_size`` texts and, with ``batch_tokens``, that many tokens padding included,
    then restores their order. ``workers`` > 1 runs that many batches at once, each in its own
    thread: give it a session of one intra-op thread, so that each batch keeps to one core (a
    catalogue's batches then run side by side instead of each split over all the cores, whose
    threads wait for each other on every operator; benchmarks/README.md, "Catalogue encoding").
    ONNX Runtime sessions may be run from many threads at once, so this class is thread-safe.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: TextTokenizer,
        *,
        dim: int,
        batch_size: int = 64,
        batch_tokens: int | None = None,
        workers: int = 1,
        io_binding: bool = False,
    ) -> None:
        inputs = [i.name for i in session.get_inputs()]
        unknown = set(inputs) - _KNOWN_INPUTS
        if unknown or "input_ids" not in inputs:
            raise BundleError(
                f"the tower graph has inputs {inputs}; expected input_ids, attention_mask and "
                "optionally token_type_ids. Re-export it with `recsys-infer export`."
            )
        if batch_size < 1 or workers < 1 or (batch_tokens is not None and batch_tokens < 1):
            raise ConfigError(
                f"batch_size, batch_tokens and workers must be positive, got {batch_size}, "
                f"{batch_tokens} and {workers}"
            )
        self._session = session
        self._inputs = inputs
        self._output = session.get_outputs()[0].name
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.workers = workers
        self.io_binding = io_binding  # on for CUDA sessions (see providers.run_graph)
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph on already-tokenised features; ``float32 (n, dim)``."""
        feed = {name: features[name] for name in self._inputs}
        out = run_graph(self._session, self._output, feed, io_binding=self.io_binding)
        return np.asarray(out, dtype=np.float32)

    def _checked(self, vectors: np.ndarray, n: int) -> np.ndarray:
        if vectors.shape != (n, self._dim):
            raise BundleError(f"the tower graph returned shape {vectors.shape}, expected ({n}, {self._dim})")
        return vectors

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        n = len(texts)
        if n == 1:  # a served request: no batching, no copy into a result matrix
            return self._checked(self.run(self.tokenizer(texts)), 1)
        out = np.empty((n, self._dim), dtype=np.float32)
        if n == 0:
            return out
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encoding", unit="text")
        batches = length_batches(self.tokenizer, texts, self.batch_size, self.batch_tokens)
        for idx, vectors in self._run_all(batches):
            out[idx] = self._checked(vectors, len(idx))
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def _run_all(
        self, batches: Iterator[tuple[list[int], dict[str, np.ndarray]]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Each batch's positions and vectors, in order; with ``workers`` > 1 that many run at
        once, and at most twice that many batches wait for a run (the features in memory stay
        bounded, beside the tokenizer's window of :data:`~.tokenizer.WINDOW` texts)."""
        if self.workers == 1:
            for idx, features in batches:
                yield idx, self.run(features)
            return
        pending: deque[tuple[list[int], Future[np.ndarray]]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="encode") as pool:
            for idx, features in batches:
                pending.append((idx, pool.submit(self.run, features)))
                if len(pending) >= 2 * self.workers:
                    idx, done = pending.popleft()
                    yield idx, done.result()
            while pending:
                idx, done = pending.popleft()
                yield idx, done.result()
