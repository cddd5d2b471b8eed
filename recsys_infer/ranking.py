"""Ranking fidelity: how far one ranking, or one set of vectors, strays from another.

The one home of the measures that export, compression, pruning, the bench and the index tests
all report: exact top-k by inner product, the overlap of two top-k lists (recall@k of an
approximate search against exact search is the same measure), and row-wise cosines. numpy only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["cosines", "overlap", "recall_at_k", "top_k"]


def top_k(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Each query row's ``k`` best item rows by inner product, best first (``k`` is capped at
    the number of items)."""
    k = min(k, items.shape[0])
    scores = queries @ items.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1), 1)


def overlap(
    found: Sequence[Sequence[Hashable]] | np.ndarray,
    truth: Sequence[Sequence[Hashable]] | np.ndarray,
    k: int | None = None,
) -> float:
    """Mean share of each row of ``truth`` (its first ``k``; default its whole length) that the
    same row of ``found`` holds among its first ``k``. Rows are item labels or ids."""
    if len(found) != len(truth) or len(truth) == 0:
        raise ValueError("overlap needs two rankings with the same, non-zero number of rows")
    shares = []
    for a, b in zip(found, truth, strict=True):
        shares.append(len(set(list(a)[:k]) & set(list(b)[:k])) / (k or len(b)))  # [:None] is all
    return float(np.mean(shares))


#: Recall@k of an approximate search (``found``) against exact search (``truth``).
recall_at_k = overlap


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean and lowest cosine between the rows of ``a`` and the same rows of ``b``."""
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
