"""An in-process cache of request vectors: a text seen again skips the transformer.

Search and request logs repeat themselves (a few queries make up much of the traffic), and a
request's vector depends only on its text and the tower, so it can be kept. The cache wraps the
encoder that requests go through; it is keyed by the text as the tokenizer would see it
(Unicode NFC, surrounding and repeated whitespace collapsed: both tokenizers here split on
whitespace, so this changes no vector) and lives inside one engine, so a swap to another bundle
starts an empty one. Bounded by entry count (least recently used first out), safe under
threads; two threads missing on the same text both encode it and store the same vector.
"""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsys_infer.errors import ConfigError

from .encoder import Encoder


def cache_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    max_entries: int
    bytes: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CachedEncoder:
    """``inner`` behind an LRU of at most ``max_entries`` vectors (the :class:`Encoder` protocol)."""

    def __init__(self, inner: Encoder, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"the request cache needs a positive number of entries, got {max_entries!r}")
        self.inner = inner
        self.max_entries = max_entries
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def __getattr__(self, name: str) -> object:  # tokenizer, providers, io_binding... of the tower
        return getattr(self.inner, name)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [cache_key(t) for t in texts]
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                vector = self._vectors.get(key)
                if vector is None:
                    missing.setdefault(key, []).append(i)
                else:
                    self._vectors.move_to_end(key)
                    out[i] = vector
            # A miss is a text the tower encodes; a repeat within one call is served from it.
            self._hits += len(keys) - len(missing)
            self._misses += len(missing)
        if missing:
            order = list(missing)
            fresh = self.inner.encode([texts[missing[k][0]] for k in order])
            with self._lock:
                for key, vector in zip(order, fresh, strict=True):
                    out[missing[key]] = vector
                    self._vectors[key] = vector.copy()
                    self._vectors.move_to_end(key)
                while len(self._vectors) > self.max_entries:
                    self._vectors.popitem(last=False)
        return out

    def stats(self) -> CacheStats:
        with self._lock:
            n = len(self._vectors)
            return CacheStats(self._hits, self._misses, n, self.max_entries, n * self.dim * 4)

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()
