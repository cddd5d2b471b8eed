"""The sequence model's levers, and choosing them on the validation split of the data trained.

A lever changes what the model can learn from a catalogue, and which way it should go depends
on the catalogue. Today there are two: whitening the encoder's item vectors
(:class:`~.model.ItemHead`), and a learned offset per item beside its text vector, of bounded
length (:data:`~.model.OFFSET_MAX_NORM`). A lever set to ``auto`` is chosen by trials, one
lever at a time in :data:`ORDER`: the best model so far and the same model with that lever
switched on each train for a few epochs from the same seed, and the one with the higher
validation NDCG@10 goes on. The winner's trial is not thrown away: training carries on from it.
Test users are never looked at.

``auto`` is not yet the default: a trial costs its length in epochs on top of the training, which
on the larger MovieLens set is more than half an hour, and trials score histories only, while on
ml-100k whitening led on validation histories and cost requests a little on test
(benchmarks/QUALITY.md, "A product catalogue").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from recsys_infer.enums import Lever

#: The levers ``train`` chooses when left open, in the order it tries them.
ORDER = ("whiten", "item_offsets")
#: How a model with each lever switched on is named.
NAMES = {"whiten": "whitened", "item_offsets": "item offsets"}

T = TypeVar("T")


@dataclass(frozen=True)
class Levers:
    """One setting of every lever."""

    whiten: bool = False
    item_offsets: bool = False

    def describe(self) -> str:
        """``plain``, or the levers switched on (``whitened + item offsets``)."""
        on = [NAMES[name] for name in ORDER if getattr(self, name)]
        return " + ".join(on) if on else "plain"

    @classmethod
    def of(cls, record: dict[str, Any]) -> Levers:
        """The levers of a record: :meth:`Choice.to_json`'s ``levers`` or one of its trials."""
        return cls(**{name: bool(record.get(name, False)) for name in ORDER})


@dataclass
class Choice:
    """What the trials found: the levers chosen and every trial's validation score."""

    levers: Levers
    trials: list[dict[str, Any]] = field(default_factory=list)
    chosen_from: list[str] = field(default_factory=list)  # the levers that were open

    def to_json(self) -> dict[str, Any]:
        return {
            "levers": {name: getattr(self.levers, name) for name in ORDER},
            "chosen_on_validation": self.chosen_from,
            "trials": self.trials,
        }


def open_levers(given: dict[str, Lever]) -> tuple[Levers, list[str]]:
    """The starting point (every ``auto`` lever off) and the ``auto`` levers, in trial order."""
    start = Levers(**{name: Lever(given[name]) is Lever.ON for name in ORDER})
    return start, [name for name in ORDER if Lever(given[name]) is Lever.AUTO]


def choose(
    start: Levers,
    open_: list[str],
    trial: Callable[[Levers], tuple[float | None, T]],
    *,
    out_of_time: Callable[[], bool],
) -> tuple[Choice, T]:
    """Greedy choice over the open levers: ``trial(levers)`` trains one candidate and returns
    its validation NDCG@10 (``None`` when the time or step budget ran out before its trial
    ended) and what training carries on from. A lever is switched on only when that scores
    strictly higher. A trial cut short is not compared, and after it, or once ``out_of_time()``,
    no further lever is tried."""
    choice = Choice(start, chosen_from=list(open_))
    began = time.monotonic()
    best_score, best = trial(start)
    choice.trials.append(_record(start, best_score, began))
    for name in open_:
        if best_score is None or out_of_time():  # the budget is spent: go on with what there is
            break
        candidate = replace(choice.levers, **{name: True})
        began = time.monotonic()
        score, state = trial(candidate)
        choice.trials.append(_record(candidate, score, began))
        if score is None:
            break
        if score > best_score:
            choice.levers, best_score, best = candidate, score, state
    return choice, best


def _record(levers: Levers, score: float | None, began: float) -> dict[str, Any]:
    return {
        **{name: getattr(levers, name) for name in ORDER},
        "validation_ndcg@10": None if score is None else round(score, 5),  # None: cut short
        "seconds": round(time.monotonic() - began, 1),
    }
