"""Leave-one-out splitting by order, the protocol of the sequential-recommendation literature.

For each user with at least three interactions, the last item is the test target, the second to
last the validation target, and the rest is training data. Users with fewer than three
interactions are training data only. Order comes from the loader's stable sort, so the split is
deterministic: equal timestamps keep the file's row order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .dataset import Dataset

MIN_INTERACTIONS_FOR_EVAL = 3


@dataclass(frozen=True)
class Example:
    """A user's history (item ids, oldest first) and the item that came next."""

    user_id: str
    history: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class Split:
    train: Mapping[str, tuple[str, ...]]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]

    def train_examples(self, *, max_history: int | None = None) -> Iterator[Example]:
        """Every (history → next item) pair inside the training sequences."""
        for user, seq in self.train.items():
            for t in range(1, len(seq)):
                start = 0 if max_history is None else max(0, t - max_history)
                yield Example(user, seq[start:t], seq[t])

    def num_train_examples(self) -> int:
        return sum(max(0, len(s) - 1) for s in self.train.values())


def leave_one_out(dataset: Dataset) -> Split:
    train: dict[str, tuple[str, ...]] = {}
    validation: list[Example] = []
    test: list[Example] = []
    for user, seq in dataset.sequences.items():
        if len(seq) < MIN_INTERACTIONS_FOR_EVAL:
            train[user] = seq
            continue
        train[user] = seq[:-2]
        validation.append(Example(user, seq[:-2], seq[-2]))
        test.append(Example(user, seq[:-1], seq[-1]))
    return Split(train=train, validation=tuple(validation), test=tuple(test))
