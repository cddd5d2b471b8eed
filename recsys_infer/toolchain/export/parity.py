"""The exported graphs against PyTorch, on real texts and histories of many lengths: the check
that fails an export whose graph disagrees with the model it came from.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from recsys_infer.errors import ParityError
from recsys_infer.ranking import cosines
from recsys_infer.runtime.encoder import OnnxEncoder
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.runtime.users import SequenceUserEncoder, trained_block
from recsys_infer.toolchain.export.recipe import ExportConfig
from recsys_infer.toolchain.train.checkpoint import Checkpoint
from recsys_infer.toolchain.train.model import SequenceTower, TextTower

ODD_TEXTS = (
    "x",
    "ok",
    "Misérables, Les (1995). Genres: Drama, War.",
    "🎬🍿 night — \u00e9t\u00e9 \u4e2d\u6587 tabs\tand\nnewlines",
    "UPPER case AND lower case, punctuation!!! ??? ...",
)


def pick_parity_texts(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """Texts of many lengths: shortest, longest, evenly spread quantiles, and a few odd ones."""
    unique = sorted(set(texts), key=len)
    if not unique:
        return list(ODD_TEXTS)
    take = max(1, n - len(ODD_TEXTS) - 1)
    positions = np.linspace(0, len(unique) - 1, num=min(take, len(unique))).round().astype(int)
    chosen = [unique[i] for i in sorted(set(positions.tolist()))]
    longest = " ; ".join(random.Random(seed).sample(unique, min(len(unique), 40)))
    return [*chosen, longest, *ODD_TEXTS]


def _torch_encode(
    tower: TextTower, tokenizer: TextTokenizer, texts: list[str], batch: int = 16
) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            feats = tokenizer(texts[start : start + batch])
            out.append(
                tower(torch.from_numpy(feats["input_ids"]), torch.from_numpy(feats["attention_mask"])).numpy()
            )
    return np.concatenate(out).astype(np.float32)


def _compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    return {"max_abs_diff": float(np.max(np.abs(reference - other))), **cosines(reference, other)}


def check_parity(tower: TextTower, encoder: OnnxEncoder, texts: list[str]) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on ``texts``: in mixed-length batches and one text at a time."""
    reference = _torch_encode(tower, encoder.tokenizer, texts)
    batched = encoder.encode(texts)
    every = max(1, len(texts) // 8)  # about eight texts, one at a time (no padding at all)
    singles = np.concatenate([encoder.encode([t]) for t in texts[::every]])
    a, b = _compare(reference, batched), _compare(reference[::every], singles)
    lengths = encoder.tokenizer.count_tokens(texts)
    return {
        "texts": len(texts),
        "token_lengths": {"min": min(lengths), "max": max(lengths)},
        "max_abs_diff": max(a["max_abs_diff"], b["max_abs_diff"]),
        "min_cosine": min(a["min_cosine"], b["min_cosine"]),
        "mean_cosine": a["mean_cosine"],
    }


def history_texts(ckpt: Checkpoint) -> list[str]:
    fmt = ckpt.config.user_input
    catalog = ckpt.catalog
    texts = []
    probe = ckpt.probe or {}
    requests = list(probe.get("requests", []))
    for i, history in enumerate(probe.get("histories", [])[:200]):
        known = [catalog.get(h).text for h in history if h in catalog]
        request = requests[i] if i % 4 == 0 and i < len(requests) else None
        if known or request:
            texts.append(fmt.render(known, request))
    if not texts:  # no probe: histories from catalogue order
        all_texts = catalog.texts
        texts = [fmt.render(all_texts[i : i + 1 + i % 7]) for i in range(0, min(len(all_texts), 400), 5)]
    return texts


def pick_histories(histories: list[list[str]], n: int) -> list[list[str]]:
    """Histories of many lengths (1 to the longest), shortest and longest included."""
    if not histories:
        return []
    by_length = sorted(histories, key=len)
    positions = np.linspace(0, len(by_length) - 1, num=min(n, len(by_length))).round().astype(int)
    picked = [by_length[i] for i in sorted(set(positions.tolist()))]
    return [by_length[-1][-1:], *picked]  # a one-item history too


def check_sequence_parity(
    tower: SequenceTower, encoder: SequenceUserEncoder, histories: list[list[str]], vectors_of: Any
) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on history vectors: mixed-length batches and one at a time."""
    reference = []
    with torch.no_grad():
        for start in range(0, len(histories), 16):
            chunk = histories[start : start + 16]
            length = min(tower.max_history, max(len(h) for h in chunk))
            batch = torch.zeros(len(chunk), length, tower.output.out_features)
            mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for row, h in enumerate(chunk):
                recent = h[-length:]
                stored = vectors_of(recent)
                own = stored if encoder.fusion is None else trained_block(stored, encoder.fusion)
                batch[row, length - len(recent) :] = torch.from_numpy(own)
                mask[row, length - len(recent) :] = 1
            reference.append(tower(batch, mask).numpy())
    ref = np.concatenate(reference)
    batched = encoder.tower_vectors(histories)
    every = max(1, len(histories) // 8)
    singles = np.concatenate([encoder.tower_vectors([h]) for h in histories[::every]])
    a, b = _compare(ref, batched), _compare(ref[::every], singles)
    lengths = [min(len(h), tower.max_history) for h in histories]
    return {
        "histories": len(histories),
        "history_lengths": {"min": min(lengths), "max": max(lengths)},
        "max_abs_diff": max(a["max_abs_diff"], b["max_abs_diff"]),
        "min_cosine": min(a["min_cosine"], b["min_cosine"]),
        "mean_cosine": a["mean_cosine"],
    }


def require_parity(parity: dict[str, Any], name: str, config: ExportConfig) -> None:
    p = parity[name]
    if p["max_abs_diff"] > config.max_abs_diff or p["min_cosine"] < config.min_cosine:
        raise ParityError(
            f"the exported {name} tower disagrees with PyTorch: max abs diff "
            f"{p['max_abs_diff']:.2e} (allowed {config.max_abs_diff:.0e}), min cosine "
            f"{p['min_cosine']:.6f} (required {config.min_cosine}). No bundle was written. "
            f"Check the encoder exports with opset {config.opset}, or loosen [export] "
            "max_abs_diff/min_cosine in the recipe."
        )
