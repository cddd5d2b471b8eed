"""The sequence model's levers (whitening, item offsets) and their choice on validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recsys_infer import Engine
from recsys_infer.enums import Lever
from recsys_infer.errors import ConfigError
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.schema import encode
from recsys_infer.toolchain.train.levers import Levers, choose, open_levers
from recsys_infer.toolchain.train.loop import TrainConfig, train
from recsys_infer.toolchain.train.model import WHITENING_SHRINKAGE, ItemHead
from tests.conftest import small_sample

SEQ = {"user_tower": "sequence", "user_max_length": 32, "item_max_length": 32, "hidden": 32, "heads": 2,
       "item_head_hidden": 64, "batch_size": 32}  # fmt: skip


def _crowded(n: int = 400, dim: int = 16) -> torch.Tensor:
    """Unit vectors in a narrow cone, as a sentence encoder gives product texts: one shared
    direction and a little of everything else."""
    g = torch.Generator().manual_seed(0)
    shared = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    spread = torch.randn(n, dim, generator=g) * torch.linspace(0.02, 0.3, dim)
    return torch.nn.functional.normalize(shared + spread, dim=-1)


def test_whitening_spreads_the_catalogue_and_starts_as_its_identity() -> None:
    vectors = _crowded()
    head = ItemHead(16, 32, whiten=True)
    head.fit_whitening(vectors)
    assert head.mean is not None and head.whitening is not None
    white = (vectors - head.mean) @ head.whitening
    eigenvalues = torch.linalg.eigvalsh(torch.cov(white.T.double()))
    raw = torch.linalg.eigvalsh(torch.cov(vectors.T.double()))
    # Every direction's variance is s / (s + shrinkage * mean(s)): below 1, and the catalogue's
    # main directions close to it, where the raw vectors' variances span two orders of magnitude.
    expected = raw / (raw + WHITENING_SHRINKAGE * raw.mean())
    np.testing.assert_allclose(eigenvalues.numpy(), expected.numpy(), rtol=0.02, atol=1e-6)
    assert float(raw.max() / raw.min()) > 50 and float(eigenvalues.max() / eigenvalues.min()) < 15
    # Untrained, the head is the identity of the whitened space.
    torch.testing.assert_close(head(vectors), torch.nn.functional.normalize(white, dim=-1))
    # The transform is part of the head's state (saved, loaded, exported with it).
    again = ItemHead(16, 32, whiten=True)
    again.load_state_dict(head.state_dict())
    torch.testing.assert_close(again(vectors), head(vectors))
    assert set(ItemHead(16, 32).state_dict()) < set(head.state_dict())  # old heads load as before


def test_levers_are_chosen_greedily_and_only_on_a_strict_gain(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import make_dataclass

    from recsys_infer.toolchain.train import levers as module

    # Two levers, to see the greedy order: each tried on top of the best so far.
    two = make_dataclass("Two", [("whiten", bool, False), ("deep", bool, False)], frozen=True)
    monkeypatch.setattr(module, "ORDER", ("whiten", "deep"))
    scores = {two(): 0.10, two(whiten=True): 0.12, two(whiten=True, deep=True): 0.12}
    tried: list[Any] = []

    def trial(levers: Any) -> tuple[float | None, Any]:
        tried.append(levers)
        return scores[levers], levers

    choice, state = choose(two(), ["whiten", "deep"], trial, out_of_time=lambda: False)
    assert tried == [two(), two(whiten=True), two(whiten=True, deep=True)]
    assert choice.levers == state == two(whiten=True)  # a tie keeps the simpler model
    assert [t["validation_ndcg@10"] for t in choice.trials] == [0.10, 0.12, 0.12]
    # A trial the clock cut short is recorded but never wins; none is tried after time is up.
    cut = choose(two(), ["whiten", "deep"], lambda lv: (None if lv.whiten else 0.1, lv),
                 out_of_time=lambda: False)[0]  # fmt: skip
    assert cut.levers == two() and cut.trials[1]["validation_ndcg@10"] is None
    late = choose(two(), ["whiten", "deep"], trial, out_of_time=lambda: True)[0]
    assert len(late.trials) == 1 and late.levers == two()


def test_only_a_lever_set_to_auto_is_tried() -> None:
    off = {"whiten": Lever.OFF, "item_offsets": Lever.OFF}
    assert open_levers({**off, "whiten": Lever.AUTO}) == (Levers(), ["whiten"])
    assert open_levers({**off, "whiten": Lever.ON}) == (Levers(whiten=True), [])
    assert open_levers(off) == (Levers(), [])
    both = open_levers({"whiten": Lever.AUTO, "item_offsets": Lever.AUTO})
    assert both == (Levers(), ["whiten", "item_offsets"])  # tried in ORDER
    assert open_levers({"whiten": Lever.AUTO, "item_offsets": Lever.ON}) == (
        Levers(item_offsets=True),
        ["whiten"],
    )
    assert Levers(whiten=True, item_offsets=True).describe() == "whitened + item offsets"
    assert Levers.of({"whiten": True}) == Levers(whiten=True)  # a record from before offsets were a lever
    assert TrainConfig().whiten is TrainConfig().item_offsets is Lever.OFF  # auto is not the default yet
    assert TrainConfig(whiten=True).whiten is Lever.ON  # type: ignore[arg-type]  # a recipe's boolean
    assert TrainConfig(item_offsets=True).sequence_config().item_offsets is True  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on, off or auto"):
        TrainConfig(whiten="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on, off or auto"):
        TrainConfig(item_offsets="sometimes")  # type: ignore[arg-type]


def _trained(tiny_encoder: Path, out: Path, **settings: Any) -> dict[str, Any]:
    config = TrainConfig(**SEQ, epochs=7, eval_every=1, trial_epochs=5, **settings)  # type: ignore[arg-type]
    result = train(small_sample(), out, encoder=str(tiny_encoder), config=config, progress=False)
    doc = json.loads((out / "recsys_checkpoint.json").read_text())
    assert doc["training"]["extra"] == result.extra
    return dict(result.extra, model=doc["model"]["sequence"])


def test_train_tries_the_auto_levers_on_validation_and_keeps_the_winner(
    tiny_encoder: Path, tmp_path: Path
) -> None:
    extra = _trained(tiny_encoder, tmp_path / "auto", whiten=Lever.AUTO)
    trials = extra["trials"]
    assert [t["whiten"] for t in trials] == [False, True] and extra["chosen_on_validation"] == ["whiten"]
    assert not any(t["item_offsets"] for t in trials) and not extra["model"]["item_offsets"]
    # The checkpoint is the trial that scored best (plain on a tie), carried on from its 5 epochs
    # (its validation at epoch 5 is the trial's) to the 7 asked for.
    plain, whitened = (t["validation_ndcg@10"] for t in trials)
    chosen = extra["levers"]["whiten"]
    assert chosen == (whitened > plain) == extra["model"]["whiten"]
    assert extra["epochs"] == 7 and round(extra["validation"][4]["ndcg@10"], 5) == max(plain, whitened)


def test_item_offsets_are_tried_on_top_of_the_levers_chosen_before_them(
    tiny_encoder: Path, tmp_path: Path
) -> None:
    from recsys_infer.toolchain.train.checkpoint import load_checkpoint

    extra = _trained(tiny_encoder, tmp_path / "both", whiten=Lever.AUTO, item_offsets=Lever.AUTO)
    plain, whitened, offsets = extra["trials"]
    assert extra["chosen_on_validation"] == ["whiten", "item_offsets"]
    assert not plain["item_offsets"] and not whitened["item_offsets"] and offsets["item_offsets"]
    # The third trial builds on whatever the second chose.
    assert offsets["whiten"] == (whitened["validation_ndcg@10"] > plain["validation_ndcg@10"])
    best = max(extra["trials"], key=lambda t: t["validation_ndcg@10"])
    assert extra["levers"] == {k: best[k] for k in ("whiten", "item_offsets")}
    ckpt = load_checkpoint(tmp_path / "both")
    assert (ckpt.model.offset_matrix() is not None) == extra["levers"]["item_offsets"]


def test_item_offsets_are_bounded_in_length() -> None:
    from recsys_infer.toolchain.train.model import OFFSET_MAX_NORM, bounded

    offsets = torch.tensor([[3.0, 4.0], [0.0, 0.1], [0.0, 0.0]])
    out = bounded(offsets)
    np.testing.assert_allclose(out[0].numpy(), [0.6 * OFFSET_MAX_NORM, 0.8 * OFFSET_MAX_NORM], atol=1e-6)
    assert torch.equal(out[1:], offsets[1:])  # short ones (and zero ones) are left as they are


def test_a_whitened_model_exports_and_serves_what_it_trained(tiny_encoder: Path, tmp_path: Path) -> None:
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.checkpoint import load_checkpoint

    extra = _trained(tiny_encoder, tmp_path / "ckpt", whiten=Lever.ON)
    assert extra["trials"] == [] and extra["chosen_on_validation"] == [] and extra["model"]["whiten"]
    ckpt = load_checkpoint(tmp_path / "ckpt")
    head = ckpt.model.item.head
    assert isinstance(head, ItemHead) and head.whitening is not None
    assert not torch.equal(head.whitening, torch.eye(head.whitening.shape[0]))  # fitted, and saved
    export_bundle(tmp_path / "ckpt", tmp_path / "bundle", progress=False)
    manifest = read_manifest(tmp_path / "bundle")
    assert encode(manifest)["parity"]["item"]["max_abs_diff"] < 1e-4  # the ONNX graph whitens too
    # The index holds what the item tower gives, so an item added live lands where trained ones do.
    engine = Engine.load(tmp_path / "bundle", device="cpu")
    stored = np.load(tmp_path / "bundle" / "item_vectors.npy")
    np.testing.assert_allclose(engine.encode_items(list(ckpt.catalog.texts)), stored, atol=1e-5)
