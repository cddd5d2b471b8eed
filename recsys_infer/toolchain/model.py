"""The PyTorch two-tower model: a pretrained encoder per tower, pooling and L2 normalisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsys_infer.enums import Pooling
from recsys_infer.runtime.userinput import UserInputFormat


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the model's inputs and outputs, saved with the checkpoint."""

    encoder: str
    encoder_license: str | None = None
    shared_towers: bool = False
    pooling: Pooling = Pooling.MEAN
    user_max_length: int = 128
    item_max_length: int = 64
    temperature: float = 0.05
    pad_token: str = "[PAD]"
    user_input: UserInputFormat = field(default_factory=UserInputFormat)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", Pooling(self.pooling))
        if isinstance(self.user_input, dict):
            object.__setattr__(self, "user_input", UserInputFormat.from_dict(self.user_input))
        for name in ("user_max_length", "item_max_length"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be at least 8 tokens, got {getattr(self, name)}")
        if not 0.001 <= self.temperature <= 10:
            raise ValueError(f"temperature must be in [0.001, 10], got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pooling"] = str(self.pooling)
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


class TextTower(nn.Module):
    """A Hugging Face encoder followed by pooling and normalisation; what each ONNX graph holds."""

    encoder: Any  # a transformers PreTrainedModel (save_pretrained, config, ...)

    def __init__(self, encoder: nn.Module, pooling: Pooling = Pooling.MEAN) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = Pooling(pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


class TwoTower(nn.Module):
    """User tower and item tower; with ``shared_towers`` they are one module."""

    def __init__(self, user_encoder: nn.Module, item_encoder: nn.Module | None, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.user = TextTower(user_encoder, config.pooling)
        if config.shared_towers:
            if item_encoder is not None:
                raise ValueError("shared towers take one encoder; item_encoder must be None")
            self.item = self.user
        else:
            if item_encoder is None:
                raise ValueError("separate towers need an item encoder")
            self.item = TextTower(item_encoder, config.pooling)


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
