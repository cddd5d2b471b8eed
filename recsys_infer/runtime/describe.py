"""A bundle in words, from its manifest: the one description that ``recsys-infer info`` prints
and the model card (``README.md``, :mod:`.card`) renders. Each function returns plain lines;
the caller indents them or makes them list items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .manifest import Manifest, TowerSpec


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "not measured"


def tower_line(name: str, spec: TowerSpec, size_bytes: int | None = None) -> str:
    """One tower: its graph file (and size), precision, what it reads, and its output."""
    if spec.kind == "sequence":
        shape = (
            f"causal transformer over up to {spec.max_length} history item vectors "
            f"({spec.layers} layers, width {spec.hidden})"
        )
    else:
        shape = f"{spec.pooling} pooling, max {spec.max_length} tokens" + (
            ", with a trained head" if spec.head else ""
        )
    size = f" ({size_bytes / 1e6:.1f} MB)" if size_bytes is not None else ""
    return f"{name} tower: {spec.file}{size}, {spec.precision}, {shape}, dim {spec.dim}" + (
        f", quantization {spec.quantization}" if spec.quantization else ""
    )


def model_lines(manifest: Manifest) -> list[str]:
    """The encoder, the kind of user tower, the two spaces and the compression steps."""
    enc = manifest.provenance.encoder
    kind = manifest.user.kind
    lines = [
        f"Encoder: {enc.get('name') or 'unknown'}"
        + (f" at revision {enc['revision']}" if enc.get("revision") else "")
        + (f", {enc['pooling']} pooling" if enc.get("pooling") else "")
        + f"; licence {enc.get('license') or 'unknown'}.",
        f"User tower: {kind} ("
        + (
            "a causal transformer over the history's item vectors; free-text requests go through "
            "the request tower"
            if kind == "sequence"
            else "the history written as text, and the request, through the encoder"
        )
        + ").",
    ]
    if manifest.fusion is not None:
        split = manifest.fusion.chosen_on.get("split", "validation")
        lines.append(
            "Two spaces: each item vector joins the trained space and the encoder's own; the weights "
            f"were chosen on the {split} split."
        )
    for step in manifest.compression:
        lines.append(f"Compression: {step.step} {step.extra.get('mode') or ''}".rstrip() + ".")
    return lines


def data_lines(manifest: Manifest) -> list[str]:
    """What the model was trained on, for how long, and its validation score."""
    data, training = manifest.provenance.data, manifest.provenance.training
    if not data:
        return ["Training data: not recorded (an untrained encoder, or a bundle built elsewhere)."]
    lines = [
        f"Trained on {data.get('name')} ({data.get('items')} items, {data.get('users')} users, "
        f"{data.get('interactions')} interactions), fingerprint {str(data.get('fingerprint'))[:16]}.",
        f"{training.get('steps')} training steps, stopped by {training.get('stopped_by')}.",
    ]
    extra: Mapping[str, Any] = training.get("extra") or {}
    if "best_validation_ndcg@10" in extra:
        lines.append(
            f"Validation NDCG@10 of the kept epoch ({extra.get('best_epoch')}): "
            f"{_num(extra['best_validation_ndcg@10'])} (history masked, full ranking)."
        )
    return lines


def fidelity_lines(manifest: Manifest) -> list[str]:
    """What was measured against the reference: cosines, index recall and overlap."""
    fidelity = manifest.fidelity
    lines = [f"Measured against: {fidelity.get('reference', 'the PyTorch checkpoint')}."]
    for side in ("item", "user", "request"):
        if f"{side}_min_cosine" in fidelity:
            lines.append(
                f"{side} vectors: lowest cosine to the reference {_num(fidelity[side + '_min_cosine'], 6)}."
            )
    if "index_recall_at_10_vs_exact" in fidelity:
        lines.append(
            f"HNSW recall@10 against exact search: {_num(fidelity['index_recall_at_10_vs_exact'], 3)} "
            f"(ef_search {manifest.index.ef_search})."
        )
    item = fidelity.get("item")
    if isinstance(item, Mapping) and "min_cosine" in item:
        lines.append(f"item vectors: lowest cosine to the reference {_num(item['min_cosine'], 6)}.")
    queries = fidelity.get("queries")
    if isinstance(queries, Mapping):
        for group, m in queries.items():
            if isinstance(m, Mapping) and "overlap@10" in m:
                lines.append(f"{group}: overlap@10 with the uncompressed model {_num(m['overlap@10'], 3)}.")
    return lines
