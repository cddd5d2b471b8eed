"""The probe set a bundle carries: validation histories and request texts.

Later steps (compression, fidelity checks, calibration) measure against it without being handed
the data again. It comes from the validation split, never the test split.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Mapping
from typing import Any

from recsys_infer.runtime.catalog import Catalog, Item

from .split import Split

PROBE_SIZE = 1000
_REQUEST_FIELDS = ("genres", "category", "tags", "brand")


_CLAUSE = re.compile(r"[.|;:\n(]| - | – | — ")
_PATH = re.compile(r"[^\W_][^>.|;:\n]*(?:>[^>.|;:\n]+)+")


def request_from_text(item: Item) -> str | None:
    """A request a shopper might type for an item known only by its text: the first four words
    of its title (the text's first clause), or, for half the items (chosen by id), the last
    step of a category path in the text ("Home > Kitchen > Kettles" -> "Kettles") when it has
    one. Catalogues whose items are ``item_id`` and ``text`` alone get requests this way."""
    text = item.text.strip()
    title = " ".join(_CLAUSE.split(text, maxsplit=1)[0].split()[:4])
    path = _PATH.search(text)
    if path and zlib.crc32(item.item_id.encode()) % 2:
        return path.group(0).split(">")[-1].strip() or title or None
    return title or None


def request_parts(item: Item, per_field: int | None = 3) -> list[str]:
    """An item's descriptive attributes in field order (genres, category, tags, brand): the
    first ``per_field`` values of each list (all of them with None), and each single value."""
    parts: list[str] = []
    for name in _REQUEST_FIELDS:
        value = item.attributes.get(name)
        if isinstance(value, list):
            parts.extend(str(v) for v in value[:per_field])
        elif value:
            parts.append(str(value))
    return parts


def request_from_item(item: Item) -> str | None:
    """A short free-text request for an item: its descriptive attributes (genres, category,
    tags, brand; :func:`request_parts`) when it has any, else made from its text
    (:func:`request_from_text`)."""
    parts = request_parts(item)
    return ", ".join(parts) if parts else request_from_text(item)


def build_probe(
    split: Split, catalog: Catalog, *, max_history: int, size: int = PROBE_SIZE, seed: int = 0
) -> dict[str, Any]:
    """Up to ``size`` validation examples (a seeded sample) and a request text for each target."""
    examples = list(split.validation)
    if len(examples) > size:
        examples = random.Random(seed).sample(examples, size)
    requests = [request_from_item(catalog.get(e.target)) for e in examples]
    return {
        "split": "validation",
        "user_ids": [e.user_id for e in examples],
        "histories": [list(e.history[-max_history:]) for e in examples],
        "targets": [e.target for e in examples],
        "requests": [r for r in requests if r],
    }


def probe_counts(probe: Mapping[str, Any]) -> dict[str, int]:
    return {"histories": len(probe.get("histories", [])), "requests": len(probe.get("requests", []))}
