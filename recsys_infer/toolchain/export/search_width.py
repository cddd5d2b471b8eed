"""How wide a two-space bundle's index searches: ``ef_search`` widened until every kind of probe
query finds nearly all of its exact top 10.
"""

from __future__ import annotations

import logging

import numpy as np

from recsys_infer.ranking import recall_at_k
from recsys_infer.runtime.index import ExactIndex, HnswIndex

logger = logging.getLogger(__name__)


#: The recall@10 against exact search that every kind of probe query must reach before a
#: two-space bundle's ``ef_search`` stops widening, and the widest it goes.
EF_TARGET_RECALL = 0.99


EF_MAX = 1024


def choose_ef(index: HnswIndex, vectors: np.ndarray, kinds: dict[str, np.ndarray]) -> dict[str, float]:
    """Widen the index's ``ef_search`` (doubling from the configured floor) until each kind of
    probe query finds ``EF_TARGET_RECALL`` of its exact top 10, or ``EF_MAX``; the index keeps
    the chosen width. In the joined space a request reads one block of each item vector, and
    a graph built on whole vectors finds its neighbours less readily than a history's (on
    ml-latest-small at ef 64 it cost requests 0.039 Recall@10 of exact search's 0.31)."""
    ef = index.params.ef_search
    while True:
        index.set_ef_search(ef)
        by_kind = {kind: index_recall(index, vectors, q)[0] for kind, q in kinds.items() if len(q)}
        if min(by_kind.values()) >= EF_TARGET_RECALL or ef * 2 > EF_MAX:
            logger.info("ef_search %d: index recall@10 by query kind %s", ef, by_kind)
            short = {kind: r for kind, r in by_kind.items() if r < EF_TARGET_RECALL}
            if short:
                logger.warning(
                    "the HNSW index finds only %s of exact search's top 10 at ef_search %d, the widest "
                    "export tries (target %.2f): such queries lose quality to the index. Evaluate with and "
                    "without --exact to see how much; a larger M (export --recipe, [index] M) may help.",
                    ", ".join(f"{r:.3f} for {kind} queries" for kind, r in short.items()),
                    ef,
                    EF_TARGET_RECALL,
                )
            return by_kind
        ef *= 2


def index_recall(index: HnswIndex, vectors: np.ndarray, queries: np.ndarray) -> tuple[float, int]:
    """Recall@10 of the HNSW index against exact search, for user vectors of the probe set."""
    k = min(10, len(index))
    approx, _ = index.search(queries, k)
    exact, _ = ExactIndex(vectors).search(queries, k)
    return round(recall_at_k(approx, exact), 4), int(queries.shape[0])
