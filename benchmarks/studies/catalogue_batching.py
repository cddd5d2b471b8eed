"""Catalogue encoding on the CPU: how a bundle's item tower cuts and runs its batches, against
PyTorch bf16 at the batch sizes it does best with.

    python benchmarks/studies/catalogue_batching.py BUNDLE [--checkpoint CKPT] [--rounds 5] [--json FILE]

Two sets of texts: 512 of the bundle's catalogue texts, sampled as ``recsys-infer bench``
samples them (every n-th), and 256 longer ones, each five catalogue texts joined (about 64
tokens on ml-latest-small). Every arm encodes the whole set, sorted into batches of similar
token counts as the engine sorts them; the figure is the median over ``--rounds`` interleaved
rounds of items per second, tokenising included.

- ``64 texts, cores share each batch``: one session with an intra-op thread per core, batches of
  64 texts (how the engine encoded before).
- ``512 tokens, cores share each batch``: the same session, batches of at most 512 tokens.
- ``512 tokens, a batch per core``: the engine's item encoder as ``Engine.load`` makes it, a
  session of one thread run from a thread per core, each on its own batch.
- ``pytorch bf16, N texts`` (with ``--checkpoint``): the checkpoint's item tower in PyTorch
  eager, weights cast to bf16 once, as ``bench``'s reference runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from recsys_infer import Engine
from recsys_infer.bench.timing import timed
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.encoder import CPU_BATCH_TOKENS, OnnxEncoder
from recsys_infer.runtime.engine import cpu_workers
from recsys_infer.runtime.providers import create_session


def _texts(engine: Engine, count: int = 512) -> dict[str, list[str]]:
    catalog = [item.text for item in engine.items(engine.item_ids)]
    step = max(1, len(catalog) // count)
    return {
        "catalogue texts": catalog[::step][:count],
        "five texts joined": [" ".join(catalog[i * 5 : i * 5 + 5]) for i in range(count // 2)],
    }


Encode = Callable[[Sequence[str]], Any]


def _arms(bundle: Path, engine: Engine, checkpoint: Path | None) -> dict[str, Encode]:
    items = engine.item_encoder
    if not isinstance(items, OnnxEncoder):
        raise SystemExit(f"{bundle}: its item tower is not an ONNX graph on this machine")
    cores = cpu_workers(None)
    spec = read_manifest(bundle).item
    shared = create_session(bundle / spec.file, engine.device, threads=cores, spin="run")
    arms: dict[str, Encode] = {
        "64 texts, cores share each batch": OnnxEncoder(shared, items.tokenizer, dim=items.dim).encode,
        f"{CPU_BATCH_TOKENS} tokens, cores share each batch": OnnxEncoder(
            shared, items.tokenizer, dim=items.dim, batch_tokens=CPU_BATCH_TOKENS
        ).encode,
        f"{CPU_BATCH_TOKENS} tokens, a batch per core (the engine's)": items.encode,
    }
    if checkpoint is not None:
        from recsys_infer.bench.reference import reference_subject
        from recsys_infer.toolchain.train.checkpoint import load_checkpoint

        reference = reference_subject(
            checkpoint, load_checkpoint(checkpoint), threads=cores, load_s=0.0, bf16=True
        ).item_encoder
        for size in (32, 64, 128):
            arms[f"pytorch bf16, {size} texts"] = _with_batch(reference, size)
    return arms


def _with_batch(encoder: Any, size: int) -> Encode:
    def encode(texts: Sequence[str]) -> Any:
        encoder.batch_size = size
        return encoder.encode(texts)

    return encode


def _seconds(encode: Encode, texts: Sequence[str]) -> float:
    return timed([partial(encode, texts)], warmup=0)[0] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="the bundle's checkpoint, for PyTorch bf16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    engine = Engine.load(args.bundle, device="cpu", spin="run")
    arms = _arms(args.bundle, engine, args.checkpoint)
    sets = _texts(engine)
    samples: dict[str, dict[str, list[float]]] = {s: {a: [] for a in arms} for s in sets}
    for name, texts in sets.items():
        for encode in arms.values():  # warm-up: first runs, allocator arenas
            encode(texts)
        for _ in range(args.rounds):
            for label, encode in arms.items():
                samples[name][label].append(_seconds(encode, texts))
    counts = engine.item_encoder.tokenizer.count_tokens  # type: ignore[attr-defined]
    result: dict[str, Any] = {"bundle": str(args.bundle), "cores": cpu_workers(None), "sets": {}}
    for name, texts in sets.items():
        tokens = counts(texts)
        rates = {a: round(len(texts) / statistics.median(s), 1) for a, s in samples[name].items()}
        result["sets"][name] = {"texts": len(texts), "mean_tokens": round(sum(tokens) / len(tokens), 1)}
        result["sets"][name]["items_per_s"] = rates
        print(f"{name}: {len(texts)} texts, {result['sets'][name]['mean_tokens']} tokens on average")
        for label, rate in rates.items():
            print(f"  {label:<52} {rate:>8,.0f} items/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
