"""The bundle's model card (``README.md``), written from its manifest every time one is written,
so it never describes another model than the bundle holds: what the model is, what it was
trained on, what was measured, what it is for, and under which licence its weights come."""

from __future__ import annotations

from typing import Any

CARD = "README.md"


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "not measured"


def model_card(doc: dict[str, Any]) -> str:
    """The card for a manifest, given as its JSON document."""
    enc = doc.get("provenance", {}).get("encoder", {})
    encoder, licence = enc.get("name") or "unknown", enc.get("license") or "unknown"
    lines = [*_front_matter(encoder, licence), "", f"# A recsys-infer two-tower recommender on {encoder}", ""]
    lines += [
        "Written by recsys-infer from this bundle's `manifest.json`, which holds every figure below in",
        "full. Load it with `recsys_infer.Engine.load(PATH)` or serve it with `recsys-infer serve PATH`.",
    ]
    lines += ["", "## Model", "", *_model(doc, encoder)]
    lines += ["", "## Data", "", *_data(doc.get("provenance", {}))]
    lines += ["", "## Measured fidelity", "", *_fidelity(doc)]
    lines += [
        "",
        "## Intended use",
        "",
        "Ranking the items of this catalogue for a user's recent history and/or a short free-text",
        "request, and encoding new items of the same kind of catalogue. Scores are cosines, comparable",
        "within one request, not calibrated probabilities. The model reflects the interactions it was",
        "trained on, popularity and gaps included; evaluate it on your own held-out data before",
        "relying on it, and do not use it to make decisions about people.",
        "",
        "## Licence",
        "",
        f"The weights derive from {encoder}, licensed {licence}; this bundle's weights follow",
        "that licence. The training data's own terms apply to the model trained on it.",
        "",
    ]
    return "\n".join(lines)


def _front_matter(encoder: str, licence: str) -> list[str]:
    front = [
        "---",
        f"license: {licence}",
        "library_name: recsys-infer",
        "tags: [recommendation, two-tower, onnx, recsys-infer]",
    ]
    if encoder != "unknown" and not encoder.startswith("/"):
        front.append(f"base_model: {encoder}")
    return [*front, "---"]


def _model(doc: dict[str, Any], encoder: str) -> list[str]:
    enc, towers = doc.get("provenance", {}).get("encoder", {}), doc.get("towers", {})
    kind = towers.get("user", {}).get("kind", "text")
    lines = [
        f"- Encoder: {encoder}"
        + (f" at revision {enc['revision']}" if enc.get("revision") else "")
        + (f", {enc['pooling']} pooling" if enc.get("pooling") else "")
        + ".",
        f"- User tower: {kind} ("
        + (
            "a causal transformer over the history's item vectors; free-text requests go through "
            "the request tower"
            if kind == "sequence"
            else "the history written as text, and the request, through the encoder"
        )
        + ").",
    ]
    for name, t in towers.items():
        quantization = t.get("quantization")
        lines.append(
            f"- `{name}` tower: `{t.get('file')}`, {t.get('precision')}, {t.get('dim')}-d"
            + (f", quantization {quantization.get('mode')}" if isinstance(quantization, dict) else "")
        )
    fusion = doc.get("fusion")
    if fusion:
        lines.append(
            "- Two spaces: each item vector joins the trained space and the encoder's own; the weights "
            f"were chosen on the {fusion.get('chosen_on', {}).get('split', 'validation')} split."
        )
    for step in doc.get("compression", []):
        lines.append(f"- Compression: {step.get('step')} {step.get('mode') or ''}".rstrip() + ".")
    return lines


def _data(prov: dict[str, Any]) -> list[str]:
    data, training = prov.get("data", {}), prov.get("training", {})
    if not data:
        return ["- Not recorded (an untrained encoder, or a bundle built elsewhere)."]
    lines = [
        f"- Trained on `{data.get('name')}` ({data.get('items')} items, {data.get('users')} users, "
        f"{data.get('interactions')} interactions), fingerprint `{str(data.get('fingerprint'))[:16]}`.",
        f"- {training.get('steps')} training steps, stopped by {training.get('stopped_by')}.",
    ]
    extra = training.get("extra") or {}
    if "best_validation_ndcg@10" in extra:
        lines.append(
            f"- Validation NDCG@10 of the kept epoch ({extra.get('best_epoch')}): "
            f"{_num(extra['best_validation_ndcg@10'])} (history masked, full ranking)."
        )
    return lines


def _fidelity(doc: dict[str, Any]) -> list[str]:
    fidelity = doc.get("fidelity", {})
    lines = [f"- Against: {fidelity.get('reference', 'the PyTorch checkpoint')}."]
    for side in ("item", "user", "request"):
        if f"{side}_min_cosine" in fidelity:
            lines.append(
                f"- {side} vectors: lowest cosine to the reference {_num(fidelity[side + '_min_cosine'], 6)}."
            )
    if "index_recall_at_10_vs_exact" in fidelity:
        lines.append(
            f"- HNSW recall@10 against exact search: {_num(fidelity['index_recall_at_10_vs_exact'], 3)} "
            f"(ef_search {doc.get('index', {}).get('ef_search')})."
        )
    if isinstance(fidelity.get("item"), dict) and "min_cosine" in fidelity["item"]:
        lines.append(
            f"- item vectors: lowest cosine to the reference {_num(fidelity['item']['min_cosine'], 6)}."
        )
    queries = fidelity.get("queries")
    if isinstance(queries, dict):
        for group, m in queries.items():
            if isinstance(m, dict) and "overlap@10" in m:
                lines.append(f"- {group}: overlap@10 with the uncompressed model {_num(m['overlap@10'], 3)}.")
    return lines
