"""Training the two towers with in-batch sampled softmax over (history → next item) examples."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from recsys_infer.data.dataset import Dataset
from recsys_infer.data.probe import build_probe
from recsys_infer.data.split import Example, leave_one_out
from recsys_infer.errors import CheckpointError, DataError, OutputExistsError, TrainingError
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.runtime.userinput import UserInputFormat

from .checkpoint import save_checkpoint
from .encoders import resolve_encoder
from .model import ModelConfig, TwoTower, in_batch_softmax_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. ``max_steps=0`` saves the pretrained encoder untrained."""

    epochs: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    temperature: float = 0.05
    seed: int = 0
    user_max_length: int = 128
    item_max_length: int = 64
    max_history: int = 20
    shared_towers: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be 0 or more, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (in-batch negatives), got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads}")

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with every non-``None`` override applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    steps: int
    examples_seen: int
    seconds: float
    first_loss: float | None
    final_loss: float | None
    stopped_by: str
    losses: list[float] = field(repr=False, default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        del data["losses"]
        return data


def _load_encoder(location: str) -> tuple[Any, str, str]:
    """(a fresh encoder model, tokenizer.json text, padding token) for ``location``."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
        model = AutoModel.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"could not load the encoder {location!r} ({e}). Pass a local folder holding config.json, "
            "the weights and a tokenizer, or leave --encoder out for the default all-MiniLM-L6-v2."
        ) from e
    if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token is None:
        raise CheckpointError(
            f"the encoder {location!r} needs a fast tokenizer with a padding token (BERT-style)"
        )
    return model, tokenizer.backend_tokenizer.to_str(), str(tokenizer.pad_token)


def _lr_lambda(total: int, warmup: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def train(
    dataset: Dataset,
    out: Path,
    *,
    encoder: str | None = None,
    config: TrainConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune two towers on ``dataset``'s training split and save a checkpoint at ``out``."""
    config = config or TrainConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    split = leave_one_out(dataset)
    examples = list(split.train_examples(max_history=config.max_history))
    if not examples and config.max_steps != 0:
        raise DataError(
            f"{dataset.name} has no training examples: a user needs at least two training "
            "interactions (after the last two are held out for validation and test)"
        )
    catalog = dataset.catalog
    source = resolve_encoder(encoder)
    logger.info("encoder %s from %s", source.name, source.location)
    user_encoder, tokenizer_json, pad_token = _load_encoder(source.location)
    item_encoder = None if config.shared_towers else _load_encoder(source.location)[0]
    model_config = ModelConfig(
        encoder=source.name,
        encoder_license=source.license,
        shared_towers=config.shared_towers,
        user_max_length=config.user_max_length,
        item_max_length=config.item_max_length,
        temperature=config.temperature,
        pad_token=pad_token,
        user_input=UserInputFormat(max_history=config.max_history),
    )
    model = TwoTower(user_encoder, item_encoder, model_config)
    from tokenizers import Tokenizer

    user_tok = TextTokenizer(
        Tokenizer.from_str(tokenizer_json), max_length=config.user_max_length, pad_token=pad_token
    )
    item_tok = TextTokenizer(
        Tokenizer.from_str(tokenizer_json), max_length=config.item_max_length, pad_token=pad_token
    )

    steps_per_epoch = math.ceil(len(examples) / config.batch_size) if examples else 0
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, max(1, int(total * config.warmup_ratio)))
    )
    fmt = model_config.user_input

    def batch_tensors(batch: list[Example]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        user_texts = [fmt.render([catalog.get(h).text for h in ex.history]) for ex in batch]
        item_texts = [catalog.get(ex.target).text for ex in batch]
        u = {k: torch.from_numpy(v) for k, v in user_tok(user_texts).items() if k != "token_type_ids"}
        i = {k: torch.from_numpy(v) for k, v in item_tok(item_texts).items() if k != "token_type_ids"}
        return u, i

    losses: list[float] = []
    started = time.monotonic()
    out_of_time = False
    step = 0
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="training", unit="step")
    model.train()
    order_rng = random.Random(config.seed)
    try:
        for _epoch in range(config.epochs):
            order = list(range(len(examples)))
            order_rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                if step >= total:
                    break
                if config.max_minutes is not None and time.monotonic() - started > config.max_minutes * 60:
                    out_of_time = True
                    break
                batch = [examples[j] for j in order[start : start + config.batch_size]]
                if len(batch) < 2:
                    continue
                user_features, item_features = batch_tensors(batch)
                loss = in_batch_softmax_loss(
                    model.user(**user_features),
                    model.item(**item_features),
                    [ex.target for ex in batch],
                    config.temperature,
                )
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {step + 1}: training diverged and "
                        "nothing was saved. Lower --lr, or raise --temperature."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.item()))
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            if step >= total or out_of_time:
                break
    finally:
        if bar is not None:
            bar.close()
    seconds = time.monotonic() - started
    model.eval()
    if out_of_time:
        stopped_by = "max_minutes"
    elif config.max_steps is not None and step >= config.max_steps:
        stopped_by = "max_steps"
    else:
        stopped_by = "epochs"

    result = TrainResult(
        checkpoint=out,
        steps=step,
        examples_seen=step * config.batch_size,
        seconds=round(seconds, 2),
        first_loss=losses[0] if losses else None,
        final_loss=sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        stopped_by=stopped_by,
        losses=losses,
    )
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {**result.to_json(), "config": asdict(config), "losses": losses},
        "data": {
            "name": dataset.name,
            "source": dataset.source,
            "fingerprint": dataset.fingerprint,
            "files": dict(dataset.files),
            "items": len(catalog),
            "users": len(dataset.sequences),
            "interactions": dataset.num_interactions,
            "train_examples": len(examples),
            "validation_users": len(split.validation),
            "test_users": len(split.test),
        },
        "versions": _versions(),
    }
    probe = build_probe(split, catalog, max_history=config.max_history, seed=config.seed)
    save_checkpoint(
        out,
        model,
        tokenizer_json=tokenizer_json,
        catalog=catalog,
        probe=probe,
        meta=meta,
        overwrite=overwrite,
    )
    return result


def _versions() -> dict[str, str]:
    import transformers

    from recsys_infer import __version__

    return {"recsys_infer": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
