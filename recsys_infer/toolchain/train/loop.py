"""Training: the front door for both kinds of user tower.

- ``text``: both towers fine-tuned with in-batch sampled softmax over (history text → next item
  text) examples.
- ``sequence``: the item encoder frozen, a head on it and a causal transformer over history
  item vectors trained with a full softmax (see :mod:`.sequence_train`).

Both are seeded, report progress, stop on a NaN loss or the ``max_minutes`` budget, save a
resumable state as they go (``<out>.partial/``) and write the checkpoint atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch

from recsys_infer.data.dataset import Dataset
from recsys_infer.data.probe import build_probe
from recsys_infer.data.split import Example, Split, leave_one_out
from recsys_infer.enums import Lever, Pooling, UserTowerKind
from recsys_infer.errors import CheckpointError, ConfigError, DataError, OutputExistsError
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.runtime.userinput import UserInputFormat
from recsys_infer.toolchain.train.checkpoint import save_checkpoint
from recsys_infer.toolchain.train.encoders import EncoderSource, choose_pooling, resolve_encoder
from recsys_infer.toolchain.train.levers import ORDER as LEVER_ORDER
from recsys_infer.toolchain.train.model import (
    ItemHead,
    ModelConfig,
    SequenceConfig,
    TwoTower,
    guarded_step,
    in_batch_softmax_loss,
)
from recsys_infer.toolchain.train.state import SavedState, load_state, remove_state, save_state

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Defaults that differ between the two kinds of user tower; ``None`` in TrainConfig means these.
KIND_DEFAULTS: dict[UserTowerKind, dict[str, Any]] = {
    UserTowerKind.TEXT: {
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 5e-5,
        "temperature": 0.05,
        "max_history": 20,
        "bf16": False,
    },
    UserTowerKind.SEQUENCE: {
        "epochs": 200,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "temperature": 0.07,
        "max_history": 50,
        "bf16": "native",  # bf16 autocast where the CPU has bf16 instructions, fp32 elsewhere
    },
}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere torch emulates
    it: on an AVX2-only AMD EPYC a sequence training step ran 6x slower under bf16 autocast
    than in fp32 (benchmarks/QUALITY.md), so the default is fp32 there."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _given(value: T | None) -> T:
    """A setting ``TrainConfig`` has filled in from ``KIND_DEFAULTS`` (never ``None`` there)."""
    if value is None:  # pragma: no cover - TrainConfig.__post_init__ fills every kind default
        raise TypeError("a kind default was not filled in")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. ``None`` takes the user tower kind's default (``KIND_DEFAULTS``).

    ``max_steps=0`` saves the pretrained encoder untrained (the zero-shot model).
    ``cold_items`` holds that many items (test targets, seeded choice) out of training entirely.
    """

    user_tower: UserTowerKind = UserTowerKind.SEQUENCE
    # None: the encoder's own (its sentence-transformers Pooling module); see encoders.choose_pooling.
    pooling: Pooling | None = None
    epochs: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    temperature: float | None = None
    seed: int = 0
    user_max_length: int = 128
    item_max_length: int = 64
    max_history: int | None = None
    shared_towers: bool = False
    threads: int | None = None
    bf16: bool | None = None
    cold_items: int = 0
    save_every: int = 200
    # sequence kind
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.2
    item_head_hidden: int = 1024
    last_item_residual: bool = True
    # Levers (see levers.py): auto leaves each to trials on the validation split, each this many
    # epochs long (to the first validation at or after it).
    item_offsets: Lever = Lever.OFF
    whiten: Lever = Lever.OFF
    trial_epochs: int = 15
    # False (the default): items the training part never shows are left out of the softmax, so
    # that the head does not learn to push their kind of text away (see sequence_train and
    # benchmarks/QUALITY.md: it fixed cold items on ml-100k and did not hurt warm ones).
    unseen_negatives: bool = False
    # "auto": a full softmax over catalogues up to sequence_train.FULL_SOFTMAX_MAX_ITEMS items,
    # sampled softmax with the logQ correction above (the epoch-time curve is in QUALITY.md).
    softmax: str = "auto"
    negatives: int = 4096
    eval_every: int = 5
    patience: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_tower", UserTowerKind(self.user_tower))
        for name in LEVER_ORDER:
            object.__setattr__(self, name, _lever(getattr(self, name)))
        if self.pooling is not None:
            object.__setattr__(self, "pooling", Pooling(self.pooling))
        for name, value in KIND_DEFAULTS[self.user_tower].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, native_bf16() if value == "native" else value)
        checks = [
            (self.epochs is not None and self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (
                self.max_steps is None or self.max_steps >= 0,
                f"max_steps must be 0 or more, got {self.max_steps}",
            ),
            (
                self.max_minutes is None or self.max_minutes > 0,
                f"max_minutes must be positive, got {self.max_minutes}",
            ),
            (
                self.batch_size is not None and self.batch_size >= 2,
                f"batch_size must be at least 2 (in-batch negatives), got {self.batch_size}",
            ),
            (
                self.learning_rate is not None and 0 < self.learning_rate < 1,
                f"learning_rate must be in (0, 1), got {self.learning_rate}",
            ),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.threads is None or self.threads >= 1, f"threads must be positive, got {self.threads}"),
            (self.cold_items >= 0, f"cold_items must be 0 or more, got {self.cold_items}"),
            (
                self.softmax in ("auto", "full", "sampled") and self.negatives >= 1,
                f"softmax must be auto, full or sampled and negatives positive; got {self.softmax!r}, "
                f"{self.negatives}",
            ),
            (
                min(self.save_every, self.eval_every, self.patience, self.trial_epochs) >= 1,
                "save_every, eval_every, patience and trial_epochs must be positive",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.user_tower is UserTowerKind.SEQUENCE:
            self.sequence_config()  # validates the shape
            if self.shared_towers:
                raise ConfigError("--shared-towers applies to the text user tower only")

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with every non-``None`` override applied; a new ``user_tower`` resets the
        kind-dependent defaults that were not given explicitly."""
        given = {k: v for k, v in overrides.items() if v is not None}
        kind = given.get("user_tower")
        if kind is not None and UserTowerKind(kind) is not self.user_tower:
            defaults = KIND_DEFAULTS[self.user_tower]
            untouched = [
                k for k, v in defaults.items() if getattr(self, k) == (native_bf16() if v == "native" else v)
            ]
            given = {**dict.fromkeys(untouched), **given}
        return replace(self, **given)

    def sequence_config(self) -> SequenceConfig:
        """The sequence tower's shape: the settings of that name here (every one is a field of
        this config too), the history length filled in."""
        shape = {f.name: getattr(self, f.name) for f in fields(SequenceConfig)}
        levers = {name: getattr(self, name) is Lever.ON for name in LEVER_ORDER}  # auto starts off
        return SequenceConfig(**{**shape, **levers, "max_history": int(_given(self.max_history))})


def _lever(value: Any) -> Lever:
    """A lever's setting; ``True`` and ``False`` (a recipe's booleans) are on and off."""
    if isinstance(value, bool):
        return Lever.ON if value else Lever.OFF
    try:
        return Lever(value)
    except ValueError:
        raise ConfigError(f"a lever is on, off or auto, got {value!r}") from None


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
    extra: dict[str, Any] = field(default_factory=dict)

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


def hold_out_items(split: Split, count: int, seed: int) -> tuple[Split, list[str]]:
    """Remove ``count`` test-target items (a seeded choice) from every training sequence."""
    if count == 0:
        return split, []
    targets = sorted({e.target for e in split.test})
    if count > len(targets):
        raise DataError(f"cannot hold out {count} items: only {len(targets)} distinct test targets exist")
    cold = sorted(random.Random(seed).sample(targets, count))
    held = set(cold)
    train = {u: tuple(i for i in seq if i not in held) for u, seq in split.train.items()}
    return Split(train=train, validation=split.validation, test=split.test), cold


def _fingerprint(config: TrainConfig, dataset: Dataset, source: EncoderSource) -> str:
    settings = {k: v for k, v in asdict(config).items() if k not in ("max_minutes", "threads", "save_every")}
    doc = json.dumps([settings, dataset.fingerprint, source.name], sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def train(
    dataset: Dataset,
    out: Path,
    *,
    encoder: str | None = None,
    config: TrainConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    revision: str | None = None,
) -> TrainResult:
    """Train on ``dataset``'s training split and save a checkpoint at ``out``. ``encoder``: a
    local folder or Hub id (default all-MiniLM-L6-v2); ``revision``: the Hub revision to pin."""
    config = config or TrainConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    split, cold = hold_out_items(leave_one_out(dataset), config.cold_items, config.seed)
    source = resolve_encoder(encoder, revision=revision)
    fingerprint = _fingerprint(config, dataset, source)
    saved = load_state(out, fingerprint=fingerprint) if resume else None
    logger.info("encoder %s from %s", source.name, source.location)
    max_history = int(_given(config.max_history))
    model, tokenizer_json, pad_token = _build_model(source, config, n_items=len(dataset.catalog))
    # Time already spent by an interrupted run counts, towards the budget too.
    before = float(saved.meta["progress"].get("seconds", 0.0)) if saved else 0.0
    started = time.monotonic()

    def elapsed() -> float:
        return before + time.monotonic() - started

    deadline = started - before + config.max_minutes * 60 if config.max_minutes else None
    run = _Run(model, split, dataset, config, tokenizer_json, pad_token, out, fingerprint, deadline, elapsed,
               progress, saved)  # fmt: skip
    trainer = _train_sequence if config.user_tower is UserTowerKind.SEQUENCE else _train_text
    result_fields, extra = trainer(run)
    model = run.model  # the trials of the levers may have chosen another model
    seconds = elapsed()
    model.eval()
    losses: list[float] = result_fields.pop("losses")
    result = TrainResult(
        checkpoint=out,
        seconds=round(seconds, 2),
        first_loss=losses[0] if losses else None,
        final_loss=sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        losses=losses,
        extra=extra,
        **result_fields,
    )
    meta = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {**result.to_json(), "config": asdict(config), "losses": losses},
        "data": _data_record(dataset, split, cold),
        "versions": _versions(),
    }
    sequence = model.config.sequence
    probe_history = sequence.max_history if sequence else max_history
    probe = build_probe(split, dataset.catalog, max_history=probe_history, seed=config.seed)
    save_checkpoint(
        out, model, tokenizer_json=tokenizer_json, catalog=dataset.catalog, probe=probe, meta=meta,
        overwrite=overwrite,
    )  # fmt: skip
    remove_state(out)
    return result


def _build_model(source: Any, config: TrainConfig, *, n_items: int) -> tuple[TwoTower, str, str]:
    """The untrained two-tower model on ``source``'s encoder, its tokenizer and pad token."""
    first, tokenizer_json, pad_token = _load_encoder(source.location)
    model_config = ModelConfig(
        encoder=source.name,
        encoder_license=source.license,
        encoder_revision=source.revision,
        pooling=choose_pooling(source, config.pooling),
        user_tower=config.user_tower,
        shared_towers=config.shared_towers,
        user_max_length=config.user_max_length,
        item_max_length=config.item_max_length,
        temperature=float(_given(config.temperature)),
        pad_token=pad_token,
        user_input=UserInputFormat(max_history=int(_given(config.max_history))),
        sequence=config.sequence_config() if config.user_tower is UserTowerKind.SEQUENCE else None,
    )
    if config.user_tower is UserTowerKind.SEQUENCE:
        return TwoTower(None, first, model_config, n_items=n_items), tokenizer_json, pad_token
    second = None if config.shared_towers else _load_encoder(source.location)[0]
    return TwoTower(first, second, model_config), tokenizer_json, pad_token


def _data_record(dataset: Dataset, split: Split, cold: Any) -> dict[str, Any]:
    """What the checkpoint records of the data it was trained on."""
    return {
        "name": dataset.name,
        "source": dataset.source,
        "fingerprint": dataset.fingerprint,
        "files": dict(dataset.files),
        "items": len(dataset.catalog),
        "users": len(dataset.sequences),
        "interactions": dataset.num_interactions,
        "train_examples": split.num_train_examples(),
        "validation_users": len(split.validation),
        "test_users": len(split.test),
        "cold_items": cold,
    }


@dataclass
class _Run:
    """What one training run works with, handed to the trainer of its user tower kind."""

    model: TwoTower
    split: Split
    dataset: Dataset
    config: TrainConfig
    tokenizer_json: str
    pad_token: str
    out: Path
    fingerprint: str
    deadline: float | None
    elapsed: Callable[[], float]
    progress: bool
    saved: SavedState | None


def _train_text(run: _Run) -> tuple[dict[str, Any], dict[str, Any]]:
    from tokenizers import Tokenizer

    model, split, dataset, config, out = run.model, run.split, run.dataset, run.config, run.out

    examples = list(split.train_examples(max_history=int(_given(config.max_history))))
    if not examples and config.max_steps != 0:
        raise DataError(
            f"{dataset.name} has no training examples: a user needs at least two training "
            "interactions (after the last two are held out for validation and test)"
        )
    catalog = dataset.catalog
    batch_size, epochs = int(_given(config.batch_size)), int(_given(config.epochs))
    tokenizers = tuple(
        TextTokenizer(Tokenizer.from_str(run.tokenizer_json), max_length=n, pad_token=run.pad_token)
        for n in (config.user_max_length, config.item_max_length)
    )
    steps_per_epoch = math.ceil(len(examples) / batch_size) if examples else 0
    total = steps_per_epoch * epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=float(_given(config.learning_rate)), weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total, max(1, int(total * config.warmup_ratio)))
    )
    losses: list[float] = []
    step = 0
    if run.saved is not None:
        step, losses = _resume_text(run, optimizer, scheduler)
    out_of_time = False
    bar = None
    if run.progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="training", unit="step")
    model.train()
    try:
        while step < total and not out_of_time:
            epoch, skip = divmod(step, steps_per_epoch)
            order = list(range(len(examples)))
            random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
            for start in range(skip * batch_size, len(order), batch_size):
                if step >= total:
                    break
                if run.deadline is not None and time.monotonic() > run.deadline:
                    out_of_time = True
                    break
                batch: list[Example] = [examples[j] for j in order[start : start + batch_size]]
                if len(batch) < 2:
                    step += 1  # a lone example has no in-batch negative; count the step, skip it
                    continue
                loss = _text_loss(model, batch, catalog, config, tokenizers)
                guarded_step(loss, optimizer, trainable, f"at step {step + 1}")
                scheduler.step()
                losses.append(float(loss.item()))
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
                if step % config.save_every == 0 and step < total:
                    save_state(
                        out,
                        fingerprint=run.fingerprint,
                        progress={"step": step, "losses": losses, "seconds": run.elapsed()},
                        modules={"model": model.state_dict()},
                        optimizer=optimizer,
                        scheduler=scheduler,
                    )
    finally:
        if bar is not None:
            bar.close()
    stopped_by = (
        "max_minutes" if out_of_time
        else "max_steps" if config.max_steps is not None and step >= config.max_steps
        else "epochs"
    )  # fmt: skip
    return {"steps": step, "examples_seen": step * batch_size, "stopped_by": stopped_by, "losses": losses}, {}


def _resume_text(run: _Run, optimizer: Any, scheduler: Any) -> tuple[int, list[float]]:
    """Restore an interrupted text-kind run; its step count and losses so far."""
    from recsys_infer.toolchain.train.state import restore_optimizer, restore_rng

    saved = run.saved
    if saved is None:  # pragma: no cover - called for a resumed run only
        raise TypeError("nothing to resume")
    run.model.load_state_dict(saved.group("model"))
    restore_optimizer(optimizer, saved)
    scheduler.load_state_dict(saved.meta["scheduler"])
    restore_rng(saved)
    return saved.meta["progress"]["step"], saved.meta["progress"]["losses"]


def _text_loss(
    model: TwoTower,
    batch: list[Example],
    catalog: Any,
    config: TrainConfig,
    tokenizers: tuple[TextTokenizer, ...],
) -> torch.Tensor:
    """In-batch softmax loss of one batch: histories written as text against their targets."""

    def features(texts: list[str], tok: TextTokenizer) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in tok(texts).items() if k != "token_type_ids"}

    user_tok, item_tok = tokenizers
    fmt = model.config.user_input
    user_texts = [fmt.render([catalog.get(h).text for h in ex.history]) for ex in batch]
    item_texts = [catalog.get(ex.target).text for ex in batch]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(_given(config.bf16))):
        users = model.user(**features(user_texts, user_tok))
        items = model.item(**features(item_texts, item_tok))
    targets = [ex.target for ex in batch]
    return in_batch_softmax_loss(users.float(), items.float(), targets, float(_given(config.temperature)))


def _train_sequence(run: _Run) -> tuple[dict[str, Any], dict[str, Any]]:
    from tokenizers import Tokenizer

    from recsys_infer.toolchain.train.sequence import (
        LoopSettings,
        SequenceLoop,
        SequenceRun,
        carry_on,
        embed_items,
    )

    model, config = run.model, run.config
    tokenizer = TextTokenizer(
        Tokenizer.from_str(run.tokenizer_json), max_length=config.item_max_length, pad_token=run.pad_token
    )
    if config.max_steps == 0:  # the untrained model: an identity head, a random sequence tower
        return {"steps": 0, "examples_seen": 0, "stopped_by": "max_steps", "losses": []}, {}
    if not any(len(seq) >= 2 for seq in run.split.train.values()):  # before the catalogue is embedded
        raise DataError(
            f"{run.dataset.name} has no training examples: a user needs at least two training "
            "interactions (after the last two are held out for validation and test)"
        )
    embeddings = embed_items(model.item, tokenizer, run.dataset.catalog.texts, progress=run.progress)
    settings = LoopSettings.of(config)
    choice, started = _choose_levers(run, embeddings, settings)
    model = run.model

    def checkpoint_state(
        state: SequenceRun, optimizer: torch.optim.Optimizer, best: dict[str, torch.Tensor]
    ) -> None:
        trainable = {k: v for k, v in model.state_dict().items() if not k.startswith("item.encoder.")}
        save_state(
            run.out,
            fingerprint=run.fingerprint,
            progress={**asdict(state), "seconds": run.elapsed(), "levers": choice.to_json()},
            modules={"model": trainable, "best": best},
            optimizer=optimizer,
        )

    loop = started or SequenceLoop(
        model, embeddings, run.split, run.dataset.catalog, settings, deadline=run.deadline, on_eval=None
    )
    loop.on_eval = checkpoint_state
    done, _ = carry_on(loop, progress=run.progress, resume=run.saved)
    stopped_by = (
        "max_minutes" if done.out_of_time
        else "max_steps" if done.out_of_steps
        else "early_stopping" if done.stopped_early
        else "epochs"
    )  # fmt: skip
    extra = {
        "epochs": done.epochs,
        "best_epoch": done.best_epoch,
        "best_validation_ndcg@10": done.best_ndcg,
        "validation": done.validation,
        "softmax": done.softmax,
        "epoch_seconds": done.epoch_seconds,
        **choice.to_json(),
    }
    return {
        "steps": done.steps,
        "examples_seen": done.steps * int(_given(config.batch_size)),
        "stopped_by": stopped_by,
        "losses": done.losses,
    }, extra


def _choose_levers(run: _Run, embeddings: torch.Tensor, settings: Any) -> tuple[Any, Any]:
    """Set ``run.model`` to the model with the levers chosen, and return the choice and the
    trial training carries on from (``None``: start afresh, as a resumed run does, with the
    levers its state recorded)."""
    from recsys_infer.toolchain.train.levers import Choice, Levers, choose, open_levers
    from recsys_infer.toolchain.train.sequence import start_loop

    start, open_ = open_levers({name: getattr(run.config, name) for name in LEVER_ORDER})
    if run.saved is not None and "levers" in run.saved.meta["progress"]:
        recorded = run.saved.meta["progress"]["levers"]
        choice = Choice(Levers.of(recorded["levers"]), recorded["trials"], recorded["chosen_on_validation"])
        run.model = _with_levers(run, choice.levers, embeddings)
        return choice, None
    if not open_:
        run.model = _with_levers(run, start, embeddings)
        return Choice(start), None

    def trial(levers: Levers) -> tuple[float | None, Any]:
        model = _with_levers(run, levers, embeddings)
        loop = start_loop(model, embeddings, run.split, run.dataset.catalog, settings,
                          deadline=run.deadline, progress=run.progress, label=levers.describe())  # fmt: skip
        cut_short = loop.run.out_of_time or loop.run.out_of_steps
        logger.info("trial of %s: validation NDCG@10 %.4f", levers.describe(), loop.run.best_ndcg)
        return (None if cut_short else loop.run.best_ndcg), (model, loop)

    def out_of_time() -> bool:
        return run.deadline is not None and time.monotonic() > run.deadline

    choice, (run.model, started) = choose(start, open_, trial, out_of_time=out_of_time)
    return choice, started


def _with_levers(run: _Run, levers: Any, embeddings: torch.Tensor) -> TwoTower:
    """A fresh sequence model on ``run.model``'s (frozen, shared) encoder with these levers, its
    whitening fitted to the catalogue and its offsets masked to the items training shows."""
    from recsys_infer.toolchain.train.sequence import seen_in_training

    config = run.model.config
    if config.sequence is None:  # pragma: no cover - only the sequence kind has levers
        raise ConfigError("only the sequence user tower has levers")
    config = replace(config, sequence=replace(config.sequence, **asdict(levers)))
    torch.manual_seed(run.config.seed)  # every candidate starts from the same draw
    model = TwoTower(None, run.model.item.encoder, config, n_items=len(run.dataset.catalog))
    if isinstance(model.item.head, ItemHead) and levers.whiten:
        model.item.head.fit_whitening(embeddings)
    if model.item_offsets is not None:
        position = {item_id: i for i, item_id in enumerate(run.dataset.catalog.ids)}
        model.offset_mask.copy_(seen_in_training(run.split, position).float().unsqueeze(1))
    return model


def _versions() -> dict[str, str]:
    import transformers

    from recsys_infer.version import __version__

    return {"recsys_infer": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
