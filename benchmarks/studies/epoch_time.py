"""Training time per epoch of the default (sequence) model as the catalogue grows.

    .venv/bin/python benchmarks/studies/epoch_time.py [--sizes 3000 30000 300000] [--threads 2]
        [--json benchmarks/results/epoch_time.json]

For each catalogue size it generates product-like shopping data in code (2 shoppers for every 5
items, 5 to 10 interactions each, item popularity with a Zipf long tail), then runs
``train_sequence_loop`` exactly as ``recsys-infer train`` does with its defaults:

- **auto** (the default): full softmax up to ``FULL_SOFTMAX_MAX_ITEMS`` items, sampled softmax
  with the logQ correction above; one whole epoch, timed.
- **full** and **sampled** at every size, the one ``auto`` does not pick timed over ``--steps``
  steps: where the switch pays. Above ``--whole-epochs-up-to`` items the default is timed over
  steps too. A timed-over-steps epoch is extrapolated (``steps_per_epoch * seconds_per_step``;
  a step costs the same anywhere in an epoch) and marked so.

Item text vectors are random unit vectors of the default encoder's width (384): training reads
only those vectors, so the loop's cost does not depend on their content. Embedding the
catalogue with the encoder is a separate, one-off cost, linear in the catalogue (stated with
its measured rate in QUALITY.md).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from recsys_infer.data import Dataset, leave_one_out
from recsys_infer.runtime.catalog import Catalog, Item
from recsys_infer.toolchain.train.loop import TrainConfig
from recsys_infer.toolchain.train.model import ModelConfig, TwoTower
from recsys_infer.toolchain.train.sequence import FULL_SOFTMAX_MAX_ITEMS, train_sequence_loop

WIDTH = 384


def shopping_data(n_items: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    n_users = max(100, n_items * 2 // 5)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = rng.permutation(popularity / popularity.sum())
    lengths = rng.integers(5, 11, size=n_users)
    draws = rng.choice(n_items, size=int(lengths.sum()), p=popularity)
    ids = [f"I{i}" for i in range(n_items)]
    sequences, start = {}, 0
    for u, length in enumerate(lengths):
        seen = list(dict.fromkeys(draws[start : start + length].tolist()))
        start += length
        if len(seen) >= 3:
            sequences[f"U{u}"] = tuple(ids[i] for i in seen)
    catalog = Catalog([Item(i, i, {}) for i in ids])
    return Dataset(name=f"shopping-{n_items}", source="generated", catalog=catalog, sequences=sequences)


def model_for(n_items: int, config: TrainConfig) -> TwoTower:
    # The encoder is never run here (the vectors are given); a one-layer stand-in of the right
    # width keeps the model's structure exactly as training builds it.
    encoder = BertModel(BertConfig(vocab_size=8, hidden_size=WIDTH, num_hidden_layers=1,
                                   num_attention_heads=12, intermediate_size=32))  # fmt: skip
    model_config = ModelConfig(
        encoder="stand-in", user_tower=config.user_tower, temperature=float(config.temperature or 0.07),
        sequence=config.sequence_config(),
    )  # fmt: skip
    model = TwoTower(None, encoder, model_config, n_items=n_items)
    for p in model.item.encoder.parameters():
        p.requires_grad_(False)
    return model


def timed(n_items: int, softmax: str, config: TrainConfig, *, max_steps: int | None) -> dict[str, float]:
    data = shopping_data(n_items)
    split = leave_one_out(data)
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(n_items, WIDTH), dim=-1)
    model = model_for(n_items, config)
    windows = sum(1 for seq in split.train.values() if len(seq) >= 2)
    steps_per_epoch = -(-windows // int(config.batch_size or 64))
    run, _ = train_sequence_loop(
        model, embeddings, split, data.catalog,
        epochs=1, batch_size=int(config.batch_size or 64), learning_rate=float(config.learning_rate or 1e-3),
        weight_decay=config.weight_decay, temperature=float(config.temperature or 0.07), seed=0,
        bf16=bool(config.bf16), eval_every=1, patience=1, deadline=None, progress=False,
        unseen_negatives=config.unseen_negatives, softmax=softmax, negatives=config.negatives,
        max_steps=max_steps,
    )  # fmt: skip
    row = {"items": n_items, "users": len(data.sequences), "softmax": run.softmax, "steps": run.steps,
           "steps_per_epoch": steps_per_epoch}  # fmt: skip
    if run.epoch_seconds:
        row["epoch_seconds"] = run.epoch_seconds[0]
        row["seconds_per_step"] = run.epoch_seconds[0] / max(1, run.steps)
        row["measured"] = "whole epoch"
    else:  # stopped by max_steps
        row["seconds_per_step"] = run.step_seconds / run.steps
        row["epoch_seconds"] = row["seconds_per_step"] * steps_per_epoch
        row["measured"] = f"{run.steps} steps, extrapolated"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3_000, 30_000, 300_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps timed where a whole epoch is not run")
    parser.add_argument(
        "--whole-epochs-up-to", type=int, default=100_000,
        help="above this many items the default softmax is timed over --steps steps too, and extrapolated",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig()
    rows = []
    for n in args.sizes:
        auto = "sampled" if n > FULL_SOFTMAX_MAX_ITEMS else "full"
        for softmax in ("full", "sampled"):
            whole = softmax == auto and n <= args.whole_epochs_up_to
            row = timed(n, softmax, config, max_steps=None if whole else args.steps)
            row["default"] = softmax == auto
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "bf16": bool(config.bf16)},
        "settings": {"batch_size": config.batch_size, "negatives": config.negatives,
                     "full_softmax_max_items": FULL_SOFTMAX_MAX_ITEMS},
        "rows": rows,
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'items':>8} {'users':>8} {'softmax':>8} {'s/step':>8} {'epoch s':>9}  measured")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        print(f"{r['items']:>8} {r['users']:>8} {r['softmax']:>8} {r['seconds_per_step']:>8.3f} "
              f"{r['epoch_seconds']:>9.1f}  {r['measured']}{mark}")  # fmt: skip


if __name__ == "__main__":
    main()
