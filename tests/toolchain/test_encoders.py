"""Encoders by folder: pooling read from the sentence-transformers modules, never guessed.

A BGE-style encoder (CLS pooling, then normalisation) goes through train and export and the
engine's vectors equal sentence-transformers' own for the same folder; mean pooling it is
refused, and its vectors would have been far off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.enums import Pooling
from recsys_infer.errors import ConfigError
from tests.conftest import small_sample, write_pooling_modules

TEXTS = [
    "Wireless noise cancelling headphones, black",
    "A cozy mystery novel set in a Scottish village",
    "Stainless steel garden hose nozzle with eight patterns",
]


@pytest.fixture(scope="module")
def cls_encoder(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder's weights, declared as BGE declares itself: CLS pooling, normalised."""
    folder = Path(shutil.copytree(tiny_encoder, tmp_path_factory.mktemp("bge-style") / "encoder"))
    write_pooling_modules(folder, "cls")
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# A tiny BGE-style encoder\n")
    return folder


def _zero_shot_bundle(encoder: Path, root: Path, **config: object) -> Path:
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    settings = TrainConfig(user_tower="text", max_steps=0, item_max_length=32, user_max_length=32, **config)
    train(small_sample(), root / "ckpt", encoder=str(encoder), config=settings, progress=False)
    export_bundle(root / "ckpt", root / "bundle", progress=False)
    return root / "bundle"


def test_a_cls_pooled_encoder_exports_with_cls_and_matches_sentence_transformers(
    cls_encoder: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    bundle = _zero_shot_bundle(cls_encoder, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {t["pooling"] for t in manifest["towers"].values()} == {"cls"}
    assert manifest["provenance"]["encoder"]["pooling"] == "cls"
    assert manifest["provenance"]["encoder"]["license"] == "mit"  # from the model card

    engine = Engine.load(bundle, device="cpu", threads=1)
    ours = engine.encode_items(TEXTS)
    theirs = SentenceTransformer(str(cls_encoder), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    # What a silent mean-pooled export would have served instead: far from the encoder's own.
    mean_folder = Path(shutil.copytree(cls_encoder, tmp_path / "as-mean"))
    write_pooling_modules(mean_folder, "mean")
    mean = SentenceTransformer(str(mean_folder), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.min(np.sum(mean * theirs, axis=1)) < 0.99


def test_mean_pooling_a_cls_encoder_is_refused(cls_encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trained with cls pooling.*--pooling mean"):
        _zero_shot_bundle(cls_encoder, tmp_path, pooling="mean")
    assert not (tmp_path / "ckpt").exists()


def test_an_encoder_that_declares_no_pooling_needs_it_named(tiny_encoder: Path, tmp_path: Path) -> None:
    bare = Path(shutil.copytree(tiny_encoder, tmp_path / "bare"))
    (bare / "modules.json").unlink()
    shutil.rmtree(bare / "1_Pooling")
    with pytest.raises(ConfigError, match=r"does not say how it pools.*--pooling mean or --pooling cls"):
        _zero_shot_bundle(bare, tmp_path / "a")
    bundle = _zero_shot_bundle(bare, tmp_path / "b", pooling="cls")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["towers"]["item"]["pooling"] == "cls"
    assert manifest["provenance"]["encoder"]["pooling"] == "cls"


def test_poolings_we_cannot_export_are_refused(tiny_encoder: Path, tmp_path: Path) -> None:
    from recsys_infer.toolchain.train.encoders import declared_pooling

    folder = Path(shutil.copytree(tiny_encoder, tmp_path / "max"))
    config_file = folder / "1_Pooling" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"pooling_mode_max_tokens.*CLS or mean pooling only"):
        declared_pooling(folder)
    # The layout sentence-transformers 5 writes: module paths of its own, a pooling_mode string.
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
    modules[2]["type"] = "sentence_transformers.sentence_transformer.modules.normalize.Normalize"
    (folder / "modules.json").write_text(json.dumps(modules))
    for mode, expected in (("cls", Pooling.CLS), ("mean", Pooling.MEAN)):
        config_file.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": mode}))
        assert declared_pooling(folder) == (expected, True)
    config_file.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "lasttoken"}))
    with pytest.raises(ConfigError, match="'lasttoken'"):
        declared_pooling(folder)
    assert declared_pooling(tiny_encoder) == (Pooling.MEAN, True)


def test_the_default_encoder_declares_mean_pooling() -> None:
    from recsys_infer.toolchain.train.encoders import resolve_encoder

    source = resolve_encoder(None)
    assert source.pooling is Pooling.MEAN and source.normalize is True and source.license == "apache-2.0"
    with pytest.raises(ConfigError, match="--revision is for Hub ids"):
        resolve_encoder(None, revision="main")


def test_a_hub_id_is_fetched_at_its_revision_and_recorded(
    cls_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network in tests: huggingface_hub's download is replaced by the local copy it would
    have made. The id, the revision asked for and the folder's own pooling and licence come
    through to the bundle."""
    import huggingface_hub

    asked: list[tuple[str, str | None]] = []

    def snapshot_download(repo_id: str, revision: str | None = None, **_: object) -> str:
        asked.append((repo_id, revision))
        return str(cls_encoder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    config = TrainConfig(user_tower="text", max_steps=0, item_max_length=32, user_max_length=32)
    train(small_sample(), tmp_path / "ckpt", encoder="BAAI/bge-tiny-test", revision="v1.5", config=config,
          progress=False)  # fmt: skip
    export_bundle(tmp_path / "ckpt", tmp_path / "bundle", progress=False)
    assert asked == [("BAAI/bge-tiny-test", "v1.5")]
    encoder = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["provenance"]["encoder"]
    assert encoder == {"name": "BAAI/bge-tiny-test", "license": "mit", "revision": "v1.5", "pooling": "cls"}
    assert "base_model: BAAI/bge-tiny-test" in (tmp_path / "bundle" / "README.md").read_text()
