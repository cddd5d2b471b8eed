"""The bundle as a contract: typed, confined to its own folder, and saved crash-safely; and the
engine's inputs checked as a careless caller sends them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.errors import (
    BundleError,
    BundleIntegrityError,
    OutputExistsError,
    QueryError,
    SchemaVersionError,
    UnknownItemError,
)
from recsys_infer.runtime import atomic
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.options import RecommendOptions, Where


def _edit(bundle: Path, change: Any) -> None:
    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    change(doc)
    doc.pop("digest", None)  # as a manifest written before digests
    path.write_text(json.dumps(doc))


def test_an_edit_to_the_manifest_is_refused_at_load(bundle_copy: Path) -> None:
    """Values only the manifest holds (a fusion weight, ef_search, a token budget) are covered
    by its digest; reformatting the file is not an edit."""
    path = bundle_copy / "manifest.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc, indent=None, sort_keys=True))  # reformatted: still whole
    assert read_manifest(bundle_copy).index.ef_search == doc["index"]["ef_search"]
    for change in ({"ef_search": doc["index"]["ef_search"] + 10}, {"M": 8}):
        edited = json.loads(json.dumps(doc))
        edited["index"].update(change)
        path.write_text(json.dumps(edited, indent=2))
        with pytest.raises(BundleIntegrityError, match="changed after it was written"):
            Engine.load(bundle_copy, device="cpu")
    edited = json.loads(json.dumps(doc))
    edited["towers"]["item"]["max_length"] -= 1
    path.write_text(json.dumps(edited))
    with pytest.raises(BundleIntegrityError, match="digest no longer matches"):
        read_manifest(bundle_copy)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(towers=[]), "towers: expected an object, found a list"),
        (lambda d: d.update(index="item_index.hnsw"), "index: expected an object, found a string"),
        (lambda d: d["index"].update(M="16"), "index.M: expected an integer, found a string"),
        (lambda d: d["index"].update(M=True), "index.M: expected an integer, found a boolean"),
        (lambda d: d["towers"]["item"].update(precision="fp8"), "expected one of 'fp32'"),
        (lambda d: d["towers"]["item"].pop("dim"), "towers.item.dim: required"),
        (lambda d: d.update(compression={}), "compression: expected a list"),
        (lambda d: d.update(fusion={"dims": [4, 4]}), "needs schema version 2"),
        (
            lambda d: d.update(schema_version=2, fusion={"dims": [4, 4]}),
            "fusion applies to a sequence user tower",
        ),
        (
            lambda d: d.update(schema_version=2, fusion={"dims": [4, 4], "request": [0, 0]}),
            "fusion.request must be",
        ),
        (lambda d: d.update(schema_version=2, seen={"penalty": 0.1}), "needs schema version 3"),
        (lambda d: d.update(schema_version=3, seen={"penalty": 5}), "seen.penalty: must be in [0, 2.0]"),
    ],
)
def test_malformed_manifests_are_bundle_errors(bundle_copy: Path, change: Any, words: str) -> None:
    _edit(bundle_copy, change)
    with pytest.raises(BundleError, match="malformed") as info:
        Engine.load(bundle_copy, device="cpu")
    assert words in str(info.value)


@pytest.mark.parametrize("version", [1.0, True, "1", 4, None])
def test_only_the_integer_schema_version_loads(bundle_copy: Path, version: Any) -> None:
    _edit(bundle_copy, lambda d: d.update(schema_version=version))
    with pytest.raises(SchemaVersionError):
        read_manifest(bundle_copy)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda d: d["catalog"].update(file="../../outside/cat.jsonl"), "catalog.file"),
        (lambda d: d["catalog"].update(file="/etc/passwd"), "catalog.file"),
        (lambda d: d["files"].update({"../victim.txt": {"sha256": "0" * 64, "bytes": 1}}), "files"),
        (lambda d: d["files"].update({"../../../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}), "files"),
        (lambda d: d["tokenizer"].update(file="..\\tokenizer.json"), "tokenizer.file"),
    ],
)
def test_file_names_cannot_leave_the_bundle(bundle_copy: Path, change: Any, name: str) -> None:
    _edit(bundle_copy, change)
    with pytest.raises(BundleError, match="not a plain file name") as info:
        Engine.load(bundle_copy, device="cpu")
    assert name in str(info.value) and "exist" not in str(info.value)


def test_links_out_of_the_bundle_are_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    shutil.copy(bundle_copy / "catalog.jsonl", outside)
    (bundle_copy / "catalog.jsonl").unlink()
    (bundle_copy / "catalog.jsonl").symlink_to(outside)
    with pytest.raises(BundleIntegrityError, match="outside the bundle"):
        Engine.load(bundle_copy, device="cpu")


def test_overwrite_refuses_what_is_not_a_bundle(bundle_copy: Path, tmp_path: Path) -> None:
    engine = Engine.load(bundle_copy, device="cpu")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="has no manifest"):
        engine.save(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        engine.save(afile, overwrite=True)
    assert afile.read_text() == "x"


def test_saving_over_the_loaded_bundle_works_and_syncs_before_the_swap(bundle_copy: Path) -> None:
    engine = Engine.load(bundle_copy, device="cpu", threads=1)
    engine.add_items(["over-1"], ["a copper lamp"])
    steps: list[str] = []
    atomic.on_step = steps.append
    try:
        engine.save(bundle_copy, overwrite=True)
        engine.save(bundle_copy, overwrite=True)  # twice: the manifest it holds is the new one
    finally:
        atomic.on_step = None
    assert steps.index("synced") < steps.index("exchanged") < steps.index("visible")
    again = Engine.load(bundle_copy, device="cpu")
    assert "over-1" in again.item_ids and len(again.manifest.catalogue_edits) == 2  # type: ignore[union-attr]
    assert [p.name for p in bundle_copy.parent.iterdir()] == ["bundle"]


_CRASHING_SAVE = """
import os, sys
from recsys_infer import Engine
from recsys_infer.runtime import atomic
stop_at, seen = int(sys.argv[2]), []
def step(name):
    seen.append(name)
    if len(seen) == stop_at:
        os._exit(17)
atomic.on_step = step
engine = Engine.load(sys.argv[1], device="cpu", threads=1)
engine.add_items(["crash-new"], ["a brand new brass lamp"])
engine.remove_items([engine.item_ids[0]])
engine.save(sys.argv[1], overwrite=True)
print(len(seen))
"""


def test_a_save_killed_between_any_two_steps_leaves_a_whole_bundle(bundle_copy: Path, tmp_path: Path) -> None:
    def run(target: Path, stop_at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _CRASHING_SAVE, str(target), str(stop_at)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    pristine = Path(shutil.copytree(bundle_copy, tmp_path / "pristine"))
    whole = run(bundle_copy, 10**6)
    assert whole.returncode == 0, whole.stderr
    steps = int(whole.stdout.split()[-1])
    assert steps >= 8
    outcomes = set()
    for stop_at in range(1, steps + 1):
        target = tmp_path / f"b{stop_at}" / "bundle"
        shutil.copytree(pristine, target)
        crashed = run(target, stop_at)
        assert crashed.returncode == 17, crashed.stderr
        engine = Engine.load(target, device="cpu", threads=1)  # old or new, verified, whole
        outcomes.add("crash-new" in engine.item_ids)
        engine.save(target, overwrite=True)  # the next save removes what the crash left
        assert [p.name for p in target.parent.iterdir()] == ["bundle"]
    assert outcomes == {False, True}


def test_careless_calls_are_query_errors(bundle_copy: Path) -> None:
    engine = Engine.load(bundle_copy, device="cpu", threads=1)
    with pytest.raises(QueryError, match="list of item ids"):
        engine.recommend(history=5, k=3)  # type: ignore[arg-type]
    assert len(engine.recommend(text="lamp", k=3, exclude=None)) == 3  # None: nothing excluded
    with pytest.raises(QueryError, match="surrogate"):
        engine.recommend(text="ear\ud800", k=3)
    with pytest.raises(QueryError, match="must be a string"):
        engine.encode_items([None])  # type: ignore[list-item]
    with pytest.raises(QueryError, match="must be JSON"):
        engine.add_items(["s1"], ["a set lamp"], [{"tags": {"a", "b"}}])
    with pytest.raises(QueryError, match="positive integer"):
        engine.recommend(text="lamp", k=True)
    with pytest.raises(UnknownItemError) as info:
        engine.remove_items(["nope"])
    assert "1 item id(s)" in str(info.value) and "history" not in str(info.value)
    engine.save(bundle_copy, overwrite=True)  # nothing half-added blocks a save
    with pytest.raises(TypeError, match="colour"):  # a keyword recommend() does not have
        engine.recommend(text="lamp", colour="red")  # type: ignore[call-arg]


def test_options_are_one_hashable_validated_type() -> None:
    a = RecommendOptions.of(k=5, exclude=["x"], where={"genre": ["Drama", 1]})
    b = RecommendOptions(k=5, exclude=frozenset({"x"}), where={"genre": ["Drama", 1]})
    assert a == b and hash(a) == hash(b) and isinstance(a.where, Where)
    assert a.where({"genre": ["Comedy", "Drama"]}) and not a.where({"genre": True})
    assert not a.where({"genre": {"nested": 1}})  # unhashable values never match, never raise
    assert RecommendOptions(k=3, explain=True).cost == 24
    with pytest.raises(QueryError):
        RecommendOptions(where={"g": float("nan")})


def test_free_slots_are_reused_so_churn_does_not_grow_the_index(bundle_copy: Path) -> None:
    engine = Engine.load(bundle_copy, device="cpu", threads=1)
    slots = engine.store.index.slots  # type: ignore[attr-defined]
    size = len(engine)
    for n in range(60):
        engine.add_items([f"churn-{n}"], [f"churning lamp number {n}"])
        engine.remove_items([f"churn-{n}" if n % 2 else engine.item_ids[n]])
    assert engine.store.index.slots <= slots + 1  # type: ignore[attr-defined]
    assert len(engine) == size
    exact = engine.recommend(text="lamp", k=10)
    assert all(r.item_id in engine.item_ids for r in exact)
    out = bundle_copy.parent / "saved"
    engine.save(out)
    loaded = Engine.load(out, device="cpu", threads=1)
    assert [r.item_id for r in loaded.recommend(text="lamp", k=10)] == [r.item_id for r in exact]
    assert np.isfinite([r.score for r in exact]).all()
    assert (
        os.path.getsize(out / "item_vectors.npy") <= os.path.getsize(bundle_copy / "item_vectors.npy") + 4096
    )


def test_every_bundle_carries_a_model_card_of_its_own(tiny_bundle: Path, tmp_path: Path) -> None:
    """README.md is written from the manifest with it, so a compressed bundle's card describes
    the compressed model, and the card is checksummed like every other file."""
    pytest.importorskip("torch", reason="compressing a bundle needs the toolchain")
    from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    card = (tiny_bundle / "README.md").read_text()
    assert "README.md" in manifest["files"]
    assert card.startswith("---\nlicense: ")
    assert manifest["provenance"]["encoder"]["name"] in card and "## Intended use" in card
    assert f"fingerprint {manifest['provenance']['data']['fingerprint'][:16]}" in card
    out = tmp_path / "int8"
    quantize_bundle(tiny_bundle, out, QuantizeConfig(mode="dynamic", towers="both"))
    quantized = (out / "README.md").read_text()
    assert (
        "Compression: quantize dynamic." in quantized
        and "overlap@10 with the uncompressed model" in quantized
    )
    assert "Compression" not in card
