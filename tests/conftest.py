"""Shared fixtures: a tiny random BERT encoder, and a checkpoint and bundle built from it.

Everything is offline and seeded. The tiny encoder (2 layers, hidden size 32) has a WordPiece
vocabulary built in memory from the sample catalogue's words, so tokenisation is realistic.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from recsys_infer.data import Dataset, sample_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def small_sample() -> Dataset:
    """A small slice of the built-in catalogue: fast to train and export on."""
    return sample_dataset(num_items=300, num_users=120, seed=3)


def _vocabulary() -> list[str]:
    words: set[str] = set()
    for item in sample_dataset().catalog:
        words.update(re.findall(r"[a-z0-9]+", item.text.lower()))
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punct = list(".,;:!?|&>-()'\"/")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + sorted(words) + chars + [f"##{c}" for c in chars] + punct
    return list(dict.fromkeys(tokens))  # unique, first place kept: ids stay dense


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local encoder folder: random 2-layer BERT (hidden 32) plus a fast WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-encoder")
    vocab = {token: i for i, token in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
    )
    BertModel(config).save_pretrained(folder)
    write_pooling_modules(folder, "mean")
    return folder


def write_pooling_modules(folder: Path, pooling: str) -> None:
    """The sentence-transformers modules that declare how ``folder``'s encoder pools (``mean``
    or ``cls``) and that it normalises, as sentence-transformers saves them."""
    import json

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "2_Normalize").mkdir(exist_ok=True)
    modes = (
        "cls_token",
        "mean_tokens",
        "max_tokens",
        "mean_sqrt_len_tokens",
        "weightedmean_tokens",
        "lasttoken",
    )
    config = {"word_embedding_dimension": 32} | {f"pooling_mode_{m}": False for m in modes}
    config[{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}[pooling]] = True
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 64, "do_lower_case": False})
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recsys_infer.toolchain.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    config = TrainConfig(
        user_tower="text",
        max_steps=8,
        batch_size=16,
        learning_rate=1e-3,
        user_max_length=48,
        item_max_length=32,
    )
    train(small_sample(), out, encoder=str(tiny_encoder), config=config, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recsys_infer.toolchain.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export_bundle(tiny_checkpoint, out, progress=False)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    import shutil

    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def seq_bundle_for_compress(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sequence bundle: a history graph plus a request tower, for compression tests."""
    from recsys_infer.toolchain.export import export_bundle
    from recsys_infer.toolchain.train import TrainConfig, train

    root = tmp_path_factory.mktemp("seqc")
    config = TrainConfig(
        user_tower="sequence",  # type: ignore[arg-type]
        epochs=2,
        eval_every=1,
        batch_size=16,
        hidden=32,
        heads=2,
        layers=1,
        item_head_hidden=64,
        item_max_length=32,
        user_max_length=32,
        max_history=8,
    )
    train(small_sample(), root / "ckpt", encoder=str(tiny_encoder), config=config, progress=False)
    export_bundle(root / "ckpt", root / "bundle", progress=False)
    return root / "bundle"


@pytest.fixture(scope="session")
def seq_optimized(seq_bundle_for_compress: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sequence bundle with its request graph fused (``optimize --tower user``); tests
    only read it."""
    from recsys_infer.toolchain.compress import optimize_bundle

    out = tmp_path_factory.mktemp("seq-opt") / "bundle"
    optimize_bundle(seq_bundle_for_compress, out, towers="user", progress=False)
    return out


def request_graph(bundle: Path) -> Path:
    """The graph file a bundle's request tower reads."""
    from recsys_infer.runtime.bundle import read_manifest

    return bundle / read_manifest(bundle).towers["request"].file


def text_feeds(graph: Path, lengths: list[int], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One unpadded feed per length, random ids from ``graph``'s vocabulary, as a text graph's
    calibration reads them."""
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    words = next(t for t in onnx.load(str(graph)).graph.initializer if "word_embeddings" in t.name)
    vocab = numpy_helper.to_array(words).shape[0]
    feeds = []
    for n in lengths:
        ids = rng.integers(1, vocab, size=(1, n), dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds
