"""How a user becomes text for the user tower: a request and the most recent history items.

Training and serving both call :meth:`UserInputFormat.render`, so the model is served exactly
the kind of text it was trained on. The format travels in the bundle's manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from recsys_infer.errors import ConfigError


@dataclass(frozen=True)
class UserInputFormat:
    """Renders ``(history texts, request)`` into one string.

    History is given oldest first (the order it happened in) and written most recent first, so
    that truncation to the tower's token budget drops the oldest items. A free-text request, when
    present, comes first.
    """

    max_history: int = 20
    item_separator: str = " ; "
    request_separator: str = " || "

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ConfigError(f"max_history must be at least 1, got {self.max_history}")
        if not self.item_separator.strip() or not self.request_separator.strip():
            raise ConfigError("separators must contain a visible character")

    def render(self, history_texts: Sequence[str], request: str | None = None) -> str:
        recent = list(history_texts[-self.max_history :])
        recent.reverse()
        body = self.item_separator.join(t.strip() for t in recent)
        request = (request or "").strip()
        if request and body:
            return f"{request}{self.request_separator}{body}"
        return request or body

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserInputFormat:
        return cls(
            **{k: data[k] for k in ("max_history", "item_separator", "request_separator") if k in data}
        )
