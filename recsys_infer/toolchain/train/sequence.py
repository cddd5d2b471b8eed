"""Training the sequence user tower and the item head over frozen text embeddings.

The item encoder runs once over the catalogue; its unit vectors ``E`` are then fixed inputs.
Each step scores the user vector at every position of a batch of history windows (SASRec-style,
so a window of 50 items trains 49 next-item predictions) against candidate items ``head(E)``:

- **full softmax** (catalogues up to ``FULL_SOFTMAX_MAX_ITEMS``): every item is a candidate,
  the limit of in-batch negatives, with no sampling bias to correct;
- **sampled softmax** (larger catalogues): each step draws ``negatives`` items shared by the
  batch, in proportion to their training frequency to the power 0.75, and subtracts each
  negative's log expected count from its logit (the logQ correction), so that their summed
  exponentials estimate the full softmax's denominator without bias; a sample that is a row's
  own target is masked.
  The head then runs on the step's items only, so a step costs the same at 30,000 items as
  at 3,000,000.

Model selection uses NDCG@10 on the validation split (history masked, full ranking, at most
``VALIDATION_USERS`` users), never the test split.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recsys_infer.data.split import Example, Split
from recsys_infer.errors import TrainingError
from recsys_infer.runtime.catalog import Catalog
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.toolchain.train.model import SequenceTower, TextTower, TwoTower, guarded_step

logger = logging.getLogger(__name__)

#: Catalogues up to this many items train with a full softmax (``softmax="auto"``).
FULL_SOFTMAX_MAX_ITEMS = 20_000
#: Validation users scored for model selection (a seeded sample when there are more).
VALIDATION_USERS = 5_000
#: The proposal's exponent on training frequency (word2vec's 0.75: between uniform and unigram).
SAMPLING_POWER = 0.75


@dataclass
class SequenceRun:
    """What the loop reports back: counters, the loss curve and the validation curve."""

    epochs: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_ndcg: float = -1.0
    out_of_time: bool = False
    out_of_steps: bool = False
    stopped_early: bool = False
    softmax: str = "full"
    epoch_seconds: list[float] = field(default_factory=list)  # training only, validation excluded
    step_seconds: float = 0.0  # all training steps so far, partial epochs included


def embed_items(
    tower: TextTower, tokenizer: TextTokenizer, texts: Sequence[str], *, progress: bool
) -> torch.Tensor:
    """The frozen encoder's unit vectors for every text, ``(n, dim)`` float32."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), int(tower.encoder.config.hidden_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="embedding items", unit="item")
    tower.eval()
    with torch.no_grad():
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            feats = tokenizer([texts[i] for i in idx])
            out[idx] = tower.embed(
                torch.from_numpy(feats["input_ids"]), torch.from_numpy(feats["attention_mask"])
            )
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


def history_windows(
    train: dict[str, tuple[str, ...]], position: dict[str, int], length: int
) -> list[list[int]]:
    """Each training sequence cut from its end into windows of ``length + 1`` items (inputs plus
    next items), so every (item → next item) pair appears once per epoch."""
    windows = []
    for seq in train.values():
        rows = [position[i] for i in seq]
        for end in range(len(rows), 1, -length):
            window = rows[max(0, end - length - 1) : end]
            if len(window) >= 2:
                windows.append(window)
    return windows


def _window_batch(
    windows: Sequence[list[int]], length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Only as wide as the batch's longest window: positions count from the right, so leading
    # columns of padding change nothing but cost (short product histories pad 5 items to 50).
    n, length = len(windows), min(length, max(len(w) for w in windows) - 1)
    history = torch.zeros(n, length, dtype=torch.long)
    targets = torch.full((n, length), -1, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    for b, window in enumerate(windows):
        k = len(window) - 1
        history[b, length - k :] = torch.tensor(window[:-1])
        targets[b, length - k :] = torch.tensor(window[1:])
        mask[b, length - k :] = 1
    return history, targets, mask


def seen_in_training(split: Split, position: dict[str, int]) -> torch.Tensor:
    """``(n_items,)`` bool: whether the training part shows each catalogue item at all."""
    seen = torch.zeros(len(position), dtype=torch.bool)
    seen[[position[i] for seq in split.train.values() for i in seq]] = True
    return seen


def left_padded(histories: Sequence[Sequence[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.zeros(len(histories), length, dtype=torch.long)
    mask = torch.zeros(len(histories), length, dtype=torch.long)
    for b, h in enumerate(histories):
        h = list(h)[-length:]
        if h:
            rows[b, length - len(h) :] = torch.tensor(h)
            mask[b, length - len(h) :] = 1
    return rows, mask


def validation_ndcg(
    model: TwoTower,
    embeddings: torch.Tensor,
    examples: Sequence[Example],
    position: dict[str, int],
    k: int = 10,
) -> dict[str, float]:
    """NDCG@k and Recall@k on ``examples`` with the history masked, full ranking (eval mode)."""
    user: SequenceTower = model.user
    model.eval()
    ndcg = hits = 0.0
    head = model.item.head
    if head is None:
        raise TrainingError("the sequence model's item tower has no head")
    with torch.no_grad():
        vectors = model.catalog_vectors(embeddings)
        for start in range(0, len(examples), 256):
            chunk = examples[start : start + 256]
            rows, mask = left_padded([[position[i] for i in e.history] for e in chunk], user.max_history)
            scores = user(vectors[rows], mask) @ vectors.T
            for b, e in enumerate(chunk):
                scores[b, [position[i] for i in e.history]] = -math.inf
            target = torch.tensor([position[e.target] for e in chunk])
            rank = (scores > scores[torch.arange(len(chunk)), target].unsqueeze(1)).sum(dim=1) + 1
            hit = rank <= k
            hits += float(hit.sum())
            ndcg += float((hit / torch.log2(rank.float() + 1)).sum())
    model.train()
    return {f"ndcg@{k}": ndcg / max(1, len(examples)), f"recall@{k}": hits / max(1, len(examples))}


class NegativeSampler:
    """Negatives for one step of sampled softmax, with the logQ correction.

    The proposal ``q`` is each item's training frequency to the power ``SAMPLING_POWER`` over the
    items that may be negatives (``allowed``); ``k`` items are drawn with replacement, so an item's
    expected count in a sample is ``k * q`` and ``log_expected`` is what its logit loses.
    """

    def __init__(self, counts: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> None:
        weights = counts.double().clamp(min=0) ** SAMPLING_POWER
        if allowed is not None:
            weights = torch.where(allowed, weights, torch.zeros_like(weights))
        if float(weights.sum()) <= 0:
            raise TrainingError("no item can be drawn as a negative: the training part shows no items")
        self.q = (weights / weights.sum()).float()
        self.k = k
        self.log_expected = torch.log(self.q * k)  # -inf for items never drawn (never used)
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def sample(self) -> torch.Tensor:
        return torch.multinomial(self.q, self.k, replacement=True, generator=self.generator)


def training_counts(split: Split, position: dict[str, int]) -> torch.Tensor:
    """``(n_items,)`` how often the training part shows each catalogue item."""
    counts = torch.zeros(len(position), dtype=torch.float64)
    rows = torch.tensor([position[i] for seq in split.train.values() for i in seq], dtype=torch.long)
    counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
    return counts


def sampled_softmax_logits(
    model: TwoTower,
    embeddings: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    sampler: NegativeSampler,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels: each position's target against the step's shared negatives.

    Each negative's logit loses ``log(k q)`` (logQ), so the negatives' summed exponentials are an
    unbiased estimate of the full softmax's sum over the other items; the target's own logit is
    left as it is, as in the full softmax, and draws of the target itself are masked. The head
    runs on the step's distinct items only."""
    selected = targets >= 0
    positives = targets[selected]
    negatives = sampler.sample()
    items, inverse = torch.unique(torch.cat([rows.flatten(), positives, negatives]), return_inverse=True)
    vectors = model.catalog_vectors(embeddings, items)
    n_rows, n_pos = rows.numel(), len(positives)
    # F.embedding rather than indexing: its backward sums repeated rows in a fixed order, where
    # an indexing backward's scatter-add under two busy threads did not (resumed runs drifted).
    history = F.embedding(inverse[:n_rows], vectors).view(*rows.shape, -1)
    users = model.user.encode_positions(history, mask)[selected]
    positive = F.embedding(inverse[n_rows : n_rows + n_pos], vectors)
    negative = F.embedding(inverse[n_rows + n_pos :], vectors)
    true = (users * positive).sum(dim=-1).float() / temperature
    sampled = (users @ negative.T).float() / temperature - sampler.log_expected[negatives]
    sampled = sampled.masked_fill(negatives.unsqueeze(0) == positives.unsqueeze(1), float("-inf"))
    logits = torch.cat([true.unsqueeze(1), sampled], dim=1)
    return logits, torch.zeros(len(positives), dtype=torch.long)


def _full_softmax_logits(
    model: TwoTower,
    embeddings: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    excluded: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    vectors = model.catalog_vectors(embeddings)
    users = model.user.encode_positions(F.embedding(rows, vectors), mask)  # see sampled_softmax_logits
    selected = targets >= 0
    logits = (users[selected] @ vectors.T).float() / temperature
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    return logits, targets[selected]


def use_sampled_softmax(softmax: str, n_items: int) -> bool:
    if softmax not in ("auto", "full", "sampled"):
        raise TrainingError(f"softmax must be 'auto', 'full' or 'sampled', got {softmax!r}")
    return softmax == "sampled" or (softmax == "auto" and n_items > FULL_SOFTMAX_MAX_ITEMS)


def trainable_state(model: TwoTower) -> dict[str, torch.Tensor]:
    """A copy of everything but the frozen item encoder: what a best state or a resume needs."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("item.encoder.")}


@dataclass(frozen=True)
class LoopSettings:
    """The loop's settings, named as :class:`~recsys_infer.toolchain.train.TrainConfig` names
    them (:meth:`of` reads them from it), every kind default filled in."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    temperature: float
    seed: int
    bf16: bool
    eval_every: int
    patience: int
    unseen_negatives: bool = True
    softmax: str = "auto"
    negatives: int = 4096
    max_steps: int | None = None
    trial_epochs: int = 15

    @classmethod
    def of(cls, config: Any) -> LoopSettings:
        """The loop's share of a resolved training configuration."""
        values = {f.name: getattr(config, f.name) for f in fields(cls)}
        missing = [name for name, value in values.items() if value is None and name != "max_steps"]
        if missing:
            raise TrainingError(f"the sequence loop needs {missing} set (a kind default was not filled in)")
        return cls(**values)


#: Called after each validation with the run so far, the optimizer and the best state.
OnEval = Callable[[SequenceRun, torch.optim.Optimizer, dict[str, torch.Tensor]], None]


def trial_epochs(settings: LoopSettings) -> int:
    """How long a lever's trial trains: to the first validation at or after
    ``settings.trial_epochs``."""
    return settings.eval_every * -(-settings.trial_epochs // settings.eval_every)


def start_loop(
    model: TwoTower,
    embeddings: torch.Tensor,
    split: Split,
    catalog: Catalog,
    settings: LoopSettings,
    *,
    deadline: float | None,
    progress: bool = False,
    label: str = "trial",
) -> SequenceLoop:
    """A loop trained for :func:`trial_epochs` epochs (or until the deadline), validated at its
    end: a lever's trial, which :func:`train_sequence_loop` can then carry on."""
    loop = SequenceLoop(model, embeddings, split, catalog, settings, deadline=deadline, on_eval=None)
    epochs = min(trial_epochs(settings), settings.epochs)
    _epochs(loop, epochs, progress, f"trial: {label}")
    cut_short = loop.run.out_of_time or loop.run.out_of_steps  # validated where training ends
    if not cut_short and (not loop.run.validation or loop.run.validation[-1]["epoch"] != loop.run.epochs):
        loop.validate()
    return loop


def _epochs(loop: SequenceLoop, until: int, progress: bool, desc: str) -> None:
    """Train ``loop`` until epoch ``until``, it stops (early stopping, time, steps) or both."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=until, initial=loop.run.epochs, desc=desc, unit="epoch")
    loop.model.train()
    try:
        while loop.run.epochs < until and loop.epoch(bar):
            pass
    finally:
        if bar is not None:
            bar.close()


def train_sequence_loop(
    model: TwoTower,
    embeddings: torch.Tensor,
    split: Split,
    catalog: Catalog,
    settings: LoopSettings,
    *,
    deadline: float | None,
    progress: bool,
    resume: Any = None,
    on_eval: OnEval | None = None,
) -> tuple[SequenceRun, dict[str, torch.Tensor]]:
    """Train head and sequence tower; returns the run and the best (validation) state dict.

    It stops at ``settings.epochs``, on early stopping, at the ``deadline`` or after
    ``settings.max_steps`` steps (a smoke test's budget), whichever comes first; a partial epoch
    is validated before the best state is chosen."""
    loop = SequenceLoop(model, embeddings, split, catalog, settings, deadline=deadline, on_eval=on_eval)
    return carry_on(loop, progress=progress, resume=resume)


def carry_on(
    loop: SequenceLoop, *, progress: bool, resume: Any = None
) -> tuple[SequenceRun, dict[str, torch.Tensor]]:
    """Train ``loop`` (a fresh one, or a lever's trial from :func:`start_loop`) to the end, as
    :func:`train_sequence_loop` says; ``resume``: the saved state of an interrupted run."""
    if loop.run.out_of_time or loop.run.out_of_steps:  # a trial that spent the budget
        return _finish(loop)
    if resume is not None:
        loop.resume(resume)
    _epochs(loop, loop.settings.epochs, progress, "training (epochs)")
    return _finish(loop)


def _finish(loop: SequenceLoop) -> tuple[SequenceRun, dict[str, torch.Tensor]]:
    """Validate a run cut short where it stopped, then load its best state."""
    run, model = loop.run, loop.model
    if not run.validation or run.out_of_time or run.out_of_steps:
        loop.validate()  # stopped mid-way (or no evaluation yet): measure where we are first
    model.load_state_dict(loop.best_state, strict=False)
    model.eval()
    return run, loop.best_state


class SequenceLoop:
    """One sequence training run's state: its batches, optimizer, counters and best state."""

    def __init__(
        self,
        model: TwoTower,
        embeddings: torch.Tensor,
        split: Split,
        catalog: Catalog,
        settings: LoopSettings,
        *,
        deadline: float | None,
        on_eval: OnEval | None,
    ) -> None:
        self.model, self.embeddings, self.settings = model, embeddings, settings
        self.deadline, self.on_eval = deadline, on_eval
        self.user: SequenceTower = model.user
        if model.item.head is None:
            raise TrainingError("the sequence model's item tower has no head to train")
        self.position = {item_id: i for i, item_id in enumerate(catalog.ids)}
        self.windows = history_windows(dict(split.train), self.position, self.user.max_history)
        # Items the training part never shows (held-out cold items, items whose only interactions
        # are validation or test targets) are, to this model, items that do not exist yet. As
        # negatives in every step they would teach the head to push their kind of text away.
        self.excluded = None if settings.unseen_negatives else ~seen_in_training(split, self.position)
        if not self.windows:
            raise TrainingError("no training windows: users need at least two training interactions")
        validation = [
            Example(e.user_id, e.history[-self.user.max_history :], e.target) for e in split.validation
        ]
        if len(validation) > VALIDATION_USERS:
            validation = random.Random(settings.seed).sample(validation, VALIDATION_USERS)
        self.validation = validation
        self.sampler = self._sampler(split)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.run = SequenceRun(softmax="sampled" if self.sampler is not None else "full")
        self.best_state = trainable_state(model)
        self.evals_without_gain = 0

    def _sampler(self, split: Split) -> NegativeSampler | None:
        s = self.settings
        if not use_sampled_softmax(s.softmax, len(self.position)):
            return None
        counts = training_counts(split, self.position)
        allowed = None if self.excluded is None else ~self.excluded
        return NegativeSampler(counts if allowed is not None else counts + 1, s.negatives, allowed=allowed)

    def resume(self, saved: Any) -> None:
        from recsys_infer.toolchain.train.state import restore_optimizer, restore_rng

        self.model.load_state_dict(saved.group("model"), strict=False)
        self.best_state = saved.group("best")
        restore_optimizer(self.optimizer, saved)
        restore_rng(saved)
        p = saved.meta["progress"]
        self.run = SequenceRun(
            p["epochs"], p["steps"], p["losses"], p["validation"], p["best_epoch"], p["best_ndcg"],
            softmax=self.run.softmax, epoch_seconds=p.get("epoch_seconds", []),
        )  # fmt: skip
        self.evals_without_gain = sum(1 for v in self.run.validation if v["epoch"] > self.run.best_epoch)

    def epoch(self, bar: Any) -> bool:
        """Train one epoch, validating when due; False when the run is to stop."""
        run, s = self.run, self.settings
        order = list(range(len(self.windows)))
        random.Random(s.seed * 1_000_003 + run.epochs).shuffle(order)
        if self.sampler is not None:  # per epoch, so that a resumed run draws what it would have
            self.sampler.reseed(s.seed * 1_000_003 + run.epochs)
        started = time.perf_counter()
        losses = self._steps(order)
        run.step_seconds += time.perf_counter() - started
        if run.out_of_time or run.out_of_steps:
            return False
        run.epochs += 1
        run.epoch_seconds.append(round(time.perf_counter() - started, 3))
        run.losses.append(float(np.mean(losses)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.3f}", best=f"{max(run.best_ndcg, 0):.4f}")
        if run.epochs % s.eval_every and run.epochs != s.epochs:
            return True
        self.validate()
        if bar is not None:
            bar.set_postfix(loss=f"{run.losses[-1]:.3f}", best=f"{run.best_ndcg:.4f}")
        if self.on_eval is not None:
            self.on_eval(run, self.optimizer, self.best_state)
        if self.evals_without_gain >= s.patience:
            run.stopped_early = True
            return False
        return True

    def _steps(self, order: list[int]) -> list[float]:
        """The epoch's steps over the windows in ``order``, until the deadline or the step budget."""
        run, s = self.run, self.settings
        losses = []
        for start in range(0, len(order), s.batch_size):
            if self.deadline is not None and time.monotonic() > self.deadline:
                run.out_of_time = True
                break
            if s.max_steps is not None and run.steps >= s.max_steps:
                run.out_of_steps = True
                break
            batch = [self.windows[j] for j in order[start : start + s.batch_size]]
            rows, targets, mask = _window_batch(batch, self.user.max_history)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
                if self.sampler is not None:
                    logits, labels = sampled_softmax_logits(
                        self.model, self.embeddings, rows, targets, mask, self.sampler, s.temperature
                    )
                else:
                    logits, labels = _full_softmax_logits(
                        self.model, self.embeddings, rows, targets, mask, s.temperature, self.excluded
                    )
            loss = F.cross_entropy(logits, labels)
            guarded_step(loss, self.optimizer, self.trainable, f"in epoch {run.epochs + 1}")
            run.steps += 1
            losses.append(float(loss.item()))
        return losses

    def validate(self) -> None:
        """Score validation NDCG@10 now; keep the state when it is the best so far."""
        run = self.run
        scores = validation_ndcg(self.model, self.embeddings, self.validation, self.position)
        run.validation.append({"epoch": run.epochs, **scores})
        logger.info("epoch %d: loss %s, validation %s", run.epochs, run.losses[-1:] or "-", scores)
        if scores["ndcg@10"] > run.best_ndcg:
            run.best_ndcg, run.best_epoch = scores["ndcg@10"], run.epochs
            self.best_state = trainable_state(self.model)
            self.evals_without_gain = 0
        else:
            self.evals_without_gain += 1
