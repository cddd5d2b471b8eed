"""The tiny models every test builds on, as plain functions: a random 2-layer BERT encoder
(hidden size 32) with a WordPiece vocabulary made in memory from the sample catalogue's words,
and a text-kind and a sequence-kind checkpoint and bundle trained briefly on a slice of the
sample catalogue. Everything is offline and seeded.

``python -m tests.fixtures DIR`` builds the bundles into ``DIR`` with the toolchain (torch);
the runtime and service tests then run where torch is not installed, reading them from the
folder named by ``RECSYS_INFER_TEST_BUNDLES`` (see ``conftest.py``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from recsys_infer.data import Dataset, sample_dataset

#: The bundles ``build_bundles`` writes, by fixture name, as folders of its output directory.
BUNDLES = {"tiny_bundle": "bundle", "seq_bundle_for_compress": "seq-bundle"}


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


def build_encoder(folder: Path) -> Path:
    """A local encoder folder: random 2-layer BERT (hidden 32) plus a fast WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
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


def build_checkpoint(encoder: Path, out: Path) -> Path:
    """A text-kind checkpoint, 8 steps on the small sample."""
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    config = TrainConfig(
        user_tower="text",
        max_steps=8,
        batch_size=16,
        learning_rate=1e-3,
        user_max_length=48,
        item_max_length=32,
    )
    train(small_sample(), out, encoder=str(encoder), config=config, progress=False)
    return out


def build_bundle(checkpoint: Path, out: Path) -> Path:
    from recsys_infer.toolchain.export.bundle import export_bundle

    export_bundle(checkpoint, out, progress=False)
    return out


def build_sequence_bundle(encoder: Path, root: Path) -> Path:
    """A tiny sequence bundle: a history graph plus a request tower."""
    from recsys_infer.toolchain.train.loop import TrainConfig, train

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
    train(small_sample(), root / "ckpt", encoder=str(encoder), config=config, progress=False)
    return build_bundle(root / "ckpt", root / "bundle")


def build_bundles(out: Path) -> dict[str, Path]:
    """Every bundle the runtime and service tests read, built into ``out``."""
    encoder = build_encoder(out / "work" / "encoder")
    bundle = build_bundle(
        build_checkpoint(encoder, out / "work" / "checkpoint"), out / BUNDLES["tiny_bundle"]
    )
    sequence = build_sequence_bundle(encoder, out / "work" / "sequence")
    sequence.rename(out / BUNDLES["seq_bundle_for_compress"])
    return {"tiny_bundle": bundle, "seq_bundle_for_compress": out / BUNDLES["seq_bundle_for_compress"]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.fixtures DIR")
    built = build_bundles(Path(sys.argv[1]))
    print(json.dumps({name: str(path) for name, path in built.items()}))
