"""Export parity, the bundle's contents, tamper detection and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from recsys_infer import Engine
from recsys_infer.errors import (
    BundleError,
    BundleIntegrityError,
    ExportError,
    MissingBundleFileError,
    OutputExistsError,
    ParityError,
    SchemaVersionError,
)
from recsys_infer.runtime.bundle import SCHEMA_VERSION, read_manifest, sha256_file
from recsys_infer.runtime.schema import encode
from recsys_infer.toolchain.export import (
    ExportConfig,
    export_bundle,
    export_config_from_recipe,
    read_recipe,
)

REPO = Path(__file__).resolve().parents[2]


def test_bundle_contents_and_manifest(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    raw = encode(manifest)
    # Version 2 only adds the two-space fusion; a bundle without it stays readable as version 1.
    assert manifest.fusion is None and manifest.schema_version == 1 < SCHEMA_VERSION
    assert {p.name for p in tiny_bundle.iterdir()} == {
        "manifest.json",
        "user_tower.onnx",
        "item_tower.onnx",
        "tokenizer.json",
        "item_index.hnsw",
        "item_vectors.npy",
        "item_ids.json",
        "catalog.jsonl",
        "probe.json",
        "README.md",
    }
    for name, entry in manifest.files.items():
        assert sha256_file(tiny_bundle / name) == entry.sha256
    assert manifest.user.max_length == 48 and manifest.item.max_length == 32
    assert manifest.user.dim == manifest.index.dim == 32
    assert manifest.index.count == len(json.loads((tiny_bundle / "item_ids.json").read_text())) == 300
    assert raw["provenance"]["checkpoint"] == str(tiny_checkpoint.resolve())
    assert raw["provenance"]["data"]["name"] == "sample"
    assert raw["parity"]["user"]["max_abs_diff"] < 1e-4 and raw["parity"]["item"]["min_cosine"] > 0.9999
    assert raw["fidelity"]["index_recall_at_10_vs_exact"] >= 0.9
    assert raw["probe"]["split"] == "validation" and raw["probe"]["histories"] > 0
    vectors = np.load(tiny_bundle / "item_vectors.npy", allow_pickle=False)
    assert vectors.shape == (300, 32) and vectors.dtype == np.float32


def test_onnx_graph_has_named_dynamic_axes_and_one_opset(tiny_bundle: Path) -> None:
    model = onnx.load(str(tiny_bundle / "user_tower.onnx"))
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    assert inputs == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    (output,) = model.graph.output
    assert output.name == "embedding"
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 32]
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ops = {n.op_type for n in model.graph.node}
    assert {"ReduceSum", "Div"} <= ops  # pooling and normalisation live in the graph


def test_parity_failure_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(ParityError, match=r"disagrees with PyTorch.*No bundle was written"):
        export_bundle(tiny_checkpoint, out, config=ExportConfig(max_abs_diff=1e-30), progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary directory


def test_existing_output_is_kept_unless_overwrite(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        export_bundle(tiny_checkpoint, out, progress=False)
    # --overwrite replaces an earlier bundle only: a folder of something else is refused, kept whole.
    with pytest.raises(OutputExistsError, match=r"has no manifest\.json"):
        export_bundle(tiny_checkpoint, out, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    with pytest.raises(OutputExistsError, match="not a directory"):
        export_bundle(tiny_checkpoint, afile, overwrite=True, progress=False)
    assert afile.read_text() == "not a folder"
    (out / "keep.txt").unlink()
    out.rmdir()
    export_bundle(tiny_checkpoint, out, progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ParityError):  # a failed overwrite leaves the old bundle alone
        export_bundle(
            tiny_checkpoint, out, config=ExportConfig(max_abs_diff=1e-30), overwrite=True, progress=False
        )
    assert (out / "manifest.json").read_bytes() == before
    export_bundle(
        tiny_checkpoint, out, config=ExportConfig(include_probe=False), overwrite=True, progress=False
    )
    assert not (out / "probe.json").exists()
    assert read_manifest(out).probe is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "b"]


def test_shared_towers_export_one_graph(tiny_encoder: Path, tmp_path: Path) -> None:
    from recsys_infer.toolchain.train.loop import TrainConfig, train
    from tests.conftest import small_sample

    config = TrainConfig(
        user_tower="text",
        max_steps=2,
        batch_size=8,
        shared_towers=True,
        user_max_length=40,
        item_max_length=24,
    )
    train(small_sample(), tmp_path / "ck", encoder=str(tiny_encoder), config=config, progress=False)
    export_bundle(tmp_path / "ck", tmp_path / "b", progress=False)
    manifest = read_manifest(tmp_path / "b")
    assert manifest.user.file == manifest.item.file == "tower.onnx"
    assert (manifest.user.max_length, manifest.item.max_length) == (40, 24)
    engine = Engine.load(tmp_path / "b", device="cpu")
    assert len(engine.recommend(text="tent", k=5)) == 5


# -- loading: tampering, missing files, schema ------------------------------------------------------


def test_tampered_file_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "catalog.jsonl"
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"catalog.jsonl does not match the sha256"):
        Engine.load(bundle_copy, device="cpu")


def test_truncated_file_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "user_tower.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleIntegrityError, match=r"user_tower.onnx has 1000 bytes.*truncated"):
        Engine.load(bundle_copy, device="cpu", verify=False)


def test_missing_file_names_the_command(bundle_copy: Path) -> None:
    (bundle_copy / "item_index.hnsw").unlink()
    with pytest.raises(MissingBundleFileError, match=r"item_index.hnsw is missing.*recsys-infer export"):
        Engine.load(bundle_copy, device="cpu")
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(MissingBundleFileError, match=r"has no manifest.json"):
        Engine.load(bundle_copy, device="cpu")


def test_unknown_schema_version_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    doc = json.loads(path.read_text())
    doc["schema_version"] = 99
    doc.pop("digest", None)  # as a manifest written before digests
    path.write_text(json.dumps(doc))
    with pytest.raises(SchemaVersionError, match=r"version 99 is not supported.*reads versions 1 and 2"):
        Engine.load(bundle_copy, device="cpu")


def test_unknown_fields_are_ignored_and_broken_manifest_is_clear(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    doc = json.loads(path.read_text())
    doc["a_future_field"] = {"x": 1}
    doc["index"]["a_future_index_field"] = 3
    doc.pop("digest", None)  # as a manifest written before digests
    path.write_text(json.dumps(doc))
    assert read_manifest(bundle_copy).index.extra["a_future_index_field"] == 3
    del doc["towers"]["item"]
    doc.pop("digest", None)  # as a manifest written before digests
    path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"malformed: manifest: towers\.item is missing"):
        read_manifest(bundle_copy)
    path.write_text("{not json")
    with pytest.raises(BundleIntegrityError, match="not valid JSON"):
        read_manifest(bundle_copy)


# -- recipes ---------------------------------------------------------------------------------------


def test_example_recipe_reads() -> None:
    recipe = read_recipe("default")
    config = export_config_from_recipe(recipe)
    assert config.opset == 17 and config.hnsw.M == 16 and config.index_threads == 1
    assert recipe["encoder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    from recsys_infer.toolchain.train.loop import TrainConfig

    assert TrainConfig(**recipe["train"]).batch_size >= 2


def test_bad_recipes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[export]\nopset = 17\ncolour = 'red'\n")
    with pytest.raises(ExportError, match=r"unknown keys \['colour'\]"):
        export_config_from_recipe(read_recipe(bad), source=str(bad))
    bad.write_text("[export\n")
    with pytest.raises(ExportError, match="not valid TOML"):
        read_recipe(bad)
    with pytest.raises(ExportError, match="neither a file nor a packaged recipe"):
        read_recipe(tmp_path / "absent.toml")
    with pytest.raises(ExportError, match="opset must be between"):
        export_config_from_recipe({"export": {"opset": 9}})
