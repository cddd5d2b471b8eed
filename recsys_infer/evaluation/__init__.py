"""Offline evaluation: leave-one-out full ranking, bootstrap intervals, paired comparisons, baselines."""

from .metrics import (
    EvalResult,
    PairedDifference,
    Recommender,
    bootstrap_ci,
    eval_examples,
    evaluate,
    paired_difference,
    sample_examples,
    score_ranked,
)

__all__ = [
    "EvalResult",
    "PairedDifference",
    "Recommender",
    "bootstrap_ci",
    "eval_examples",
    "evaluate",
    "paired_difference",
    "sample_examples",
    "score_ranked",
]
