"""A catalogue whose items carry only text (no genres, category, tags or brand): requests are
made from the text, so the probe holds requests, a compressed request tower is measured, and
`evaluate --requests` has numbers (issue 16)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recsys_infer.data import Dataset
from recsys_infer.data.probe import request_from_item, request_from_text
from recsys_infer.runtime.catalog import Catalog, Item
from tests.conftest import small_sample


def text_only(dataset: Dataset) -> Dataset:
    items = [Item(i.item_id, i.text) for i in dataset.catalog]
    return Dataset("text-only", "test:text-only", Catalog(items), dict(dataset.sequences))


def test_requests_come_from_the_text_when_there_are_no_attributes() -> None:
    plain = Item(
        "P1", "Bassline Compact Studio Monitor Headphones 2-pack. Category: Electronics > Audio > Headphones."
    )
    twin = Item("b2", plain.text)
    got = {request_from_text(plain), request_from_text(twin)}
    assert got == {"Bassline Compact Studio Monitor", "Headphones"}  # one of each kind, chosen by id
    assert request_from_text(Item("m1", "Toy Story (1995)")) == "Toy Story"
    with_attributes = Item(
        "P3", plain.text, {"category": "Electronics > Audio > Headphones", "brand": "Bassline"}
    )
    assert request_from_item(with_attributes) == "Electronics > Audio > Headphones, Bassline"


@pytest.fixture(scope="module")
def text_only_bundle(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("text-only")
    config = TrainConfig(user_tower="sequence", max_steps=2, batch_size=16, item_max_length=32)
    train(text_only(small_sample()), root / "ckpt", encoder=str(tiny_encoder), config=config, progress=False)
    export_bundle(root / "ckpt", root / "bundle", progress=False)
    return root / "bundle"


def test_the_probe_holds_requests_and_a_compressed_request_tower_is_measured(
    text_only_bundle: Path, tmp_path: Path
) -> None:
    from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle

    manifest = json.loads((text_only_bundle / "manifest.json").read_text())
    assert manifest["probe"]["requests"] > 0
    result = quantize_bundle(
        text_only_bundle, tmp_path / "int8", QuantizeConfig(mode="dynamic", towers="user")
    )
    request = result.fidelity["queries"]["request"]
    assert request["count"] > 0 and 0 <= request["overlap@10"] <= 1


def test_evaluate_requests_on_text_only_items_has_numbers(text_only_bundle: Path) -> None:
    from recsys_infer.evaluation.run import EvalConfig, run_evaluation

    report = run_evaluation(
        text_only(small_sample()),
        [text_only_bundle],
        [],
        EvalConfig(exclude_seen=True, requests=True, ks=(10,)),
        progress=False,
    ).to_json()
    requests = report["models"][0]["text_requests"]
    assert requests["users"] > 0
    assert all(math.isfinite(m["mean"]) for m in requests["metrics"].values())
