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


def test_a_sequence_bundle_is_refused_with_the_reason(tmp_path: Path, tiny_encoder: Path) -> None:
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.export.convert import to_sentence_transformers
    from recsys_infer.toolchain.train.loop import TrainConfig, train
    from tests.conftest import small_sample

    config = TrainConfig(user_tower="sequence", max_steps=1, batch_size=16, item_max_length=32)
    train(small_sample(), tmp_path / "ckpt", encoder=str(tiny_encoder), config=config, progress=False)
    export_bundle(tmp_path / "ckpt", tmp_path / "bundle", progress=False)
    with pytest.raises(ExportError, match=r"sequence model over item vectors.*without custom code"):
        to_sentence_transformers(tmp_path / "bundle", tmp_path / "st")
