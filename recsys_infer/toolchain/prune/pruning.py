"""Structured pruning of the towers' encoders, recovered by distillation.

``ratio`` is the fraction of attention heads and of FFN neurons removed from every encoder layer
(the same count in each layer, chosen per layer); ``layers`` whole layers can go too. Embeddings
are left alone. The pruned encoder is physically smaller: heads go through Hugging Face's
``prune_heads`` (recorded in the config as ``pruned_heads``, so ``from_pretrained`` rebuilds the
shape) and FFN neurons by slicing the two linear layers (a smaller ``intermediate_size``).

What to remove is measured on real inputs, not guessed from weights:

- **Heads and neurons**: first-order importance, ``|dL/dm|`` for a mask ``m`` multiplied into
  each head's attention (``head_mask``; eager attention) and each FFN neuron's activation, summed
  over batches, with ``L`` the retrieval loss the tower serves: its vectors must find the right
  teacher vector among the batch (and, for a text user tower given ``--data``, the right target
  item). Head scores are normalised per layer.
- **Layers**: each is removed in turn and the loss measured; the ones whose removal costs least go.

A sequence model's encoder is its item tower, which also reads free-text requests. ``--tower
both`` prunes it, so every item vector moves (and the history tower, trained on the old ones,
with them); ``--tower user`` prunes a copy that becomes a request tower of its own, and items,
index and history users stay exactly as they were.

Distillation then trains the pruned tower towards the unpruned one: ``1 - cos`` to the teacher's
vector plus the same retrieval loss, for ``distill_steps`` steps on the training split of
``--data`` (never the probe set, which the fidelity figures are measured on). The student runs in
eval mode (no dropout): it must reproduce the teacher's vectors, not a noisy version of them.

A request tower is distilled where a request is served: in the encoder's own space (the text half
of a two-space bundle, which is all its requests read, and what the frozen head reads), towards
the teacher's vector (``100 (1 - cos)``) and towards the teacher's ranking of the whole catalogue
(the KL divergence between the two softmaxes of the item scores at ``ranking_temperature``), which
is what overlap@10 measures. ``quant_aware`` computes the transformer blocks' linear layers as
dynamic int8 will (:mod:`.fake_quant`), so the weights learn to survive ``quantize --mode dynamic``;
``ratio 0`` with ``quant_aware`` then only retrains the request tower for int8.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from recsys_infer.data.probe import request_from_item, request_parts
from recsys_infer.enums import TowerChoice, UserTowerKind
from recsys_infer.errors import CheckpointError, ConfigError
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.toolchain.prune.fake_quant import fake_quantized, tokens
from recsys_infer.toolchain.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from recsys_infer.toolchain.train.model import TextTower, guarded_step, pool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneConfig:
    ratio: float
    layers: int = 0
    towers: TowerChoice = TowerChoice.BOTH
    distill_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-4
    temperature: float = 0.05
    importance_batches: int = 8
    quant_aware: bool = False
    ranking_temperature: float = 0.02
    ranking_weight: float = 1.0
    # bf16 autocast for distillation; None: where the CPU computes bf16 natively (and never with
    # quant_aware, whose int8 rounding bf16's coarser one would drown). Emulated bf16 on an
    # AVX2-only CPU made a distillation step 8.6 s instead of about 0.5 s.
    bf16: bool | None = None
    # Requests per item made of a random choice of its attributes, beside the one the probe's
    # form gives it, for distilling a request tower (:func:`_catalog_requests`).
    request_variants: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "towers", TowerChoice(self.towers))
        if self.bf16 is None:
            from recsys_infer.toolchain.train.loop import native_bf16

            object.__setattr__(self, "bf16", native_bf16() and not self.quant_aware)
        if not 0 <= self.ratio < 1:
            raise ConfigError(
                f"ratio must be in [0, 1): the fraction of heads and neurons removed, got {self.ratio}"
            )
        if self.layers < 0 or self.distill_steps < 0 or self.request_variants < 0:
            raise ConfigError("layers, distill_steps and request_variants must be 0 or more")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 (the retrieval loss needs negatives)")


@dataclass
class TowerReport:
    name: str
    parameters_before: int
    parameters_after: int
    layers_before: int
    layers_after: int
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    dropped_layers: list[int]
    agreement_before_distill: dict[str, float] = field(default_factory=dict)
    agreement_after_distill: dict[str, float] = field(default_factory=dict)
    distill_losses: list[float] = field(default_factory=list)


@dataclass
class PruneResult:
    checkpoint: Path
    towers: list[TowerReport]
    bytes_before: int
    bytes_after: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "towers": [asdict(t) for t in self.towers],
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "seconds": round(self.seconds, 2),
        }


# -- the tower's inputs ---------------------------------------------------------------------------


@dataclass
class _Inputs:
    """Texts a tower reads, and optionally for each the text of the item it should retrieve."""

    texts: list[str]
    targets: list[str] | None = None


def _encoder_parameters(encoder: nn.Module) -> int:
    return sum(p.numel() for p in encoder.parameters())


def _embed(tower: TextTower, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's pooled vectors, before the head: the space a request tower is distilled in."""
    return tower.embed(features["input_ids"], features["attention_mask"])


def _forward(
    tower: TextTower,
    features: dict[str, torch.Tensor],
    head_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    hidden = tower.encoder(
        input_ids=features["input_ids"], attention_mask=features["attention_mask"], head_mask=head_mask
    ).last_hidden_state
    vectors = pool(hidden, features["attention_mask"], tower.pooling)
    return vectors if tower.head is None else tower.head(vectors)


def _loss(
    student: torch.Tensor, teacher: torch.Tensor, target_vectors: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Retrieval among the batch: each vector must find its own teacher vector (and its target)."""
    labels = torch.arange(student.shape[0])
    loss = F.cross_entropy(student @ teacher.T / temperature, labels)
    if target_vectors is not None:
        loss = loss + F.cross_entropy(student @ target_vectors.T / temperature, labels)
    return loss


class _Batches:
    def __init__(
        self, inputs: _Inputs, tokenizer: TextTokenizer, item_tower: TextTower | None, batch: int, seed: int
    ):
        self.inputs, self.tokenizer, self.item_tower, self.batch = inputs, tokenizer, item_tower, batch
        self.rng = random.Random(seed)
        self._item_cache: dict[str, torch.Tensor] = {}

    def features(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        f = self.tokenizer(list(texts))
        return {
            "input_ids": torch.from_numpy(f["input_ids"]),
            "attention_mask": torch.from_numpy(f["attention_mask"]),
        }

    def sample(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        rows = self.rng.sample(range(len(self.inputs.texts)), min(self.batch, len(self.inputs.texts)))
        features = self.features([self.inputs.texts[i] for i in rows])
        targets = None
        if self.inputs.targets is not None and self.item_tower is not None:
            names = [self.inputs.targets[i] for i in rows]
            with torch.no_grad():
                targets = _forward(self.item_tower, self.features(names))
        return features, targets


# -- importance and physical pruning --------------------------------------------------------------


def _ffn_hooks(encoder: Any, mask: torch.Tensor) -> list[Any]:
    handles = []
    for i, layer in enumerate(encoder.encoder.layer):
        handles.append(layer.intermediate.register_forward_hook(lambda _m, _i, out, i=i: out * mask[i]))
    return handles


def importance(
    tower: TextTower, teacher: TextTower, batches: _Batches, n_batches: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``|dL/dm|`` summed over batches for every head ``(layers, heads)`` and FFN neuron."""
    config = tower.encoder.config
    head_mask = torch.ones(config.num_hidden_layers, config.num_attention_heads, requires_grad=True)
    ffn_mask = torch.ones(config.num_hidden_layers, config.intermediate_size, requires_grad=True)
    handles = _ffn_hooks(tower.encoder, ffn_mask)
    heads = torch.zeros_like(head_mask)
    neurons = torch.zeros_like(ffn_mask)
    tower.eval()
    try:
        for _ in range(n_batches):
            features, targets = batches.sample()
            with torch.no_grad():
                reference = _forward(teacher, features)
            loss = _loss(_forward(tower, features, head_mask), reference, targets, temperature)
            head_grad, ffn_grad = torch.autograd.grad(loss, [head_mask, ffn_mask])
            heads += head_grad.abs()
            neurons += ffn_grad.abs()
    finally:
        for h in handles:
            h.remove()
    heads = heads / heads.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return heads, neurons


def _loss_without(tower: TextTower, teacher: TextTower, batches: list[Any], temperature: float) -> float:
    with torch.no_grad():
        return float(
            sum(_loss(_forward(tower, f), _forward(teacher, f), t, temperature) for f, t in batches)
            / len(batches)
        )


def drop_layers(
    tower: TextTower, teacher: TextTower, batches: _Batches, count: int, temperature: float
) -> list[int]:
    """Remove the ``count`` layers whose removal raises the retrieval loss least; returns them."""
    layers = tower.encoder.encoder.layer
    if count >= len(layers):
        raise ConfigError(f"cannot drop {count} of {len(layers)} layers: at least one must stay")
    fixed = [batches.sample() for _ in range(4)]
    costs = []
    for i in range(len(layers)):
        tower.encoder.encoder.layer = nn.ModuleList(layer for j, layer in enumerate(layers) if j != i)
        costs.append((_loss_without(tower, teacher, fixed, temperature), i))
    dropped = sorted(i for _, i in sorted(costs)[:count])
    tower.encoder.encoder.layer = nn.ModuleList(layer for j, layer in enumerate(layers) if j not in dropped)
    tower.encoder.config.num_hidden_layers = len(tower.encoder.encoder.layer)
    for i, layer in enumerate(tower.encoder.encoder.layer):  # attention modules know their index
        if hasattr(layer.attention.self, "layer_idx"):
            layer.attention.self.layer_idx = i
    return dropped


def prune_ffn(encoder: Any, keep: list[torch.Tensor]) -> None:
    """Keep only the FFN neurons ``keep[layer]`` (the same count in every layer)."""
    for layer, idx in zip(encoder.encoder.layer, keep, strict=True):
        inner, outer = layer.intermediate.dense, layer.output.dense
        new_inner = nn.Linear(inner.in_features, len(idx))
        new_inner.weight.data = inner.weight.data[idx].clone()
        new_inner.bias.data = inner.bias.data[idx].clone()
        new_outer = nn.Linear(len(idx), outer.out_features)
        new_outer.weight.data = outer.weight.data[:, idx].clone()
        new_outer.bias.data = outer.bias.data.clone()
        layer.intermediate.dense, layer.output.dense = new_inner, new_outer
    encoder.config.intermediate_size = len(keep[0])


def prune_tower(
    tower: TextTower, teacher: TextTower, batches: _Batches, config: PruneConfig, name: str
) -> TowerReport:
    encoder = tower.encoder
    before = _encoder_parameters(encoder)
    layers_before = encoder.config.num_hidden_layers
    dropped = drop_layers(tower, teacher, batches, config.layers, config.temperature) if config.layers else []
    heads, neurons = importance(tower, teacher, batches, config.importance_batches, config.temperature)
    n_heads, n_ffn = heads.shape[1], neurons.shape[1]
    remove_heads = round(config.ratio * n_heads)
    keep_ffn = max(1, n_ffn - round(config.ratio * n_ffn))
    if remove_heads >= n_heads:
        remove_heads = n_heads - 1
    if remove_heads:
        encoder.prune_heads({i: heads[i].argsort()[:remove_heads].tolist() for i in range(heads.shape[0])})
    prune_ffn(
        encoder,
        [neurons[i].argsort(descending=True)[:keep_ffn].sort().values for i in range(neurons.shape[0])],
    )
    layers = encoder.encoder.layer
    return TowerReport(
        name=name,
        parameters_before=before,
        parameters_after=_encoder_parameters(encoder),
        layers_before=layers_before,
        layers_after=len(layers),
        heads_per_layer=[int(layer.attention.self.num_attention_heads) for layer in layers],
        ffn_per_layer=[int(layer.intermediate.dense.out_features) for layer in layers],
        dropped_layers=dropped,
    )


def agreement(
    student: TextTower,
    teacher: TextTower,
    batches: _Batches,
    texts: Sequence[str],
    catalog: torch.Tensor | None = None,
) -> dict[str, float]:
    """Cosine between the pruned and the unpruned tower's vectors on held-out texts; with the
    ``catalogue``'s vectors (a request tower), in the encoder's space, and the overlap@10 of the
    items each ranks first."""
    forward = _forward if catalog is None else _embed
    student.eval()
    pairs = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            f = batches.features(texts[start : start + 64])
            with tokens(f["attention_mask"]):  # read only by fake-quantized layers
                pairs.append((forward(student, f), forward(teacher, f)))
    s, t = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    cos = F.cosine_similarity(s, t)
    out = {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6)}
    if catalog is not None:
        from recsys_infer.ranking import overlap, top_k

        items = catalog.numpy()
        out["overlap@10"] = round(overlap(top_k(s.numpy(), items, 10), top_k(t.numpy(), items, 10)), 4)
    return out


def _agreement(
    student: TextTower,
    teacher: TextTower,
    batches: _Batches,
    texts: Sequence[str],
    catalog: torch.Tensor | None,
    config: PruneConfig,
) -> dict[str, float]:
    """:func:`agreement`, and with ``quant_aware`` the same measured in fake int8 (``int8_`` keys)."""
    out = agreement(student, teacher, batches, texts, catalog)
    if config.quant_aware:
        with fake_quantized(student.encoder):
            fq = agreement(student, teacher, batches, texts, catalog)
        out |= {f"int8_{k}": v for k, v in fq.items()}
    return out


def _ranking_loss(
    vectors: torch.Tensor, reference: torch.Tensor, catalog: torch.Tensor, config: PruneConfig
) -> torch.Tensor:
    """``100 (1 - cos)`` to the teacher plus the KL divergence of the catalogue's ranking."""
    loss = 100 * (1 - F.cosine_similarity(vectors, reference)).mean()
    if config.ranking_weight:
        tau = config.ranking_temperature
        kl = F.kl_div(
            F.log_softmax(vectors @ catalog.T / tau, dim=1),
            F.log_softmax(reference @ catalog.T / tau, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        loss = loss + config.ranking_weight * kl
    return loss


def _warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises over the first 5% of ``steps``, then falls to zero on a cosine:
    the late steps settle the student instead of shaking it at the full rate."""
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def distill(
    student: TextTower,
    teacher: TextTower,
    batches: _Batches,
    config: PruneConfig,
    progress: bool,
    *,
    train_head: bool = False,
    catalog: torch.Tensor | None = None,
) -> list[float]:
    """Trains ``student`` towards ``teacher``; with the ``catalogue``'s vectors (a request tower)
    in the encoder's space by :func:`_ranking_loss`, its head left as it is."""
    student.encoder.requires_grad_(True)  # the sequence kind freezes its item encoder
    params = list(student.encoder.parameters())
    if train_head and student.head is not None and catalog is None:
        student.head.requires_grad_(True)
        params += list(student.head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    schedule = _warmup_cosine(optimizer, config.distill_steps)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.distill_steps, desc="distilling", unit="step")
    forward = _forward if catalog is None else _embed
    # Eval mode: dropout would have the student chase a noisy copy of the teacher's vectors.
    student.eval()
    with fake_quantized(student.encoder) if config.quant_aware else nullcontext():
        for step in range(config.distill_steps):
            features, targets = batches.sample()
            with torch.no_grad():
                reference = forward(teacher, features)
            with (
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(config.bf16)),
                tokens(features["attention_mask"]),
            ):
                vectors = forward(student, features).float()
            if catalog is None:
                loss = (1 - F.cosine_similarity(vectors, reference)).mean() + _loss(
                    vectors, reference, targets, config.temperature
                )
            else:
                loss = _ranking_loss(vectors, reference, catalog, config)
            guarded_step(loss, optimizer, params, f"at distillation step {step + 1}")
            schedule.step()
            losses.append(float(loss.item()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    return losses


# -- the command ----------------------------------------------------------------------------------


def _user_pairs(ckpt: Checkpoint, data: str | None, seed: int) -> _Inputs:
    """User texts and their target items: the training split of ``data``, or the probe set."""
    fmt, catalog = ckpt.config.user_input, ckpt.catalog
    rng = random.Random(seed)
    texts, targets = [], []
    if data:
        from recsys_infer.data import leave_one_out, load_dataset

        split = leave_one_out(load_dataset(data))
        for seq in split.train.values():
            for t in rng.sample(range(1, len(seq)), min(8, len(seq) - 1)) if len(seq) > 1 else []:
                history = [catalog.get(h).text for h in seq[:t][-fmt.max_history :] if h in catalog]
                if history and seq[t] in catalog:
                    texts.append(fmt.render(history))
                    targets.append(catalog.get(seq[t]).text)
    else:
        probe = ckpt.probe or {}
        for history, target in zip(probe.get("histories", []), probe.get("targets", []), strict=False):
            known = [catalog.get(h).text for h in history if h in catalog]
            if known and target in catalog:
                texts.append(fmt.render(known))
                targets.append(catalog.get(target).text)
    if len(texts) < 2:
        raise CheckpointError(
            "pruning needs real user inputs: pass --data with the data set the model was trained on"
        )
    return _Inputs(texts, targets)


def _catalog_requests(
    ckpt: Checkpoint, data: str | None = None, *, variants: int = 0, seed: int = 0
) -> list[str]:
    """Requests made of the catalogue's attributes, less every request of the probe set and, with
    ``data``, every request of its validation and test targets: fidelity is measured on those
    (the probe's by export and quantize, the test's by ``bench``), so distillation never sees them.

    ``variants``: also that many requests per item made of a random choice of its attributes,
    all of its genres and tags to draw from, in their order (one to six of them; the served
    request takes the first three of each). A variant whose attributes are those of a held-out
    request, in any order, is dropped."""
    held_out = set((ckpt.probe or {}).get("requests", []))
    held_items = [t for t in (ckpt.probe or {}).get("targets", []) if t in ckpt.catalog]
    if data:
        from recsys_infer.data import leave_one_out, load_dataset

        split = leave_one_out(load_dataset(data))
        for example in (*split.validation, *split.test):
            if example.target in ckpt.catalog:
                held_out.add(request_from_item(ckpt.catalog.get(example.target)))
                held_items.append(example.target)
    requests = {r for r in (request_from_item(item) for item in ckpt.catalog) if r}
    if variants:
        held_sets = {frozenset(request_parts(ckpt.catalog.get(t))) for t in held_items}
        rng = random.Random(seed)
        for item in ckpt.catalog:
            parts = request_parts(item, per_field=None)
            for _ in range(variants if parts else 0):
                chosen = sorted(rng.sample(range(len(parts)), rng.randint(1, min(6, len(parts)))))
                picked = [parts[i] for i in chosen]
                if frozenset(picked) not in held_sets:
                    requests.add(", ".join(picked))
    return sorted(requests - held_out)


def _item_inputs(ckpt: Checkpoint, with_requests: bool) -> _Inputs:
    texts = list(ckpt.catalog.texts)
    if with_requests:  # the sequence kind's item encoder also reads free-text requests
        texts += _catalog_requests(ckpt)
    return _Inputs(texts)


def _request_inputs(ckpt: Checkpoint, data: str | None, *, variants: int = 0, seed: int = 0) -> _Inputs:
    """What a request tower reads: requests (``variants``: :func:`_catalog_requests`), weighted
    to half of the texts, and item texts, so that free text unlike the catalogue's attributes
    keeps its place too."""
    requests = _catalog_requests(ckpt, data, variants=variants, seed=seed)
    if not requests:
        raise CheckpointError(
            "pruning a request tower needs requests: the catalogue's items have no genres, category, "
            "tags or brand to make them from; prune with --tower both instead"
        )
    texts = list(ckpt.catalog.texts)
    return _Inputs(requests * max(1, len(texts) // len(requests)) + texts)


def prune_checkpoint(
    checkpoint: Path,
    out: Path,
    config: PruneConfig,
    *,
    data: str | None = None,
    teacher: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PruneResult:
    """Prune ``checkpoint``'s encoders and write the result as a new checkpoint at ``out``.

    ``teacher``: distil towards that checkpoint's towers instead of ``checkpoint``'s own, so
    that a pruned checkpoint can be distilled further from the model it was pruned from (with
    ``ratio`` 0 and no ``layers``; a request tower it has stays the one distilled)."""
    import copy

    started = time.perf_counter()
    if config.distill_steps and not data:
        raise CheckpointError(
            "--distill-steps needs --data: distillation trains on the training split, and the probe "
            "set is kept for measuring fidelity"
        )
    torch.manual_seed(config.seed)
    ckpt = _unpruned(Path(checkpoint))
    teacher_model = copy.deepcopy(ckpt.model) if teacher is None else _teacher(Path(teacher), ckpt)
    teacher_model.eval()
    bytes_before = _weights_bytes(Path(checkpoint))
    plan = _plan(ckpt, teacher_model, config, data, own_request=teacher is not None)
    reports = [_prune_tower(step, ckpt, teacher_model, config, progress) for step in plan]
    meta = dict(ckpt.meta)
    meta["pruning"] = {
        "from": str(Path(checkpoint).resolve()),
        "config": {**asdict(config), "towers": str(config.towers)},
        "data": data,
        "teacher": str(Path(teacher).resolve()) if teacher is not None else None,
        "towers": [asdict(r) for r in reports],
    }
    save_checkpoint(
        Path(out), ckpt.model, tokenizer_json=ckpt.tokenizer_json, catalog=ckpt.catalog, probe=ckpt.probe,
        meta=meta, overwrite=overwrite,
    )  # fmt: skip
    return PruneResult(
        Path(out), reports, bytes_before, _weights_bytes(Path(out)), time.perf_counter() - started
    )


def _unpruned(checkpoint: Path) -> Checkpoint:
    """``checkpoint`` loaded for pruning; refused when its heads were pruned already."""
    ckpt = load_checkpoint(checkpoint, attn_implementation="eager")
    model = ckpt.model
    towers = (model.item, model.user, model.request)
    for encoder in {id(t.encoder): t.encoder for t in towers if isinstance(t, TextTower)}.values():
        if encoder.config.pruned_heads:
            raise CheckpointError(
                f"{checkpoint} was pruned already; prune the original checkpoint with the ratio you want"
            )
    return ckpt


@dataclass
class _Step:
    """One tower to prune: its name, the tower, its teacher, its inputs and their tokenizer."""

    name: str
    tower: TextTower
    reference: TextTower
    inputs: _Inputs
    tokenizer: TextTokenizer


def _tokenizer(ckpt: Checkpoint, max_length: int) -> TextTokenizer:
    return TextTokenizer(
        Tokenizer.from_str(ckpt.tokenizer_json), max_length=max_length, pad_token=ckpt.config.pad_token
    )


def _plan(
    ckpt: Checkpoint, teacher_model: Any, config: PruneConfig, data: str | None, *, own_request: bool
) -> list[_Step]:
    """Which towers ``config.towers`` prunes in this kind of model, each with its inputs."""
    import copy

    model, mc = ckpt.model, ckpt.config
    sequence = mc.user_tower is UserTowerKind.SEQUENCE
    plan: list[_Step] = []
    if sequence and config.towers is TowerChoice.USER:
        # The user side of a sequence model is its (small) history tower and the free-text
        # requests its item tower reads. A copy of the item tower becomes a request tower of
        # its own and is pruned alone: items, their index and history users stay as they were.
        if model.request is None or not own_request:
            model.request = copy.deepcopy(model.item)
        inputs = _request_inputs(ckpt, data, variants=config.request_variants, seed=config.seed)
        plan.append(
            _Step("request", model.request, teacher_model.item, inputs, _tokenizer(ckpt, mc.user_max_length))
        )
    elif sequence or mc.shared_towers or config.towers is not TowerChoice.USER:
        item_inputs = _item_inputs(ckpt, with_requests=sequence)
        length = mc.item_max_length if not mc.shared_towers else mc.user_max_length
        name = "item" if not mc.shared_towers else "shared"
        plan.append(_Step(name, model.item, teacher_model.item, item_inputs, _tokenizer(ckpt, length)))
    if not sequence and not mc.shared_towers and config.towers is not TowerChoice.ITEM:
        pairs = _user_pairs(ckpt, data, config.seed)
        plan.append(
            _Step("user", model.user, teacher_model.user, pairs, _tokenizer(ckpt, mc.user_max_length))
        )
    return plan


def _prune_tower(
    step: _Step, ckpt: Checkpoint, teacher_model: Any, config: PruneConfig, progress: bool
) -> TowerReport:
    """Prune one tower, measure its agreement with the teacher, distil, measure again."""
    rng = random.Random(config.seed)
    probe_requests = list((ckpt.probe or {}).get("requests", []))
    if step.name == "request" and probe_requests:  # held out of distillation (above)
        held = rng.sample(probe_requests, min(256, len(probe_requests)))
    else:
        held = rng.sample(step.inputs.texts, min(256, len(step.inputs.texts)))
    teacher_items = teacher_model.item if step.inputs.targets is not None else None
    batches = _Batches(step.inputs, step.tokenizer, teacher_items, config.batch_size, config.seed)
    catalog = None
    if step.name == "request":  # requests are distilled towards the teacher's catalogue ranking
        from recsys_infer.toolchain.train.sequence import embed_items

        tok = _tokenizer(ckpt, ckpt.config.item_max_length)
        catalog = embed_items(teacher_model.item, tok, ckpt.catalog.texts, progress=progress)
    logger.info("pruning the %s tower: ratio %.2f, %d layers", step.name, config.ratio, config.layers)
    tower, reference = step.tower, step.reference
    report = prune_tower(tower, reference, batches, config, step.name)
    report.agreement_before_distill = _agreement(tower, reference, batches, held, catalog, config)
    if config.distill_steps:
        report.distill_losses = distill(
            tower, reference, batches, config, progress, train_head=step.name == "request",
            catalog=catalog,
        )  # fmt: skip
        report.agreement_after_distill = _agreement(tower, reference, batches, held, catalog, config)
    return report


def _teacher(path: Path, student: Checkpoint) -> Any:
    """``path``'s model, to distil ``student`` towards: refused unless both read the same texts
    the same way (kind, tokenizer, catalogue)."""
    ckpt = load_checkpoint(path, attn_implementation="eager")
    for what, mine, theirs in (
        ("user tower kind", student.config.user_tower, ckpt.config.user_tower),
        ("tokenizer", student.tokenizer_json, ckpt.tokenizer_json),
        ("catalogue", list(student.catalog.ids), list(ckpt.catalog.ids)),
    ):
        if mine != theirs:
            raise CheckpointError(
                f"the teacher {path} has another {what} than the checkpoint; pass the checkpoint "
                "this one was pruned from"
            )
    return ckpt.model


def _weights_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))
