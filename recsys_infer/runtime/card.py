"""The bundle's model card (``README.md``), written from its manifest every time one is written,
so it never describes another model than the bundle holds: what the model is, what it was
trained on, what was measured, what it is for, and under which licence its weights come. The
description is :mod:`.describe`'s, the one ``recsys-infer info`` prints."""

from __future__ import annotations

from .describe import data_lines, fidelity_lines, model_lines, tower_line
from .manifest import Manifest

CARD = "README.md"

_USE = [
    "Ranking the items of this catalogue for a user's recent history and/or a short free-text",
    "request, and encoding new items of the same kind of catalogue. Scores are cosines, comparable",
    "within one request, not calibrated probabilities. The model reflects the interactions it was",
    "trained on, popularity and gaps included; evaluate it on your own held-out data before",
    "relying on it, and do not use it to make decisions about people.",
]


def model_card(manifest: Manifest) -> str:
    """The card for ``manifest``."""
    enc = manifest.provenance.encoder
    encoder, licence = enc.get("name") or "unknown", enc.get("license") or "unknown"
    front = [
        "---",
        f"license: {licence}",
        "library_name: recsys-infer",
        "tags: [recommendation, two-tower, onnx, recsys-infer]",
    ]
    if encoder != "unknown" and not encoder.startswith("/"):
        front.append(f"base_model: {encoder}")
    towers = [tower_line(name, spec) for name, spec in manifest.towers.items()]
    lines = [*front, "---", "", f"# A recsys-infer two-tower recommender on {encoder}", ""]
    lines += [
        "Written by recsys-infer from this bundle's `manifest.json`, which holds every figure below in",
        "full. Load it with `recsys_infer.Engine.load(PATH)` or serve it with `recsys-infer serve PATH`.",
    ]
    lines += ["", "## Model", "", *_items([*model_lines(manifest), *towers])]
    lines += ["", "## Data", "", *_items(data_lines(manifest))]
    lines += ["", "## Measured fidelity", "", *_items(fidelity_lines(manifest))]
    lines += ["", "## Intended use", "", *_USE, "", "## Licence", ""]
    lines += [
        f"The weights derive from {encoder}, licensed {licence}; this bundle's weights follow",
        "that licence. The training data's own terms apply to the model trained on it.",
        "",
    ]
    return "\n".join(lines)


def _items(lines: list[str]) -> list[str]:
    return [f"- {line}" for line in lines]
