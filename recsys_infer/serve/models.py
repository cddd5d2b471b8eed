"""The HTTP bodies, made per app because their limits come from :class:`ServeSettings`.

Strict types: ``"k": true`` or ``"k": "5"`` is refused as the engine refuses ``k=True``. Each
recommendation body turns into the engine's :class:`RecommendOptions`, which validates the
options once for the engine, the micro-batcher and HTTP alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from recsys_infer.runtime.options import DEFAULT_OPTIONS, RecommendOptions

from .settings import ServeSettings

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Bodies:
    recommend: type[BaseModel]
    batch: type[BaseModel]
    items: type[BaseModel]
    swap: type[BaseModel]


def make_bodies(s: ServeSettings) -> Bodies:
    strict = ConfigDict(extra="forbid", strict=True)
    Id = Annotated[str, Field(min_length=1, max_length=200)]

    class RecommendBody(BaseModel):
        model_config = strict

        history: list[Id] = Field(
            default_factory=list, max_length=s.max_history, description="Item ids, oldest first."
        )
        text: str | None = Field(
            default=None, max_length=s.max_text_chars, description="A free-text request."
        )
        k: int = Field(default=DEFAULT_OPTIONS.k, ge=1, le=s.max_k)
        exclude_seen: bool = DEFAULT_OPTIONS.exclude_seen
        exclude: list[Id] = Field(default_factory=list, max_length=s.max_ids_per_filter)
        allow: list[Id] | None = Field(default=None, max_length=s.max_ids_per_filter)
        where: dict[str, Scalar | list[Scalar]] | None = Field(
            default=None,
            max_length=32,
            description="Keep items whose attribute equals the value (or, for a list, any of them); "
            "a list-valued attribute matches when it contains the value.",
        )
        explain: bool = DEFAULT_OPTIONS.explain

        def options(self) -> RecommendOptions:
            return RecommendOptions(
                k=self.k,
                exclude_seen=self.exclude_seen,
                exclude=frozenset(self.exclude),
                allow=None if self.allow is None else frozenset(self.allow),
                where=self.where,  # type: ignore[arg-type]  # a mapping: RecommendOptions makes it a Where
                explain=self.explain,
            )

    class BatchBody(BaseModel):
        model_config = strict

        requests: list[RecommendBody] = Field(min_length=1, max_length=s.max_batch_requests)

    class ItemBody(BaseModel):
        model_config = strict

        item_id: Id
        text: str = Field(min_length=1, max_length=s.max_text_chars)
        attributes: dict[str, Any] = Field(default_factory=dict)

    class ItemsBody(BaseModel):
        model_config = strict

        items: list[ItemBody] = Field(min_length=1, max_length=s.max_items_per_edit)
        replace: bool = Field(default=False, description="Replace items that exist instead of refusing them.")

    class SwapBody(BaseModel):
        model_config = strict

        bundle: str = Field(min_length=1, max_length=4096)

    return Bodies(RecommendBody, BatchBody, ItemsBody, SwapBody)
