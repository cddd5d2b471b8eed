"""The HTTP bodies, made per app because their limits come from :class:`ServeSettings`.

Strict types: ``"k": true`` or ``"k": "5"`` is refused as the engine refuses ``k=True``. Each
recommendation body turns into the engine's :class:`RecommendOptions`, which validates the
options once for the engine, the micro-batcher and HTTP alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from recsys_infer.runtime.options import DEFAULT_OPTIONS, RecommendOptions

from .settings import ServeSettings

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Bodies:
    recommend: type[BaseModel]
    batch: type[BaseModel]
    #: ``POST /recommend``'s body: one request, or (deprecated there) a batch, told apart by a
    #: ``requests`` key, so that a bad body is reported against the one shape it was meant as.
    either: Any
    items: type[BaseModel]
    swap: type[BaseModel]
    embed: type[BaseModel]
    embeddings: type[BaseModel]


_STRICT = ConfigDict(extra="forbid", strict=True)
Id = Annotated[str, Field(min_length=1, max_length=200)]
#: What the engine asks of a query, said in the schema too (the engine checks it): a history of
#: at least one item, or a request that is not blank, or both.
_HISTORY_OR_TEXT = ConfigDict(
    extra="forbid",
    strict=True,
    json_schema_extra={
        "anyOf": [
            {"required": ["history"], "properties": {"history": {"minItems": 1}}},
            {
                "required": ["text"],
                "properties": {"text": {"type": "string", "pattern": r"[^\s\x1c-\x1f\x85]"}},
            },
        ]
    },
)


def make_bodies(s: ServeSettings) -> Bodies:
    """The request bodies, their limits taken from ``s``."""
    recommend, batch = _recommend_bodies(s)
    items, swap = _edit_bodies(s)
    either = Annotated[
        Annotated[recommend, Tag("one")] | Annotated[batch, Tag("batch")],  # type: ignore[valid-type]
        Discriminator(_shape),
    ]
    return Bodies(recommend, batch, either, items, swap, _embed_body(s), _openai_body(s))


def _shape(body: Any) -> str:
    is_batch = (isinstance(body, dict) and "requests" in body) or hasattr(body, "requests")
    return "batch" if is_batch else "one"


def _openai_body(s: ServeSettings) -> type[BaseModel]:
    Text = Annotated[str, Field(min_length=1, max_length=s.max_text_chars)]

    class EmbeddingsBody(BaseModel):
        """OpenAI's embeddings request. ``model`` picks the tower: ``item`` (or a name ending in
        ``/item``) for the item tower, anything else for the request tower."""

        model_config = ConfigDict(extra="forbid", strict=True)

        input: Text | Annotated[list[Text], Field(min_length=1, max_length=s.max_batch_requests)] = Field(
            description="A text, or a list of texts."
        )
        model: str = Field(min_length=1, max_length=200)
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: int | None = Field(default=None, description="Must equal the bundle's dimension.")
        user: str | None = Field(default=None, max_length=200)

    return EmbeddingsBody


def _recommend_bodies(s: ServeSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    strict = _STRICT

    class RecommendBody(BaseModel):
        model_config = _HISTORY_OR_TEXT

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

    return RecommendBody, BatchBody


def _edit_bodies(s: ServeSettings) -> tuple[type[BaseModel], type[BaseModel]]:
    strict = _STRICT

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

    return ItemsBody, SwapBody


def _embed_body(s: ServeSettings) -> type[BaseModel]:
    strict = _STRICT

    class UserBody(BaseModel):
        model_config = _HISTORY_OR_TEXT

        history: list[Id] = Field(default_factory=list, max_length=s.max_history)
        text: str | None = Field(default=None, max_length=s.max_text_chars)

    Text = Annotated[str, Field(min_length=1, max_length=s.max_text_chars)]
    Texts = Annotated[list[Text], Field(min_length=1, max_length=s.max_batch_requests)]

    class EmbedBody(BaseModel):
        """Exactly one of ``items`` (item texts, through the item tower), ``users`` (histories
        and/or requests, through the user side) or ``inputs`` (texts, as Text Embeddings
        Inference takes them: through the request tower, or the item tower with ``tower``)."""

        # Exactly one of the three, said in the schema (the validator below checks it). The other
        # two are left out: typed without None, so that an explicit null is refused as the schema
        # says, while their default (absent) is None.
        model_config = ConfigDict(
            **strict,
            json_schema_extra={"oneOf": [{"required": [name]} for name in ("items", "users", "inputs")]},
        )

        items: Texts = Field(default=None)  # type: ignore[arg-type]
        users: Annotated[list[UserBody], Field(min_length=1, max_length=s.max_batch_requests)] = Field(
            default=None  # type: ignore[arg-type]
        )
        inputs: Text | Texts = Field(  # type: ignore[assignment]
            default=None, description="TEI-style texts; the answer is then a bare list of vectors."
        )
        tower: Literal["request", "item"] = Field(
            default="request", description="With inputs: the request tower (a query) or the item tower."
        )
        normalize: Literal[True] = Field(
            default=True, description="With inputs: vectors are unit length (the only value taken)."
        )
        truncate: bool = Field(
            default=True, description="With inputs: texts are cut at the tower's token budget."
        )

        @model_validator(mode="after")
        def one_kind(self) -> EmbedBody:
            given = [name for name in ("items", "users", "inputs") if getattr(self, name) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of 'items' (item texts), 'users' or 'inputs' (texts)")
            if not self.normalize:
                raise ValueError(
                    "normalize must be true: the towers' vectors are unit length by construction"
                )
            return self

    return EmbedBody


# -- responses: typed for the OpenAPI schema; the hot routes build the same JSON directly ------------


class ReasonOut(BaseModel):
    kind: str = Field(description="'history' (a history item close to this one) or 'request' (a word).")
    source: str = Field(description="The history item's id, or the request's word.")
    similarity: float


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="Cosine between the user vector and the item's.")
    text: str
    attributes: dict[str, Any]
    because: list[ReasonOut] | None = Field(default=None, description="With explain=true only.")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem] = Field(description="Best first.")


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse] = Field(description="One per request, in order.")


class EmbedResponse(BaseModel):
    kind: str = Field(description="'items' or 'users': which tower made the vectors.")
    dim: int
    vectors: list[list[float]] = Field(description="Unit vectors, one per input, in order.")


class ErrorDetail(BaseModel):
    type: str = Field(description="bad_request, unauthorized, forbidden, not_found, method_not_allowed, "
                      "too_large, unsupported_media_type, invalid_request, over_limit, overloaded, "
                      "unavailable or internal.")  # fmt: skip
    message: str = Field(description="What failed and how to fix it; quotes at most a short excerpt.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="With invalid_request: each field that failed validation."
    )


class ErrorBody(BaseModel):
    """The one body of every error response."""

    error: ErrorDetail


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """OpenAI's embeddings response."""

    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingsUsage


class TowerInfo(BaseModel):
    file: str
    kind: str
    precision: str
    dim: int


class HealthResponse(BaseModel):
    status: str
    bundle: str = Field(description="The served bundle's folder name (GET /info has its path).")
    items: int
    device: str = Field(description="Where the graphs run: cpu, cuda:N or tensorrt:N.")
    device_fallback: str | None = Field(
        description="Why device 'auto' runs on the CPU; null if it did not fall back."
    )
    unsaved_edits: bool


class SpaceInfo(BaseModel):
    name: str = Field(description="'trained' (the model's own space) or 'text' (the encoder's).")
    start: int = Field(description="The first component of a served vector in this space.")
    stop: int = Field(description="One past the last.")


class BackendInfo(BaseModel):
    backend: str = Field(description="onnxruntime or openvino.")
    precision: str = Field(description="What the graph computes in on that runtime.")
    why: str
    ms: dict[str, float] | None = Field(
        default=None, description="With backend 'auto': each runtime's time for the tower's probe work."
    )
    agreement: float | None = Field(
        default=None,
        description="With backend 'auto': OpenVINO's overlap@10 with ONNX Runtime (the item tower's: "
        "least cosine).",
    )


class InfoResponse(BaseModel):
    version: str = Field(description="The recsys-infer package version.")
    bundle: str
    schema_version: int | None
    items: int
    device: str
    device_fallback: str | None
    providers: list[str] = Field(description="The ONNX Runtime providers the item tower's session kept.")
    backends: dict[str, BackendInfo] = Field(
        description="Which runtime runs each tower (onnxruntime or openvino), and why: with backend "
        "'auto', each runtime's measured time on the bundle's probe and OpenVINO's agreement with ONNX "
        "Runtime."
    )
    towers: dict[str, TowerInfo]
    spaces: list[SpaceInfo] = Field(
        description="Which components of a served vector (recommend, /embed, /v1/embeddings) are which "
        "space: a two-space bundle joins the trained space and the encoder's text space."
    )
    index: dict[str, Any] | None
    seen_penalty: dict[str, float] = Field(
        description="What a history item's score loses when exclude_seen is false, for a history alone "
        "and for a history with a request (chosen on validation at export; 0: ranked as scored)."
    )
    limits: dict[str, Any]
    request_cache: dict[str, int] | None = Field(
        description="hits, misses, entries, max_entries and bytes of the request cache; null when off."
    )
    replica: str | None
    editing: bool
    unsaved_edits: bool


class ItemsChanged(BaseModel):
    items: int = Field(description="Items in the catalogue now.")
    changed: int


class ItemRemoved(BaseModel):
    items: int
    removed: str


class Saved(BaseModel):
    saved: str
    items: int


class Swapped(BaseModel):
    bundle: str
    items: int
