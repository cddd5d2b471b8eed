"""`recsys-infer convert --to sentence-transformers`: the towers load in sentence-transformers
(PyTorch and its ONNX backend) and give the engine's vectors; what it cannot express is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.errors import ExportError

TEXTS = ["wireless headphones", "a cozy mystery set in Scotland", "stainless steel garden hose nozzle"]


def test_text_towers_convert_and_load_in_sentence_transformers(tiny_bundle: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from recsys_infer.bench.subjects import text_side
    from recsys_infer.toolchain.export.convert import to_sentence_transformers

    result = to_sentence_transformers(tiny_bundle, tmp_path / "st")
    assert set(result.folders) == {"item", "user"} and min(result.min_cosine.values()) >= 0.9999
    engine = Engine.load(tiny_bundle, device="cpu", threads=1)
    ours = {"item": engine.item_encoder.encode(TEXTS), "user": text_side(engine).encode(TEXTS)}
    for name, folder in result.folders.items():
        assert (folder / "onnx" / "model.onnx").is_file() and (folder / "modules.json").is_file()
        for backend in ("torch", "onnx"):
            model = SentenceTransformer(str(folder), backend=backend, device="cpu")
            theirs = model.encode(TEXTS, normalize_embeddings=True)
            np.testing.assert_allclose(theirs, ours[name], atol=2e-5, err_msg=f"{name} {backend}")
    from recsys_infer.toolchain.train.encoders import declared_pooling

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    for folder in result.folders.values():  # the folders declare the bundle's pooling, and normalise
        assert declared_pooling(folder) == (manifest["towers"]["item"]["pooling"], True)


def test_what_sentence_transformers_cannot_express_is_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle
    from recsys_infer.toolchain.export.convert import to_sentence_transformers

    int8 = tmp_path / "int8"
    quantize_bundle(tiny_bundle, int8, QuantizeConfig(mode="dynamic", towers="both"))
    with pytest.raises(ExportError, match=r"compressed.*convert the fp32 bundle"):
        to_sentence_transformers(int8, tmp_path / "st")
    assert not (tmp_path / "st").exists()
    with pytest.raises(ExportError, match="checkpoint it was exported from is not at"):
        to_sentence_transformers(tiny_bundle, tmp_path / "st", checkpoint=tmp_path / "nowhere")


def test_a_sequence_bundle_converts_its_text_space(tmp_path: Path, tiny_encoder: Path) -> None:
    """The default kind: its item and request towers in the encoder's own space (one folder, as
    they share the encoder), with the bundle's licence on the card; --no-text-space is refused."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from recsys_infer.toolchain.export.bundle import ExportConfig, export_bundle
    from recsys_infer.toolchain.export.convert import to_sentence_transformers
    from recsys_infer.toolchain.train.loop import TrainConfig, train
    from tests.conftest import small_sample

    encoder = Path(shutil.copytree(tiny_encoder, tmp_path / "encoder"))
    (encoder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a tiny encoder\n")
    config = TrainConfig(user_tower="sequence", max_steps=1, batch_size=16, item_max_length=32)
    train(small_sample(), tmp_path / "ckpt", encoder=str(encoder), config=config, progress=False)
    export_bundle(tmp_path / "ckpt", tmp_path / "bundle", progress=False)
    result = to_sentence_transformers(tmp_path / "bundle", tmp_path / "st")
    assert set(result.folders) == {"shared"} and result.min_cosine["shared"] >= 0.9999

    engine = Engine.load(tmp_path / "bundle", device="cpu", threads=1)
    trained = engine.manifest.fusion.dims[0]  # type: ignore[union-attr]
    for tower in (engine.item_encoder, engine.user_encoder.requests):  # type: ignore[attr-defined]
        text = tower.encode(TEXTS)[:, trained:]
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        theirs = SentenceTransformer(str(result.folders["shared"]), device="cpu").encode(TEXTS)
        np.testing.assert_allclose(theirs, text, atol=2e-5)
    card = (result.folders["shared"] / "README.md").read_text()
    assert "license: apache-2.0" in card and "recsys-infer" in card

    export_bundle(tmp_path / "ckpt", tmp_path / "one", config=ExportConfig(text_space=False), progress=False)
    with pytest.raises(ExportError, match=r"--no-text-space.*without custom code"):
        to_sentence_transformers(tmp_path / "one", tmp_path / "st2")
