"""The engine while serving: catalogue edits, filters, explanations, saving, and many threads."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.errors import BundleError, OutputExistsError, QueryError, UnknownItemError
from tests.conftest import MILVUS_BACKENDS, milvus_place


@pytest.fixture(params=["hnsw", *MILVUS_BACKENDS])
def engine(request: pytest.FixtureRequest, bundle_copy: Path, tmp_path: Path) -> Iterator[Engine]:
    """The same engine tests on every item store: the embedded HNSW index, and a collection
    built from the same bundle on Milvus Lite and (cluster-marked) on a Milvus server."""
    if request.param == "hnsw":
        yield Engine.load(bundle_copy, device="cpu", threads=1)
        return
    pytest.importorskip("pymilvus")
    from recsys_infer.indexing.reindex import MilvusTarget, reindex_bundle

    out = tmp_path / "milvus-bundle"
    with milvus_place(request.param, request, tmp_path) as place:
        reindex_bundle(bundle_copy, None, out, milvus=MilvusTarget(*place), progress=False)
        engine = Engine.load(out, device="cpu", threads=1)
        yield engine
        engine.close()


def _on_milvus(engine: Engine) -> bool:
    return engine.manifest is not None and engine.manifest.index.kind == "milvus"


def test_added_items_are_recommended_and_updated_items_reencoded(engine: Engine) -> None:
    n = len(engine)
    engine.add_items(
        ["new-1", "new-2"], ["brass desk lamp with dimmer", "oak bookshelf"], [{"k": 1}, {"k": 2}]
    )
    assert len(engine) == n + 2 and {"new-1", "new-2"} <= set(engine.item_ids)
    recs = engine.recommend(history=["new-2"], k=len(engine) - 1)
    assert "new-1" in {r.item_id for r in recs} and "new-2" not in {r.item_id for r in recs}
    assert (
        engine.recommend(text="brass desk lamp with dimmer", k=1)[0].item_id == "new-1"
    )  # its own text first
    engine.update_items(["new-1"], ["a red sofa"], [{"k": 9}])
    assert engine.item("new-1").attributes["k"] == 9
    np.testing.assert_allclose(engine.item_vectors(["new-1"]), engine.encode_items(["a red sofa"]), atol=1e-6)
    with pytest.raises(QueryError, match="already in the catalogue"):
        engine.add_items(["new-1"], ["again"])
    with pytest.raises(QueryError, match="one entry per item"):
        engine.add_items(["x", "y"], ["only one text"])
    with pytest.raises(UnknownItemError):
        engine.update_items(["never-added"], ["text"])


def test_removed_items_never_come_back(engine: Engine) -> None:
    gone = list(engine.item_ids[:50])
    engine.remove_items(gone)
    assert len(engine) == 250 and not set(gone) & set(engine.item_ids)
    everything = engine.recommend(text="wireless headphones", k=len(engine))
    assert len(everything) == len(engine) and not set(gone) & {r.item_id for r in everything}
    with pytest.raises(UnknownItemError):
        engine.recommend(history=[gone[0]])
    with pytest.raises(UnknownItemError):
        engine.remove_items([gone[0]])
    with pytest.raises(QueryError, match="every item"):
        engine.remove_items(list(engine.item_ids))


def test_filters_apply_during_search_and_still_return_k(engine: Engine, bundle_copy: Path) -> None:
    exact = Engine.load(bundle_copy, device="cpu", threads=1, exact=True)
    categories = [engine.item(i).attributes["category"] for i in engine.item_ids]
    rare = min(set(categories), key=categories.count)
    n_rare = categories.count(rare)
    kept = engine.recommend(text="gift", k=n_rare, where=lambda a: a["category"] == rare)
    assert len(kept) == n_rare and {r.attributes["category"] for r in kept} == {rare}
    common = max(set(categories), key=categories.count)
    for e in (engine, exact):
        recs = e.recommend(text="gift", k=5, where=lambda a: a["category"] == common)
        assert len(recs) == 5 and {r.attributes["category"] for r in recs} == {common}
    ref = [r.item_id for r in exact.recommend(text="gift", k=5, where=lambda a: a["category"] == common)]
    got = [r.item_id for r in engine.recommend(text="gift", k=5, where=lambda a: a["category"] == common)]
    assert len(set(ref) & set(got)) >= 4
    allow = list(engine.item_ids[100:110])
    recs = engine.recommend(text="gift", k=10, allow=allow, exclude=[allow[0]])
    assert {r.item_id for r in recs} == set(allow[1:])  # only 9 pass: fewer than k come back
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    with pytest.raises(QueryError, match="list of item ids"):
        engine.recommend(text="gift", allow="abc")


def test_explanations_name_the_closest_history_items_and_words(engine: Engine) -> None:
    history = list(engine.item_ids[:4])
    recs = engine.recommend(history=history, k=3, explain=True)
    for rec in recs:
        assert 1 <= len(rec.because) <= 3 and {r.kind for r in rec.because} == {"history"}
        assert {r.source for r in rec.because} <= set(history)
        target = engine.encode_items([rec.text])[0]
        for reason in rec.because:
            source = engine.encode_items([engine.item(reason.source).text])[0]
            assert reason.similarity == pytest.approx(float(target @ source), abs=1e-3)
        sims = [r.similarity for r in rec.because]
        assert sims == sorted(sims, reverse=True)
    words = engine.recommend(text="Wireless noise-cancelling headphones", k=2, explain=True)
    assert {r.source for r in words[0].because} <= {"wireless", "noise-cancelling", "headphones"}
    assert engine.recommend(history=history, k=3)[0].because == ()
    why = engine.explain(history=history, item_ids=[recs[0].item_id])
    assert why[recs[0].item_id] == recs[0].because
    assert "because" in recs[0].to_json()


def test_save_persists_edits_atomically(engine: Engine, bundle_copy: Path, tmp_path: Path) -> None:
    if _on_milvus(engine):  # the collection holds the edits already: nothing to save
        with pytest.raises(BundleError, match="Milvus collection keeps its edits"):
            engine.save(tmp_path / "saved")
        return
    engine.add_items(["new-1"], ["brass desk lamp with dimmer"])
    gone = list(engine.item_ids[:5])
    engine.remove_items(gone)
    before = [r.item_id for r in engine.recommend(text="lamp", k=10)]
    out = engine.save(tmp_path / "saved")
    again = Engine.load(out, device="cpu", threads=1)
    assert again.item_ids == engine.item_ids and len(again) == len(engine)
    assert [r.item_id for r in again.recommend(text="lamp", k=10)] == before
    edits = json.loads((out / "manifest.json").read_text())["catalogue_edits"][-1]
    assert edits["added"] == 1 and edits["removed"] == 5 and edits["items"] == len(engine)
    with pytest.raises(OutputExistsError):
        engine.save(bundle_copy)
    # A crash mid-save leaves the bundle that stood there whole.
    original = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkey = pytest.MonkeyPatch()
    monkey.setattr("recsys_infer.runtime.engine.np.save", boom)
    with pytest.raises(OSError, match="disk full"):
        engine.save(bundle_copy, overwrite=True)
    monkey.undo()
    assert {p.name: p.read_bytes() for p in bundle_copy.iterdir()} == original
    assert not [p for p in bundle_copy.parent.iterdir() if p.name.startswith(".")]
    engine.save(bundle_copy, overwrite=True)
    assert Engine.load(bundle_copy, device="cpu").item_ids == engine.item_ids


def test_concurrent_reads_match_a_single_thread(engine: Engine) -> None:
    queries = [{"history": list(engine.item_ids[i : i + 1 + i % 5])} for i in range(0, 120, 3)]
    queries += [{"text": t} for t in ("lamp", "headphones for running", "garden tools", "a novel")]
    alone = [[r.item_id for r in engine.recommend(**q, k=10)] for q in queries]  # type: ignore[arg-type]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: [r.item_id for r in engine.recommend(**q, k=10)], queries * 3))
    assert together == alone * 3


def test_edits_under_concurrent_load_are_atomic(engine: Engine) -> None:
    """Readers recommend while a writer adds and removes, for a bounded time: no errors; an item
    is never returned by a call that started after its removal completed; an item added is
    found by every call that starts after its addition completed."""
    removed_at: dict[str, float] = {}
    added_at: dict[str, float] = {}
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0
    lock = threading.Lock()
    texts = ["lamp", "headphones", "garden", "novel", "coffee"]

    def writer() -> None:
        rng = random.Random(0)
        n = 0
        try:
            while time.monotonic() < stop and n < 100:
                item = f"live-{n}"
                engine.add_items([item], [f"{texts[n % 5]} number {n}"])
                with lock:
                    added_at[item] = time.monotonic()
                # Only original items are removed: added ones take freed slots, and a reader may
                # still be checking one it saw added.
                victim = rng.choice([i for i in engine.item_ids[:200] if not i.startswith("live-")])
                engine.remove_items([victim])
                with lock:
                    removed_at[victim] = time.monotonic()
                n += 1
        except BaseException as e:
            errors.append(e)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop:
                started = time.monotonic()
                with lock:
                    gone = {i for i, t in removed_at.items() if t < started}
                    present = [i for i, t in added_at.items() if t < started]
                recs = engine.recommend(text=rng.choice(texts), k=20)
                assert not gone & {r.item_id for r in recs}, "a removed item came back"
                if present:
                    item = rng.choice(present)
                    if item not in gone:
                        found = engine.recommend(text="anything", k=1, allow=[item])
                        assert [r.item_id for r in found] == [item]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(s,)) for s in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert added_at and removed_at  # the writer really ran


def test_index_command_rebuilds_the_catalog_without_retraining(tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsys_infer.cli import app

    old = Engine.load(tiny_bundle, device="cpu", exact=True)
    keep = list(old.item_ids[:40])
    rows = [{"item_id": i.item_id, "text": i.text, **i.attributes} for i in old.items(keep)]
    rows.append({"item_id": "fresh-1", "title": "Brass desk lamp", "category": "Lamps"})
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        app, ["index", str(tiny_bundle), "--items", str(items), "--out", str(tmp_path / "b2")]
    )
    assert result.exit_code == 0, result.output
    new = Engine.load(tmp_path / "b2", device="cpu", exact=True)
    assert list(new.item_ids) == [*keep, "fresh-1"]
    assert new.item("fresh-1").text == "Brass desk lamp. Category: Lamps."
    np.testing.assert_allclose(new.item_vectors(keep), old.item_vectors(keep), atol=1e-5)
    assert json.loads((tmp_path / "b2" / "manifest.json").read_text())["reindexed"]["from"] == str(
        tiny_bundle
    )
    bad = CliRunner().invoke(app, ["index", str(tiny_bundle), "--items", str(tmp_path / "none.csv"), "--out",
                                   str(tmp_path / "b3")])  # fmt: skip
    assert bad.exit_code == 1 and not (tmp_path / "b3").exists()
