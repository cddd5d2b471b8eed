"""The engine's live edits as a state machine (Hypothesis): random runs of add, replace, remove,
save-and-reload and recommend (with and without filters) on a copy of the tiny bundle, checked
against a plain model of the catalogue after every step. The invariants are the ones a user
relies on:

- a removed item never comes back, whatever the query or the filter;
- an item's text and attributes are the last ones written;
- when at least k items pass the filters, k come back, and every one of them passes;
- a saved bundle reloads to the same catalogue and the same answers.

A fixed budget keeps it inside CI's time (25 runs of up to 30 steps, about 12 s);
``RECSYS_INFER_FUZZ_EXAMPLES=N`` runs N instead, to look longer. Each run first replays the
stored seeds (``tests/fuzz_seeds.py``): the runs that went furthest, in earlier long searches, on
three targets (items removed, edits carried through one save, queries whose filters leave fewer
than k items). Then it draws new examples; a failure prints the steps that reproduce it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from recsys_infer import Engine
from tests.fuzz_seeds import budget, recording, seed_database, stale_message

WORDS = ["lamp", "brass", "tent", "coffee", "shoes", "novel", "garden", "desk", "travel", "wool"]
COLOURS = ["red", "blue", "green"]
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
colours = st.sampled_from(COLOURS)


class EditMachine(RuleBasedStateMachine):
    """A tiny bundle's engine beside a dict of what its catalogue should hold."""

    source: Path

    added = Bundle("added")

    @initialize()
    def load(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="edits-"))
        self.folder = Path(shutil.copytree(self.source, self.work / "bundle"))
        self.engine = Engine.load(self.folder, device="cpu", threads=1)
        self.catalogue: dict[str, tuple[str, dict[str, Any]]] = {
            item.item_id: (item.text, dict(item.attributes))
            for item in self.engine.items(self.engine.item_ids)
        }
        self.removed: set[str] = set()
        self.serial = 0
        self.saves = 0
        # What the targets measure: the stored seeds are the runs that pushed these furthest.
        self.edits_since_save = 0
        self.most_edits_saved = 0
        self.scarce_queries = 0

    def teardown(self) -> None:
        if hasattr(self, "engine"):
            target(len(self.removed), label="items removed")
            target(self.most_edits_saved, label="edits carried through one save")
            target(self.scarce_queries, label="queries whose filters leave fewer than k")
            self.engine.close()
            shutil.rmtree(self.work, ignore_errors=True)

    @rule(target=added, text=texts, colour=colours)
    def add(self, text: str, colour: str) -> str:
        self.serial += 1
        item_id = f"new-{self.serial}"
        self.engine.add_items([item_id], [text], [{"colour": colour}])
        self.catalogue[item_id] = (text, {"colour": colour})
        self.removed.discard(item_id)
        self.edits_since_save += 1
        return item_id

    @rule(item_id=added, text=texts, colour=colours)
    def replace(self, item_id: str, text: str, colour: str) -> None:
        self.engine.upsert_items([item_id], [text], [{"colour": colour}])  # back if it was removed
        self.catalogue[item_id] = (text, {"colour": colour})
        self.removed.discard(item_id)
        self.edits_since_save += 1

    @rule(item_id=consumes(added))
    def remove(self, item_id: str) -> None:
        if item_id in self.removed:
            return
        self.engine.remove_items([item_id])
        del self.catalogue[item_id]
        self.removed.add(item_id)
        self.edits_since_save += 1

    @rule(data=st.data())
    def remove_an_original(self, data: st.DataObject) -> None:
        originals = sorted(i for i in self.catalogue if not i.startswith("new-"))
        if len(originals) > 20:
            item_id = data.draw(st.sampled_from(originals))
            self.engine.remove_items([item_id])
            del self.catalogue[item_id]
            self.removed.add(item_id)
            self.edits_since_save += 1

    @rule()
    def save_and_reload(self) -> None:
        self.saves += 1
        self.most_edits_saved = max(self.most_edits_saved, self.edits_since_save)
        self.edits_since_save = 0
        folder = self.work / f"saved-{self.saves}"
        before = self.engine.recommend(text="a brass lamp for the desk", k=5)
        self.engine.save(folder)
        self.engine.close()
        self.engine = Engine.load(folder, device="cpu", threads=1)
        assert self.engine.recommend(text="a brass lamp for the desk", k=5) == before

    @rule(text=texts, k=st.integers(1, 12), colour=st.none() | colours, exact_allow=st.booleans())
    def recommend(self, text: str, k: int, colour: str | None, exact_allow: bool) -> None:
        eligible = {
            i for i, (_, attrs) in self.catalogue.items() if colour is None or attrs.get("colour") == colour
        }
        options: dict[str, Any] = {"where": {"colour": colour}} if colour is not None else {}
        if exact_allow:  # an allow-list of live and removed ids together
            allow = sorted(eligible)[:6] + sorted(self.removed)[:6]
            options["allow"] = allow
            eligible &= set(allow)
        self.scarce_queries += len(eligible) < k
        recs = self.engine.recommend(text=text, k=k, **options)
        got = [r.item_id for r in recs]
        assert not set(got) & self.removed, f"removed items came back: {set(got) & self.removed}"
        assert set(got) <= eligible, f"items the filters refuse came back: {set(got) - eligible}"
        assert len(got) == min(k, len(eligible)), (len(got), k, len(eligible))

    @invariant()
    def catalogue_matches(self) -> None:
        if not hasattr(self, "engine"):
            return
        assert set(self.engine.item_ids) == set(self.catalogue)
        for item_id in [i for i in self.catalogue if i.startswith("new-")][-5:]:
            item = self.engine.item(item_id)
            assert (item.text, dict(item.attributes)) == self.catalogue[item_id]


def test_edits_keep_the_invariants(tiny_bundle: Path) -> None:
    EditMachine.source = tiny_bundle
    database, replayed = seed_database("edits")
    machine = EditMachine.TestCase
    machine.settings = settings(
        max_examples=budget(25),
        stateful_step_count=30,
        deadline=None,
        database=database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine().runTest()
    assert recording() or replayed.read > 0, stale_message("edits", __file__)


@pytest.fixture(autouse=True)
def _no_leftover_class_state() -> Any:
    yield
    EditMachine.source = Path()
