"""Exact search by hand, HNSW recall against exact search, and index persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys_infer.enums import Space
from recsys_infer.ranking import recall_at_k
from recsys_infer.runtime.index import ExactIndex, HnswIndex, HnswParams, grow_capacity


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries drawn around the same 20 centres, like users near their tastes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    points = unit(centres[rng.integers(0, 20, n + queries)] + 0.3 * rng.normal(size=(n + queries, dim)))
    return points[:n], points[n:]


def test_exact_index_by_hand() -> None:
    items = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    labels, scores = ExactIndex(items).search(np.array([[1.0, 0.0]]), 3)
    assert labels.tolist() == [[0, 2, 1]]
    np.testing.assert_allclose(scores, [[1.0, 0.6, 0.0]], atol=1e-6)
    labels, _ = ExactIndex(items).search(np.array([0.0, -1.0]), 4)  # 1-D query, k == n
    assert labels.tolist() == [[0, 3, 2, 1]]  # ties keep catalogue order
    assert labels.dtype == np.int64


def test_k_is_checked() -> None:
    index = ExactIndex(np.eye(3, dtype=np.float32))
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be between 1 and the index size"):
            index.search(np.ones((1, 3)), k)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        index.search(np.ones((1, 4)), 1)


def test_hnsw_recall_against_exact() -> None:
    items, queries = clustered(5000, 32, seed=0, queries=200)
    hnsw = HnswIndex.build(items, HnswParams(M=16, ef_construction=200, ef_search=64))
    approx, approx_scores = hnsw.search(queries, 10)
    exact, exact_scores = ExactIndex(items).search(queries, 10)
    assert recall_at_k(approx, exact) >= 0.95
    # Scores are cosines: the approximate top-1 is never better than the exact top-1.
    assert np.all(approx_scores[:, 0] <= exact_scores[:, 0] + 1e-5)
    assert np.all(np.diff(approx_scores, axis=1) <= 1e-6)
    assert hnsw.capacity == grow_capacity(5000) and len(hnsw) == 5000


def test_hnsw_round_trip_and_determinism(tmp_path: Path) -> None:
    items, queries = clustered(800, 16, seed=2, queries=50)
    first = HnswIndex.build(items, threads=1)
    second = HnswIndex.build(items, threads=1)
    first.save(tmp_path / "index.hnsw")
    loaded = HnswIndex.load(tmp_path / "index.hnsw", space=Space.IP, dim=16, params=HnswParams())
    a, sa = first.search(queries, 5)
    b, _ = second.search(queries, 5)
    c, sc = loaded.search(queries, 5)
    assert a.tolist() == b.tolist() == c.tolist()
    np.testing.assert_allclose(sa, sc)


def test_recall_helper() -> None:
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 9], [3, 4]])) == 0.75
    with pytest.raises(ValueError):
        recall_at_k(np.zeros((1, 2)), np.zeros((2, 2)))


def test_l2_space_is_refused() -> None:
    with pytest.raises(ValueError, match="use 'ip'"):
        HnswIndex.build(np.eye(4, dtype=np.float32), space=Space.L2)
