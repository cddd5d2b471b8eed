"""Tokenisation shared by training and serving, so both see exactly the same ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from recsys_infer.errors import BundleError, ConfigError


class TextTokenizer:
    """Turns texts into right-padded ``int64`` matrices for one tower.

    Truncation and padding are set once here and never changed afterwards, so one instance may
    be shared by many threads. Each tower gets its own instance (its own ``max_length``).
    """

    def __init__(self, tokenizer: Tokenizer, *, max_length: int, pad_token: str) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise BundleError(
                f"the tokenizer has no padding token {pad_token!r}; the manifest and tokenizer.json "
                "disagree. Re-export the bundle with `recsys-infer export`."
            )
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.pad_token = pad_token

    @classmethod
    def from_file(cls, path: Path | str, *, max_length: int, pad_token: str) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_length=max_length, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids, attention mask and (all-zero) token type ids, each ``(n, longest)``."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens each text has after truncation (special tokens included)."""
        return [sum(e.attention_mask) for e in self._tokenizer.encode_batch(list(texts))]
