"""An item's text composed from its columns, the one way every reader and the sample spell it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Columns joined into an item's text when it has no ``text`` column, in this order.
TEXT_FIELDS = ("title", "category", "brand", "genres", "tags", "description")


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in str(value).split("|") if p.strip()]


def compose_text(fields: Mapping[str, Any]) -> str:
    """An item's text from its columns: ``Title. Category: …. Brand: …. Genres: a, b. …``."""
    parts = []
    for name in TEXT_FIELDS:
        value = fields.get(name)
        if value is None or value == "" or value == []:
            continue
        if name == "title" or name == "description":
            parts.append(str(value).strip())
        elif name in ("genres", "tags"):
            values = _as_list(value)
            if values:
                parts.append(f"{name.capitalize()}: {', '.join(values)}")
        else:
            parts.append(f"{name.capitalize()}: {str(value).strip()}")
    return ". ".join(p.rstrip(".") for p in parts if p) + ("." if parts else "")
