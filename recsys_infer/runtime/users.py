"""User encoders: a query (history and/or request text) in, a unit user vector out.

- :class:`TextUserEncoder` writes the history as text (:class:`UserInputFormat`) and runs the
  text user tower.
- :class:`SequenceUserEncoder` gathers the history's item vectors, runs the sequence user tower
  on them, and sends a request text through the request tower (the item tower's text graph);
  with both, the two unit vectors are added and re-normalised.

The engine checks item ids before it calls an encoder, so encoders may assume they are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnxruntime as ort

from recsys_infer.errors import BundleError

from .catalog import Item
from .encoder import Encoder
from .providers import run_graph
from .userinput import UserInputFormat

if TYPE_CHECKING:
    from .engine import Query


class ItemLookup(Protocol):
    def items(self, ids: Sequence[str]) -> list[Item]: ...


class UserEncoder(Protocol):
    """Anything that turns queries into unit vectors of a fixed dimension."""

    @property
    def dim(self) -> int: ...

    def encode(self, queries: Sequence[Query]) -> np.ndarray: ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero), as float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class TextUserEncoder:
    """History written as text (newest first, after the request) through a text tower."""

    def __init__(self, encoder: Encoder, items: ItemLookup, user_input: UserInputFormat) -> None:
        """``items``: where the history's item texts are read (the engine's item store, or a
        :class:`~.catalog.Catalog`)."""
        self.encoder = encoder
        self.lookup = items
        self.user_input = user_input

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def text(self, query: Query) -> str:
        history = [item.text for item in self.lookup.items(query.history)] if query.history else []
        return self.user_input.render(history, query.text)

    def encode(self, queries: Sequence[Query]) -> np.ndarray:
        ids = list(dict.fromkeys(h for q in queries for h in q.history))  # one lookup for the batch
        texts = {item.item_id: item.text for item in self.lookup.items(ids)} if ids else {}
        return self.encoder.encode(
            [self.user_input.render([texts[h] for h in q.history], q.text) for q in queries]
        )


class SequenceUserEncoder:
    """The sequence tower over history item vectors, plus a text tower for requests.

    ``vectors_of`` returns the stored item vectors ``(n, dim)`` of a list of item ids (the item
    tower's output, the same vectors the index holds). Histories longer than ``max_history``
    keep their newest items. The ONNX session is safe to run from many threads, and so is this
    class.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        vectors_of: Callable[[Sequence[str]], np.ndarray],
        *,
        dim: int,
        max_history: int,
        requests: Encoder,
        io_binding: bool = False,
    ) -> None:
        names = [i.name for i in session.get_inputs()]
        if names != ["history", "history_mask"]:
            raise BundleError(
                f"the sequence tower graph has inputs {names}; expected ['history', 'history_mask']. "
                "Re-export it with `recsys-infer export`."
            )
        if requests.dim != dim:
            raise BundleError(f"the request tower emits {requests.dim}-d vectors, the sequence tower {dim}-d")
        self._session = session
        self._output = session.get_outputs()[0].name
        self._vectors_of = vectors_of
        self._dim = dim
        self.max_history = max_history
        self.requests = requests
        self.io_binding = io_binding

    @property
    def dim(self) -> int:
        return self._dim

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """User vectors from histories alone (each non-empty), ``(n, dim)``."""
        if not histories:
            return np.zeros((0, self._dim), dtype=np.float32)
        length = min(self.max_history, max(len(h) for h in histories))
        batch = np.zeros((len(histories), length, self._dim), dtype=np.float32)
        mask = np.zeros((len(histories), length), dtype=np.int64)
        recent = [list(history)[-length:] for history in histories]
        ids = list(dict.fromkeys(i for r in recent for i in r))  # one lookup for the batch
        row = {item_id: n for n, item_id in enumerate(ids)}
        vectors = self._vectors_of(ids) if ids else np.zeros((0, self._dim), dtype=np.float32)
        for b, items in enumerate(recent):
            if items:
                batch[b, length - len(items) :] = vectors[[row[i] for i in items]]
                mask[b, length - len(items) :] = 1
        feed: dict[str, np.ndarray] = {"history": batch, "history_mask": mask}
        out = run_graph(self._session, self._output, feed, io_binding=self.io_binding)
        return np.asarray(out, dtype=np.float32)

    def encode(self, queries: Sequence[Query]) -> np.ndarray:
        out = np.zeros((len(queries), self._dim), dtype=np.float32)
        with_history = [i for i, q in enumerate(queries) if q.history]
        with_text = [i for i, q in enumerate(queries) if q.text]
        if with_history:
            out[with_history] = self.encode_histories([queries[i].history for i in with_history])
        if with_text:
            out[with_text] += self.requests.encode([queries[i].text or "" for i in with_text])
        return unit_rows(out)
