"""User encoders: a query (history and/or request text) in, a unit user vector out.

- :class:`TextUserEncoder` writes the history as text (:class:`UserInputFormat`) and runs the
  text user tower.
- :class:`SequenceUserEncoder` gathers the history's item vectors, runs the sequence user tower
  on them, and sends a request text through the request tower (the item tower's text graph);
  with both, the two unit vectors are mixed and re-normalised. A two-space bundle
  (:class:`~.manifest.FusionSpec`) also reads the history's pretrained text vectors, and weighs
  each space by the weights its export chose on validation.

The engine checks item ids before it calls an encoder, so encoders may assume they are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from recsys_infer.errors import BundleError

from .catalog import Item
from .encoder import Encoder
from .manifest import FusionSpec
from .providers import run_graph
from .userinput import UserInputFormat

if TYPE_CHECKING:
    import onnxruntime as ort

    from .types import Query


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


def add_offsets(vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Item vectors plus learned per-item offsets: rows of unit length.

    The offsets live in the trained space. Where ``vectors`` are wider (a two-space bundle's
    ``[trained ; text]`` rows), they join the leading trained block, which is re-normalised to
    the length it had, so each block keeps its share and the text block is left as it was.
    """
    width = offsets.shape[1]
    if vectors.shape[1] == width:
        return unit_rows(vectors + offsets)
    if vectors.shape[1] < width:
        raise BundleError(f"item offsets are {width}-d, wider than the {vectors.shape[1]}-d item vectors")
    block = vectors[:, :width]
    length = np.linalg.norm(block, axis=1, keepdims=True)
    joined = unit_rows(block / np.maximum(length, 1e-12) + offsets) * length
    return np.concatenate([joined, vectors[:, width:]], axis=1, dtype=np.float32)


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
    keep their newest items. With ``fusion`` the stored vectors hold two spaces
    (``[trained ; text] / sqrt(2)``): the tower reads the trained block, the text block gives the
    history's text view, and queries are weighted block by block (see :class:`FusionSpec`).
    Without it (one space), a history and a request are mixed half and half. The ONNX session
    is safe to run from many threads, and so is this class.
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
        fusion: FusionSpec | None = None,
    ) -> None:
        """``dim``: the sequence tower's output width (the trained block's, with ``fusion``)."""
        names = [i.name for i in session.get_inputs()]
        if names != ["history", "history_mask"]:
            raise BundleError(
                f"the sequence tower graph has inputs {names}; expected ['history', 'history_mask']. "
                "Re-export it with `recsys-infer export`."
            )
        width = dim if fusion is None else fusion.width
        if fusion is not None and fusion.dims[0] != dim:
            raise BundleError(
                f"the sequence tower emits {dim}-d vectors, the fusion's trained block is {fusion.dims[0]}-d"
            )
        if requests.dim != width:
            raise BundleError(
                f"the request tower emits {requests.dim}-d vectors, the item vectors are {width}-d"
            )
        self._session = session
        self._output = session.get_outputs()[0].name
        self._vectors_of = vectors_of
        self._tower_dim = dim
        self._dim = width
        self.max_history = max_history
        self.requests = requests
        self.io_binding = io_binding
        self.fusion = fusion

    @property
    def dim(self) -> int:
        return self._dim

    def _gather(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The histories' stored vectors, left-padded ``(n, length, dim)``, and their mask."""
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
        return batch, mask

    def _run(self, batch: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed: dict[str, np.ndarray] = {"history": batch, "history_mask": mask}
        out = run_graph(self._session, self._output, feed, io_binding=self.io_binding)
        return np.asarray(out, dtype=np.float32)

    def tower_vectors(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """The sequence tower's own output for histories (each non-empty), ``(n, dim)``."""
        if not histories:
            return np.zeros((0, self._tower_dim), dtype=np.float32)
        batch, mask = self._gather(histories)
        if self.fusion is None:
            return self._run(batch, mask)
        return self._run(trained_block(batch, self.fusion), mask)

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Unit user vectors from histories alone (each non-empty), ``(n, dim)``."""
        if not histories:
            return np.zeros((0, self._dim), dtype=np.float32)
        batch, mask = self._gather(histories)
        fusion = self.fusion
        if fusion is None:
            return self._run(batch, mask)
        users = self._run(trained_block(batch, fusion), mask)
        return history_query(users, text_view(batch, mask, fusion), fusion)

    def encode_requests(self, texts: Sequence[str]) -> np.ndarray:
        """Unit query vectors from request texts alone, ``(n, dim)``."""
        vectors = self.requests.encode(list(texts))
        if self.fusion is None:
            return vectors
        return weigh_blocks(vectors, self.fusion.request, self.fusion)

    def encode(self, queries: Sequence[Query]) -> np.ndarray:
        out = np.zeros((len(queries), self._dim), dtype=np.float32)
        with_history = [i for i, q in enumerate(queries) if q.history]
        with_text = [i for i, q in enumerate(queries) if q.text]
        both = set(with_history) & set(with_text)
        mix = 0.5 if self.fusion is None else self.fusion.mix
        if with_history:
            out[with_history] = self.encode_histories([queries[i].history for i in with_history])
            out[[i for i in with_history if i in both]] *= mix
        if with_text:
            requests = self.encode_requests([queries[i].text or "" for i in with_text])
            weights = np.array([[1.0 - mix if i in both else 1.0] for i in with_text], dtype=np.float32)
            out[with_text] += requests * weights
        return unit_rows(out)


def trained_block(batch: np.ndarray, fusion: FusionSpec) -> np.ndarray:
    """The trained space's unit vectors out of stored two-space vectors (last axis)."""
    return np.ascontiguousarray(batch[..., : fusion.dims[0]] * np.float32(np.sqrt(2.0)))


def text_view(batch: np.ndarray, mask: np.ndarray, fusion: FusionSpec) -> np.ndarray:
    """The history's text view: the unit recency-weighted mean of its items' text vectors,
    the newest weighing 1 and each step back ``fusion.decay`` times less. ``(n, text dim)``."""
    length = batch.shape[1]
    age = np.arange(length - 1, -1, -1, dtype=np.float32)  # left-padded: the newest is last
    weights = mask.astype(np.float32) * np.float32(fusion.decay) ** age
    text = batch[..., fusion.dims[0] :]
    return unit_rows(np.einsum("nl,nld->nd", weights, text))


def history_query(users: np.ndarray, text: np.ndarray, fusion: FusionSpec) -> np.ndarray:
    """Unit ``[w0 * user ; w1 * text view]`` for two-space search."""
    return weigh_blocks(np.concatenate([users, text], axis=1), fusion.history, fusion)


def weigh_blocks(vectors: np.ndarray, weights: Sequence[float], fusion: FusionSpec) -> np.ndarray:
    """Each block of ``[trained ; text]`` rows scaled by its weight, then the rows to unit length."""
    split = fusion.dims[0]
    out = np.empty_like(vectors, dtype=np.float32)
    out[:, :split] = vectors[:, :split] * np.float32(weights[0])
    out[:, split:] = vectors[:, split:] * np.float32(weights[1])
    return unit_rows(out)
