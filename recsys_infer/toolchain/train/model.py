"""The PyTorch two-tower model.

Two kinds of user tower share one item tower design:

- ``text``: user and item towers are each a pretrained encoder with pooling and L2
  normalisation; the user tower reads the request and history written as text.
- ``sequence``: the item tower is the (frozen) pretrained encoder plus a small trainable head;
  the user tower is a causal transformer over the history's item vectors, and a free-text request
  goes through the item tower.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys_infer.enums import Pooling, UserTowerKind
from recsys_infer.errors import ConfigError, TrainingError
from recsys_infer.runtime.userinput import UserInputFormat


@dataclass(frozen=True)
class SequenceConfig:
    """Shape of the sequence user tower and of the item head it trains with."""

    max_history: int = 50
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.2
    item_head_hidden: int = 1024
    # Add the newest item's own vector (times a learned weight) to the user vector, so the model
    # starts from "more like the last thing" and learns what to change. Off in checkpoints made
    # before it existed.
    last_item_residual: bool = False
    # A learned vector per catalogue item, added to its text vector: what text cannot tell apart
    # (two thrillers with different audiences) the data can. Items never seen in training keep a
    # zero offset, so they are ranked by their text alone, exactly like items added later.
    item_offsets: bool = False
    # ZCA-whiten the encoder's item vectors over the training catalogue before the head (as
    # WhitenRec does): a sentence encoder crowds product texts into a narrow cone, where the
    # differences between items are small next to what they share. Off in checkpoints made
    # before it existed.
    whiten: bool = False

    def __post_init__(self) -> None:
        if self.max_history < 1 or self.layers < 1 or self.item_head_hidden < 1:
            raise ConfigError("max_history, layers and item_head_hidden must be positive")
        if self.hidden < 1 or self.heads < 1 or self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be a positive multiple of heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the model's inputs and outputs, saved with the checkpoint."""

    encoder: str
    encoder_license: str | None = None
    encoder_revision: str | None = None
    user_tower: UserTowerKind = UserTowerKind.TEXT
    shared_towers: bool = False
    pooling: Pooling = Pooling.MEAN
    user_max_length: int = 128
    item_max_length: int = 64
    temperature: float = 0.05
    pad_token: str = "[PAD]"
    user_input: UserInputFormat = field(default_factory=UserInputFormat)
    sequence: SequenceConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", Pooling(self.pooling))
        object.__setattr__(self, "user_tower", UserTowerKind(self.user_tower))
        if isinstance(self.user_input, dict):
            object.__setattr__(self, "user_input", UserInputFormat.from_dict(self.user_input))
        if isinstance(self.sequence, dict):
            object.__setattr__(self, "sequence", SequenceConfig(**self.sequence))
        if self.user_tower is UserTowerKind.SEQUENCE and (self.sequence is None or self.shared_towers):
            raise ConfigError("a sequence user tower needs a SequenceConfig and cannot share the item tower")
        for name in ("user_max_length", "item_max_length"):
            if getattr(self, name) < 8:
                raise ConfigError(f"{name} must be at least 8 tokens, got {getattr(self, name)}")
        if not 0.001 <= self.temperature <= 10:
            raise ConfigError(f"temperature must be in [0.001, 10], got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pooling"] = str(self.pooling)
        data["user_tower"] = str(self.user_tower)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Token vectors ``(n, seq, h)`` to unit text vectors ``(n, h)``; padding never counts."""
    if pooling is Pooling.CLS:
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2.0, dim=-1, eps=1e-12)


#: Whitening divides by the square root of each eigenvalue of the catalogue's covariance plus
#: this share of their mean: directions the training catalogue barely uses (all of them past its
#: size, on a small one) are stretched at most about 1/sqrt(0.1) = 3 times the average, so an
#: item added later that differs there is not thrown far away.
WHITENING_SHRINKAGE = 0.1
#: The longest a learned item offset may be, beside a unit text vector: an item stays within
#: about 17 degrees of its text. Unbounded, Adam grew the offsets past the text vectors' own
#: length within the first epochs on amazon-scientific-dev, and validation fell by a third
#: (the items had become free IDs, memorising the training sequences).
OFFSET_MAX_NORM = 0.3


class ItemHead(nn.Module):
    """A residual MLP on the encoder's unit vector, re-normalised; with ``whiten``, the vector
    is first ZCA-whitened over the training catalogue (:meth:`fit_whitening`) and re-normalised.

    Its last layer starts at zero, so an untrained head is the identity (of the whitened space,
    when whitened): training starts from the pretrained encoder's space and moves items only as
    far as the data asks.
    """

    mean: torch.Tensor | None
    whitening: torch.Tensor | None

    def __init__(self, dim: int, hidden: int, *, whiten: bool = False) -> None:
        super().__init__()
        last = nn.Linear(hidden, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), last)
        # Buffers, so they are saved with the head and are constants of its ONNX graph.
        self.register_buffer("mean", torch.zeros(dim) if whiten else None)
        self.register_buffer("whitening", torch.eye(dim) if whiten else None)

    def fit_whitening(self, embeddings: torch.Tensor) -> None:
        """Set the ZCA transform from the catalogue's encoder vectors ``(n, dim)``."""
        if self.mean is None or self.whitening is None:
            raise ConfigError("this item head was built without whitening")
        data = embeddings.double()
        mean = data.mean(dim=0)
        centred = data - mean
        eigenvalues, basis = torch.linalg.eigh(centred.T @ centred / len(data))
        eigenvalues = eigenvalues.clamp(min=0)
        scale = (eigenvalues + WHITENING_SHRINKAGE * eigenvalues.mean()).rsqrt()
        self.mean.copy_(mean.float())
        self.whitening.copy_(((basis * scale) @ basis.T).float())

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.mean is not None and self.whitening is not None:
            vectors = F.normalize((vectors - self.mean) @ self.whitening, p=2.0, dim=-1, eps=1e-12)
        return F.normalize(vectors + self.mlp(vectors), p=2.0, dim=-1, eps=1e-12)


class JoinedHead(nn.Module):
    """Two spaces in one vector: ``[head(v) ; v] / sqrt(2)``, a unit vector whose first block
    is the trained item space and whose second is the pretrained encoder's own space.

    A two-space export wraps the item (and request) tower's head in it, so one index answers
    history queries in the trained space, requests in the pretrained one, and mixes of both
    (see :class:`recsys_infer.runtime.manifest.FusionSpec`).
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(vectors), vectors], dim=-1) * (1.0 / math.sqrt(2.0))


class TextTower(nn.Module):
    """A Hugging Face encoder, pooling, normalisation and an optional head: one ONNX graph."""

    encoder: Any  # a transformers PreTrainedModel (save_pretrained, config, ...)

    def __init__(
        self, encoder: nn.Module, pooling: Pooling = Pooling.MEAN, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = Pooling(pooling)
        self.head = head

    def joined(self) -> TextTower:
        """This tower with its head wrapped in :class:`JoinedHead` (same weights, shared)."""
        if self.head is None:
            raise ConfigError("only a tower with a trained head has two spaces")
        return TextTower(self.encoder, self.pooling, JoinedHead(self.head))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled unit vectors, before the head."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = self.embed(input_ids, attention_mask)
        return vectors if self.head is None else self.head(vectors)


class _Block(nn.Module):
    """Pre-norm transformer block with an explicit additive attention bias (exports cleanly)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
        y = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, n, h)
        x = x + self.dropout(self.proj(y))
        return x + self.dropout(self.ff(self.norm2(x)))


class SequenceTower(nn.Module):
    """A causal transformer over a history's item vectors (SASRec-style), newest item last.

    Inputs are left-padded: ``history`` ``(n, length, dim)`` and ``history_mask`` ``(n, length)``
    with 1 for real items. Positions count back from the newest item, so the most recent item
    always has the same position embedding. The output at the last position is the user.
    """

    def __init__(self, dim: int, config: SequenceConfig) -> None:
        super().__init__()
        self.max_history = config.max_history
        self.input = nn.Linear(dim, config.hidden)
        self.position = nn.Embedding(config.max_history, config.hidden)
        self.blocks = nn.ModuleList(
            _Block(config.hidden, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.hidden)
        self.output = nn.Linear(config.hidden, dim)
        self.dropout = nn.Dropout(config.dropout)
        self.last_item_weight = nn.Parameter(torch.tensor(1.0)) if config.last_item_residual else None

    def encode_positions(self, history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """Unit user vectors at every position, ``(n, length, dim)``; training reads them all."""
        n = history.shape[1]
        positions = torch.arange(n, device=history.device) + (self.max_history - n)
        x = self.dropout(self.input(history) + self.position(positions))
        index = torch.arange(n, device=history.device)
        causal = index.unsqueeze(1) >= index.unsqueeze(0)  # comparisons export to plain ONNX ops
        itself = index.unsqueeze(1) == index.unsqueeze(0)
        # Each position sees itself and the real items before it; a padded position sees
        # only itself, so no softmax row is ever empty.
        allowed = (causal.unsqueeze(0) & history_mask.bool().unsqueeze(1)) | itself.unsqueeze(0)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        bias = bias.unsqueeze(1)
        for block in self.blocks:
            x = block(x, bias)
        out = self.output(self.norm(x))
        if self.last_item_weight is not None:
            out = out + self.last_item_weight * history  # position t adds item t itself
        return F.normalize(out, p=2.0, dim=-1, eps=1e-12)

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        return self.encode_positions(history, history_mask)[:, -1]


class TwoTower(nn.Module):
    """User and item towers.

    ``text`` kind: ``TwoTower(user_encoder, item_encoder, config)``; with ``shared_towers`` pass
    ``item_encoder=None`` and the towers are one module. ``sequence`` kind:
    ``TwoTower(None, item_encoder, config)``; the item encoder is frozen and gets a head.

    A sequence model reads free-text requests with its item tower, unless it has a ``request``
    tower of its own: a copy of the item tower compressed for requests alone (``prune --tower
    user``), so that compressing the request path leaves the item vectors where they were.
    """

    def __init__(
        self, user_encoder: Any, item_encoder: Any, config: ModelConfig, *, n_items: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.user: Any  # TextTower or SequenceTower
        self.item: TextTower
        self.request: TextTower | None = None
        self.item_offsets: nn.Parameter | None = None
        self.offset_mask: torch.Tensor
        if config.user_tower is UserTowerKind.SEQUENCE:
            if item_encoder is None or user_encoder is not None or config.sequence is None:
                raise ConfigError("a sequence model takes only an item encoder")
            dim = int(item_encoder.config.hidden_size)
            head = ItemHead(dim, config.sequence.item_head_hidden, whiten=config.sequence.whiten)
            self.item = TextTower(item_encoder, config.pooling, head)
            item_encoder.requires_grad_(False)
            self.user = SequenceTower(dim, config.sequence)
            if config.sequence.item_offsets:
                if n_items < 1:
                    raise ConfigError("item offsets need the catalogue size (n_items)")
                self.item_offsets = nn.Parameter(torch.zeros(n_items, dim))
                # 1 for items the training data has seen; the others keep a zero offset.
                self.register_buffer("offset_mask", torch.zeros(n_items, 1))
            return
        if user_encoder is None:
            raise ConfigError("a text model needs a user encoder")
        self.user = TextTower(user_encoder, config.pooling)
        if config.shared_towers:
            if item_encoder is not None:
                raise ConfigError("shared towers take one encoder; item_encoder must be None")
            self.item = self.user
        else:
            if item_encoder is None:
                raise ConfigError("separate towers need an item encoder")
            self.item = TextTower(item_encoder, config.pooling)

    @property
    def request_tower(self) -> TextTower:
        """The tower a sequence model reads free-text requests with."""
        return self.request if self.request is not None else self.item

    def catalog_vectors(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence kind: catalogue items' vectors from their frozen text embeddings, through
        the head and, when the model has them, plus their learned offsets. ``rows``: only those
        catalogue rows (a sampled-softmax step needs a few thousand, not every item)."""
        head = self.item.head
        if head is None:
            raise ConfigError("only a sequence model's item tower has a head")
        vectors = head(embeddings if rows is None else embeddings[rows])
        if self.item_offsets is None:
            return vectors
        if rows is None:
            offsets = self.item_offsets * self.offset_mask
        else:
            offsets = self.item_offsets[rows] * self.offset_mask[rows]
        return F.normalize(vectors + bounded(offsets), p=2.0, dim=-1, eps=1e-12)

    def offset_matrix(self) -> torch.Tensor | None:
        """The offsets as applied (bounded; zero for items unseen in training), or ``None``."""
        if self.item_offsets is None:
            return None
        return bounded(self.item_offsets * self.offset_mask).detach()


def bounded(offsets: torch.Tensor) -> torch.Tensor:
    """Each offset shortened to at most :data:`OFFSET_MAX_NORM` (its direction kept)."""
    norms = offsets.norm(p=2.0, dim=-1, keepdim=True)
    return offsets * (OFFSET_MAX_NORM / norms.clamp(min=OFFSET_MAX_NORM))


def in_batch_softmax_loss(
    users: torch.Tensor, items: torch.Tensor, targets: list[str], temperature: float
) -> torch.Tensor:
    """Sampled softmax with the other targets of the batch as negatives.

    When one item is the target of several rows, it is not a negative for those rows: the
    duplicates are masked out of each other's logits.
    """
    logits = users @ items.T / temperature
    n = len(targets)
    same = torch.tensor([[targets[i] == targets[j] and i != j for j in range(n)] for i in range(n)])
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n))


def guarded_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[Any], where: str) -> None:
    """One optimiser step, refused when the loss is not finite: nothing diverged is ever saved."""
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss.item()} {where}: training diverged and nothing was saved. "
            "Lower --lr, or raise --temperature."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
