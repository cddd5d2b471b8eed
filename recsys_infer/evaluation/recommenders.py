"""What `evaluate` can rank with: a bundle's engine, and the baselines it is compared against.

- :class:`EngineRecommender`: a bundle, through the same :class:`~recsys_infer.Engine` a service
  uses (HNSW by default, exact search on request).
- :class:`PopularityRecommender`: the most frequent items of the training part.
- :class:`ALSRecommender`: implicit-feedback matrix factorisation (the ``implicit`` library),
  fitted on the training part; a user's factors are solved from the history at query time, so
  it sees exactly the history the other models see. :func:`tune_als` picks its parameters on
  the validation split.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recsys_infer.data.probe import request_from_item
from recsys_infer.data.split import Example, Split
from recsys_infer.errors import ConfigError, MissingDependencyError
from recsys_infer.runtime.catalog import Catalog
from recsys_infer.runtime.engine import Engine

from .metrics import EvalResult, evaluate, score_ranked

logger = logging.getLogger(__name__)


class EngineRecommender:
    """A bundle's engine. ``top_k`` asks for at most the catalogue's size."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def top_k(self, histories: Sequence[Sequence[str]], k: int, *, exclude_seen: bool) -> list[list[str]]:
        k = min(k, len(self.engine))
        results = self.engine.recommend_batch(
            [{"history": list(h)} for h in histories], k=k, exclude_seen=exclude_seen
        )
        return [[r.item_id for r in recs] for recs in results]


class PopularityRecommender:
    """Items ranked by how often they occur in the training part."""

    name = "popularity"

    def __init__(self, train: Mapping[str, Sequence[str]], catalog: Catalog) -> None:
        counts = Counter(item for seq in train.values() for item in seq)
        # Every catalogue item is a candidate; ties (and unseen items) keep catalogue order.
        order = {item_id: i for i, item_id in enumerate(catalog.ids)}
        self.ranking = sorted(catalog.ids, key=lambda i: (-counts.get(i, 0), order[i]))

    def top_k(self, histories: Sequence[Sequence[str]], k: int, *, exclude_seen: bool) -> list[list[str]]:
        out = []
        for history in histories:
            seen = set(history) if exclude_seen else set()
            out.append(list(itertools.islice((i for i in self.ranking if i not in seen), k)))
        return out


@dataclass(frozen=True)
class ALSParams:
    factors: int = 64
    regularization: float = 0.1
    alpha: float = 10.0
    iterations: int = 20


class ALSRecommender:
    """Alternating least squares on implicit feedback (Hu, Koren & Volinsky 2008) via ``implicit``."""

    def __init__(
        self, train: Mapping[str, Sequence[str]], catalog: Catalog, params: ALSParams, *, seed: int = 0
    ):
        try:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits
        except ImportError as e:
            raise MissingDependencyError("implicit", extra="eval") from e
        self.name = "als"
        self.params = params
        self._column = {item_id: i for i, item_id in enumerate(catalog.ids)}
        self._ids = catalog.ids
        matrix = self._matrix(list(train.values()))
        with threadpool_limits(1, "blas"):  # implicit's own threads do the work
            self._model = AlternatingLeastSquares(
                factors=params.factors,
                regularization=params.regularization,
                alpha=params.alpha,
                iterations=params.iterations,
                random_state=seed,
            )
            self._model.fit(matrix, show_progress=False)

    def _matrix(self, sequences: Sequence[Sequence[str]]) -> Any:
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for r, seq in enumerate(sequences):
            for item in set(seq):
                rows.append(r)
                cols.append(self._column[item])
        data = np.ones(len(rows), dtype=np.float32)
        return csr_matrix((data, (rows, cols)), shape=(len(sequences), len(self._ids)))

    def top_k(self, histories: Sequence[Sequence[str]], k: int, *, exclude_seen: bool) -> list[list[str]]:
        from threadpoolctl import threadpool_limits

        user_items = self._matrix(histories)
        with threadpool_limits(1, "blas"):
            labels, _ = self._model.recommend(
                np.arange(len(histories)),
                user_items,
                N=min(k, len(self._ids)),
                filter_already_liked_items=exclude_seen,
                recalculate_user=True,
            )
        return [[self._ids[j] for j in row if j >= 0] for row in np.atleast_2d(labels)]


DEFAULT_ALS_GRID: dict[str, Sequence[Any]] = {
    "factors": (32, 64, 128),
    "regularization": (0.01, 0.1, 1.0),
    "alpha": (1.0, 10.0, 40.0),
}


def tune_als(
    split: Split,
    catalog: Catalog,
    validation: Sequence[Example],
    *,
    grid: Mapping[str, Sequence[Any]] = DEFAULT_ALS_GRID,
    metric: str = "ndcg@10",
    exclude_seen: bool = True,
    seed: int = 0,
) -> tuple[ALSParams, list[dict[str, Any]]]:
    """Grid search on the validation split only; returns the best parameters and every trial."""
    trials = []
    best: tuple[float, ALSParams] | None = None
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        params = ALSParams(**dict(zip(keys, values, strict=True)))
        model = ALSRecommender(split.train, catalog, params, seed=seed)
        result = evaluate(model, validation, ks=(10,), exclude_seen=exclude_seen)
        score = float(result.per_user[metric].mean())
        trials.append({**asdict(params), metric: score})
        logger.info("ALS %s: validation %s %.4f", params, metric, score)
        if best is None or score > best[0]:
            best = (score, params)
    if best is None:
        raise ConfigError("the ALS grid is empty")
    return best[1], trials


def evaluate_requests(
    engine: Engine,
    name: str,
    examples: Sequence[Example],
    catalog: Catalog,
    ks: Sequence[int],
    *,
    with_history: bool = False,
    exclude_seen: bool = False,
) -> EvalResult:
    """Text requests made of each target's own attributes (genres, category…), or of its text
    when it has none (:func:`~recsys_infer.data.probe.request_from_item`), ranked against the
    whole catalogue: how well a text request finds what it describes. Alone (the default), a
    request is a new user's query; ``with_history``, it is sent together with the user's history
    (``exclude_seen`` then masks the history, as for histories alone). Users whose target has no
    such attributes are left out, the same ones either way. Each request is ranked alone."""
    kept = [(e, request_from_item(catalog.get(e.target))) for e in examples]
    kept = [(e, r) for e, r in kept if r]
    depth = min(max(max(ks), 100), len(engine))
    ranked: list[list[str]] = []
    # One request per call, as a lone request is served: a dynamic int8 graph scales each
    # activation over the batch it runs, so a request ranked among 255 others would be scored
    # with a vector it never gets alone.
    for e, r in kept:
        query = {"text": r, **({"history": list(e.history)} if with_history else {})}
        (recs,) = engine.recommend_batch([query], k=depth, exclude_seen=with_history and exclude_seen)
        ranked.append([rec.item_id for rec in recs])
    mode = "history + request" if with_history else "requests"
    return score_ranked(
        f"{name} ({'history + text request' if with_history else 'text requests'})",
        [e for e, _ in kept],
        ranked,
        ks,
        settings={"mode": mode, **({"exclude_seen": exclude_seen} if with_history else {})},
    )
