"""The fuzzers' stored seed database: the runs worth repeating, kept in the repository
(``tests/fuzz-seeds/``, Hypothesis's directory format) so that every run, in CI too, replays them
before it searches anew.

What a database holds is what Hypothesis keeps between runs: the failing examples it found, and
for a test that calls :func:`hypothesis.target`, the runs that went furthest on each target (its
Pareto front). A run reads the stored seeds and never writes them, so a clean checkout stays
clean; what it finds goes to a scratch database. To add to the seeds, run the fuzzers with
``RECSYS_INFER_FUZZ_RECORD=1`` (and a larger budget, ``RECSYS_INFER_FUZZ_EXAMPLES``) and commit
what changed under ``tests/fuzz-seeds/``.

Hypothesis files a test's examples under a digest of its source, so a change to a fuzzer's code
orphans its seeds: :class:`Replayed` counts what a run read, and the fuzzers' tests fail when
they read nothing, with the command that records them again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    InMemoryExampleDatabase,
    MultiplexedDatabase,
)

SEEDS = Path(__file__).resolve().parent / "fuzz-seeds"
RECORD_ENV = "RECSYS_INFER_FUZZ_RECORD"
BUDGET_ENV = "RECSYS_INFER_FUZZ_EXAMPLES"


def recording() -> bool:
    return os.environ.get(RECORD_ENV, "") not in ("", "0")


def budget(default: int) -> int:
    """Examples per run: ``RECSYS_INFER_FUZZ_EXAMPLES`` where set, else the CI budget."""
    return int(os.environ.get(BUDGET_ENV, default))


class Replayed(ExampleDatabase):
    """A read-only view of a stored database (its writes do nothing) that counts the examples
    handed out."""

    def __init__(self, stored: ExampleDatabase) -> None:
        super().__init__()
        self.stored = stored
        self.read = 0

    def fetch(self, key: bytes) -> Iterable[bytes]:
        for value in self.stored.fetch(key):
            self.read += 1
            yield value

    def save(self, key: bytes, value: bytes) -> None:
        pass

    def delete(self, key: bytes, value: bytes) -> None:
        pass


def seed_database(name: str) -> tuple[ExampleDatabase, Replayed]:
    """The database a fuzzer runs with: the stored seeds under ``name``, read only, beside a
    scratch database for this run (or the stored seeds themselves, writable, when recording)."""
    stored = DirectoryBasedExampleDatabase(SEEDS / name)
    replayed = Replayed(stored)
    if recording():
        return stored, replayed
    return MultiplexedDatabase(replayed, InMemoryExampleDatabase()), replayed


def stale_message(name: str, test_file: str) -> str:
    test = Path(test_file).resolve().relative_to(SEEDS.parents[1])
    return (
        f"the stored seeds of {name!r} do not match the fuzzer: its code changed since they were "
        f"recorded. Record them again with {RECORD_ENV}=1 {BUDGET_ENV}=200 .venv/bin/pytest {test} "
        f"and commit tests/fuzz-seeds/{name}/"
    )
