"""Leave-one-out, full-ranking evaluation with bootstrap confidence intervals.

For each user the held-out item is the target and up to 50 most recent preceding items are the
history; every catalogue item is a candidate. With one target, Recall@K equals the hit rate,
NDCG@K is ``1 / log2(rank + 1)`` when the target ranks within K, and the reciprocal rank counts
ranks up to ``rank_depth`` (100 by default; deeper ranks add less than 0.01 each).

Every figure comes with a 95% bootstrap interval over users, and two models evaluated on the
same users are compared *paired*: the interval is that of the per-user difference, so "A beats
B" means that interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recsys_infer.data.split import Example, Split

HISTORY_LIMIT = 50
BOOTSTRAP_SAMPLES = 2000


class Recommender(Protocol):
    """Anything evaluable: top-``k`` item ids for each history (item ids, oldest first)."""

    name: str

    def top_k(self, histories: Sequence[Sequence[str]], k: int, *, exclude_seen: bool) -> list[list[str]]: ...


def eval_examples(split: Split, which: str = "test", *, history_limit: int = HISTORY_LIMIT) -> list[Example]:
    """The evaluation users of ``which`` split, each history cut to its ``history_limit`` most recent."""
    if which not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {which!r}")
    examples = split.test if which == "test" else split.validation
    return [Example(e.user_id, e.history[-history_limit:], e.target) for e in examples]


def sample_examples(examples: list[Example], users: int | None, seed: int = 0) -> list[Example]:
    """A seeded sample of ``users`` examples (all of them when ``users`` is None or larger)."""
    if users is None or users >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(examples), size=users, replace=False))
    return [examples[i] for i in keep]


def bootstrap_ci(
    values: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (resampling users)."""
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@dataclass
class EvalResult:
    """Per-user metric values of one model on one list of examples."""

    name: str
    user_ids: list[str]
    targets: list[str]
    per_user: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> int:
        return len(self.user_ids)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Each metric's mean and 95% interval."""
        out = {}
        for metric, values in self.per_user.items():
            lo, hi = bootstrap_ci(values)
            out[metric] = {"mean": float(values.mean()) if len(values) else math.nan, "ci95": [lo, hi]}
        return out

    def subset(self, keep: np.ndarray, name: str | None = None) -> EvalResult:
        """The same result restricted to the users where ``keep`` is true."""
        return EvalResult(
            name=name or self.name,
            user_ids=[u for u, k in zip(self.user_ids, keep, strict=True) if k],
            targets=[t for t, k in zip(self.targets, keep, strict=True) if k],
            per_user={m: v[keep] for m, v in self.per_user.items()},
            settings=self.settings,
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "users": self.users, "settings": self.settings, "metrics": self.summary()}


def metric_names(ks: Sequence[int]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")] + ["mrr"]


def score_ranked(
    name: str,
    examples: Sequence[Example],
    ranked: Sequence[Sequence[str]],
    ks: Sequence[int],
    *,
    settings: dict[str, Any] | None = None,
) -> EvalResult:
    """Per-user Recall@K, NDCG@K and reciprocal rank from ranked lists (best first)."""
    if len(examples) != len(ranked):
        raise ValueError(f"{len(examples)} examples but {len(ranked)} ranked lists")
    ranks = np.array(
        [
            (list(r).index(e.target) + 1) if e.target in r else 0
            for e, r in zip(examples, ranked, strict=True)
        ],
        dtype=np.int64,
    )
    per_user: dict[str, np.ndarray] = {}
    found = ranks > 0
    for k in ks:
        hit = found & (ranks <= k)
        per_user[f"recall@{k}"] = hit.astype(np.float64)
        per_user[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0)
    per_user["mrr"] = np.where(found, 1.0 / np.maximum(ranks, 1), 0.0)
    return EvalResult(
        name=name,
        user_ids=[e.user_id for e in examples],
        targets=[e.target for e in examples],
        per_user=per_user,
        settings=dict(settings or {}),
    )


def evaluate(
    recommender: Recommender,
    examples: Sequence[Example],
    *,
    ks: Sequence[int] = (10, 50),
    exclude_seen: bool = False,
    rank_depth: int = 100,
    batch_size: int = 256,
    progress: bool = False,
) -> EvalResult:
    """Rank every example's history with ``recommender`` and score the held-out targets."""
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {list(ks)}")
    depth = max(max(ks), rank_depth)
    ranked: list[list[str]] = []
    starts = range(0, len(examples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"evaluating {recommender.name}", unit="batch")
    for start in starts:
        chunk = examples[start : start + batch_size]
        ranked.extend(recommender.top_k([e.history for e in chunk], depth, exclude_seen=exclude_seen))
    return score_ranked(
        recommender.name,
        examples,
        ranked,
        ks,
        settings={"exclude_seen": exclude_seen, "rank_depth": depth, "ks": list(ks)},
    )


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-user difference ``a − b`` of one metric and its 95% bootstrap interval."""

    metric: str
    a: str
    b: str
    mean: float
    ci95: tuple[float, float]

    @property
    def significant(self) -> bool:
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "mean_difference": self.mean,
            "ci95": list(self.ci95),
            "significant": self.significant,
        }


def paired_difference(a: EvalResult, b: EvalResult, metric: str) -> PairedDifference:
    """``a − b`` on the users both were evaluated on (they must be the same users)."""
    if a.user_ids != b.user_ids or a.targets != b.targets:
        raise ValueError(f"{a.name} and {b.name} were not evaluated on the same users and targets")
    diff = a.per_user[metric] - b.per_user[metric]
    return PairedDifference(metric, a.name, b.name, float(diff.mean()), bootstrap_ci(diff))
