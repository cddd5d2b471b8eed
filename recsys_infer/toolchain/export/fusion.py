"""Choosing how a two-space bundle weighs its spaces, on the validation probe.

A sequence model's item head learns a space for "what comes next in a history"; the pretrained
encoder's own space knows what texts mean. Trained for histories alone, the head forgets the
second (a request read through it finds far less than the untrained encoder finds), so a
two-space export keeps both in one item vector (:class:`~recsys_infer.model.JoinedHead`) and
chooses here, on the probe's validation users, how much each query kind reads of each space:

- histories: the sequence tower's user vector beside the history's text view (the
  recency-weighted mean of its items' text vectors); the weight of the text view and the
  recency decay;
- requests: the request's trained vector beside its pretrained one; weight 0 for the trained
  block reads a request exactly as the untrained encoder would;
- history plus request: the share of each.

It also chooses the bundle's seen penalty (:func:`choose_seen_penalty`): how much a history's own
items lose when a caller lets them be returned.

Every choice includes the plain alternatives (trained space alone, text alone), so on the
validation users the chosen weights are never worse than either; ``chosen_on`` records each
candidate's score so that the choice can be checked. The test split is never read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_infer.runtime.manifest import MAX_SEEN_PENALTY, FusionSpec
from recsys_infer.runtime.users import unit_rows

logger = logging.getLogger(__name__)

#: Text-view weights tried for histories (relative to the user vector's 1; ``inf``: text alone).
HISTORY_TEXT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, math.inf)
#: Recency decays tried for the history's text view (1: a plain mean).
DECAYS = (1.0, 0.9, 0.7, 0.5)
#: Weights of a request's trained block tried (relative to its text block's 1).
REQUEST_TRAINED_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The history's share tried for queries with both a history and a request.
MIXES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRIC = "ndcg@10"
#: Seen penalties tried (the largest ranks every history item below every other item).
SEEN_PENALTIES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, MAX_SEEN_PENALTY)


@dataclass(frozen=True)
class ProbeQueries:
    """Validation queries, aligned: ``histories[i]`` (catalogue rows, oldest first) has target
    ``targets[i]``; ``requests[i]`` (or ``None``) describes that target."""

    histories: Sequence[Sequence[int]]
    targets: Sequence[int]
    requests: Sequence[str | None]


def _ndcg(scores: np.ndarray, targets: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k of one relevant item per row (``-inf`` scores are masked items)."""
    if len(targets) == 0:
        return float("nan")
    own = scores[np.arange(len(targets)), targets]
    rank = (scores > own[:, None]).sum(axis=1) + 1
    gains = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    return float(gains.mean())


def _masked(scores: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    out = scores.copy()
    for row, history in enumerate(histories):
        out[row, list(history)] = -np.inf
    return out


def _history_score(trained: np.ndarray, text: np.ndarray, weight: float) -> np.ndarray:
    """Scores of unit ``[user ; weight * text view]`` queries against ``[trained ; text]``
    items, times ``sqrt(2)`` (the items' own scale, common to every query kind)."""
    if math.isinf(weight):
        return text
    return (trained + weight * text) / math.sqrt(1.0 + weight * weight)


def _request_score(trained: np.ndarray, text: np.ndarray, weight: float) -> np.ndarray:
    return (weight * trained + text) / math.sqrt(1.0 + weight * weight)


def text_views(histories: Sequence[Sequence[int]], text: np.ndarray, decay: float, length: int) -> np.ndarray:
    """Unit recency-weighted means of each history's (newest ``length``) text vectors."""
    out = np.zeros((len(histories), text.shape[1]), dtype=np.float32)
    for row, history in enumerate(histories):
        recent = list(history)[-length:]
        weights = decay ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)
        out[row] = weights @ text[recent]
    return unit_rows(out)


def choose_fusion(
    queries: ProbeQueries,
    item_vectors: np.ndarray,
    users: np.ndarray,
    request_vectors: np.ndarray,
    *,
    trained_dim: int,
    max_history: int,
) -> FusionSpec:
    """The weights with the best validation NDCG@10 for each query kind.

    ``item_vectors``: the stored two-space vectors ``(n, 2d)``; ``users``: the sequence tower's
    vectors of ``queries.histories``; ``request_vectors``: the request tower's two-space vectors
    of the non-empty ``queries.requests``, in order.
    """
    d = trained_dim
    scale = np.float32(math.sqrt(2.0))
    trained_items, text_items = item_vectors[:, :d] * scale, item_vectors[:, d:] * scale
    targets = np.asarray(queries.targets)
    histories = queries.histories
    record: dict[str, Any] = {"split": "validation", "metric": METRIC, "users": len(targets)}
    record["history"], h_weight, h_decay, h_scores = _choose_history(
        users @ trained_items.T, histories, text_items, targets, max_history
    )
    history_weights = (0.0, 1.0) if math.isinf(h_weight) else (1.0, h_weight)
    fusion = FusionSpec(dims=(d, item_vectors.shape[1] - d), history=history_weights, decay=h_decay)

    with_request = [i for i, r in enumerate(queries.requests) if r]
    record["requests"] = len(with_request)
    if not with_request:
        logger.info("no probe request could be built from the catalogue: requests keep the text space")
        record["request"] = "not measured: the probe has no requests (requests read the text space alone)"
        record["mixed"] = "not measured"
        return FusionSpec(**{**_fields(fusion), "chosen_on": record})
    rows = np.asarray(with_request)
    r_trained = unit_rows(request_vectors[:, :d]) @ trained_items.T
    r_text = unit_rows(request_vectors[:, d:]) @ text_items.T
    record["request"], r_weight, r_scores = _choose_request(r_trained, r_text, targets[rows])
    picked = [histories[i] for i in with_request]
    record["mixed"], mix = _choose_mix(h_scores[rows], r_scores, picked, targets[rows])
    return FusionSpec(**{**_fields(fusion), "request": (r_weight, 1.0), "mix": mix, "chosen_on": record})


def _choose_history(
    s_user: np.ndarray, histories: Any, text_items: np.ndarray, targets: np.ndarray, max_history: int
) -> tuple[dict[str, Any], float, float, np.ndarray]:
    """The history's text-view weight and recency decay: the record, the weight, the decay, and
    the chosen scores."""
    best: tuple[float, float, float, np.ndarray] = (
        -1.0,
        0.0,
        DECAYS[0],
        s_user,
    )  # score, weight, decay, scores
    candidates = []
    for decay in DECAYS:
        s_text = text_views(histories, text_items, decay, max_history) @ text_items.T
        for weight in HISTORY_TEXT_WEIGHTS:
            if weight == 0.0 and decay != DECAYS[0]:
                continue  # the user vector alone does not depend on the decay
            scores = _history_score(s_user, s_text, weight)
            value = _ndcg(_masked(scores, histories), targets)
            candidates.append({"text_weight": weight, "decay": decay, METRIC: round(value, 5)})
            if value > best[0] + 1e-9:
                best = (value, weight, decay, scores)
    value, weight, decay, scores = best
    record = {
        "trained_only": next(c[METRIC] for c in candidates if c["text_weight"] == 0.0),
        "text_only": max(c[METRIC] for c in candidates if math.isinf(c["text_weight"])),
        "chosen": {"text_weight": weight, "decay": decay, METRIC: round(value, 5)},
        "candidates": [{**c, "text_weight": str(c["text_weight"])} for c in candidates],
    }
    return record, weight, decay, scores


def _choose_request(
    r_trained: np.ndarray, r_text: np.ndarray, targets: np.ndarray
) -> tuple[dict[str, Any], float, np.ndarray]:
    """The trained space's weight for requests: the record, the weight and the chosen scores."""
    candidates = []
    best_value, best_weight, best_scores = -1.0, 0.0, r_text
    for weight in REQUEST_TRAINED_WEIGHTS:
        scores = _request_score(r_trained, r_text, weight)
        value = _ndcg(scores, targets)
        candidates.append({"trained_weight": weight, METRIC: round(value, 5)})
        if value > best_value + 1e-9:
            best_value, best_weight, best_scores = value, weight, scores
    record = {
        "text_only": candidates[0][METRIC],
        "chosen": {"trained_weight": best_weight, METRIC: round(best_value, 5)},
        "candidates": candidates,
    }
    return record, best_weight, best_scores


def _choose_mix(
    h_scores: np.ndarray, r_scores: np.ndarray, histories: Any, targets: np.ndarray
) -> tuple[dict[str, Any], float]:
    """How a history sent with a request weighs the two. Both score matrices are those of unit
    queries (times one common factor), as the engine mixes them: mix * unit(history query) +
    (1 - mix) * unit(request query)."""
    candidates = []
    best = (-1.0, 0.5)
    for mix in MIXES:
        scores = mix * h_scores + (1 - mix) * r_scores
        value = _ndcg(_masked(scores, histories), targets)
        candidates.append({"mix": mix, METRIC: round(value, 5)})
        if value > best[0] + 1e-9:
            best = (value, mix)
    record = {
        "history_alone": round(_ndcg(_masked(h_scores, histories), targets), 5),
        "request_alone": round(_ndcg(_masked(r_scores, histories), targets), 5),
        "chosen": {"mix": best[1], METRIC: round(best[0], 5)},
        "candidates": candidates,
    }
    return record, best[1]


def _fields(spec: FusionSpec) -> dict[str, Any]:
    return {
        "dims": spec.dims,
        "history": spec.history,
        "decay": spec.decay,
        "request": spec.request,
        "mix": spec.mix,
    }


def choose_seen_penalty(
    queries: np.ndarray, item_vectors: np.ndarray, histories: Sequence[Sequence[int]], targets: Sequence[int]
) -> tuple[float, dict[str, Any]]:
    """The penalty on history items with the best validation NDCG@10, history items left in the
    ranking (as ``exclude_seen=False`` serves them; the smallest on a tie), and its record.

    ``queries``: the engine's unit query vectors of one kind (histories alone, or histories with
    requests) for ``histories`` (catalogue rows); scores are their inner products with
    ``item_vectors``, as an exact search ranks them.
    """
    gains = np.zeros(len(SEEN_PENALTIES))
    repeats = 0
    for start in range(0, len(targets), 256):
        scores = queries[start : start + 256] @ item_vectors.T
        rows = np.arange(len(scores))
        seen = np.zeros(scores.shape, dtype=bool)
        for row, history in enumerate(histories[start : start + 256]):
            seen[row, list(history)] = True
        target = np.asarray(targets[start : start + 256])
        repeats += int(seen[rows, target].sum())
        for n, penalty in enumerate(SEEN_PENALTIES):
            gains[n] += _ndcg(scores - np.float32(penalty) * seen, target) * len(target)
    values = gains / max(1, len(targets))
    best = int(np.argmax(values > values.max() - 1e-9))  # the first (smallest) of the best
    record = {
        "users": len(targets),
        "targets_in_history": repeats,
        "chosen": {"penalty": SEEN_PENALTIES[best], METRIC: round(float(values[best]), 5)},
        "candidates": [
            {"penalty": p, METRIC: round(float(v), 5)} for p, v in zip(SEEN_PENALTIES, values, strict=True)
        ],
    }
    return SEEN_PENALTIES[best], record
