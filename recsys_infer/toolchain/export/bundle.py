"""Export a checkpoint to a bundle: ONNX towers verified against PyTorch, then the item index.

Nothing is left at ``--out`` unless every step passed: the bundle is assembled in a temporary
directory beside it and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import random
import time
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from recsys_infer.enums import Device, Space, UserTowerKind
from recsys_infer.errors import ConfigError, ExportError, ParityError
from recsys_infer.ranking import cosines, recall_at_k
from recsys_infer.runtime.bundle import atomic_directory, sha256_file, write_manifest
from recsys_infer.runtime.catalog import Catalog
from recsys_infer.runtime.encoder import OnnxEncoder
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.index import ExactIndex, HnswIndex, HnswParams
from recsys_infer.runtime.manifest import (
    CATALOG,
    ITEM_IDS,
    ITEM_INDEX,
    ITEM_OFFSETS,
    ITEM_TOWER,
    ITEM_VECTORS,
    MANIFEST,
    PROBE,
    REQUEST_TOWER,
    SCHEMA_VERSION,
    SHARED_TOWER,
    TOKENIZER,
    USER_SEQUENCE,
    USER_TOWER,
    CatalogSpec,
    CompressionStep,
    FusionSpec,
    IndexSpec,
    Manifest,
    ProbeSpec,
    Provenance,
    ReferenceSpec,
    TokenizerSpec,
    TowerSpec,
)
from recsys_infer.runtime.providers import create_session
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.runtime.users import SequenceUserEncoder, add_offsets, trained_block
from recsys_infer.toolchain.export.fidelity import check_answers, check_gate, measure_fidelity, reference_of
from recsys_infer.toolchain.export.fusion import ProbeQueries, choose_fusion
from recsys_infer.toolchain.train.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint
from recsys_infer.toolchain.train.model import JoinedHead, SequenceTower, TextTower
from recsys_infer.version import __version__

logger = logging.getLogger(__name__)

OPSET = 17
_ODD_TEXTS = (
    "x",
    "ok",
    "Misérables, Les (1995). Genres: Drama, War.",
    "🎬🍿 night — \u00e9t\u00e9 \u4e2d\u6587 tabs\tand\nnewlines",
    "UPPER case AND lower case, punctuation!!! ??? ...",
)


@dataclass(frozen=True)
class ExportConfig:
    """How to export and verify a checkpoint and index its catalogue (the ``[export]`` and
    ``[index]`` tables of a recipe)."""

    opset: int = OPSET
    max_abs_diff: float = 1e-4
    min_cosine: float = 0.9999
    parity_texts: int = 48
    hnsw: HnswParams = field(default_factory=HnswParams)
    index_threads: int = 1
    include_probe: bool = True
    # A sequence model's item vectors carry the pretrained text space beside the trained one,
    # weighed per query kind on the validation probe (runtime.manifest.FusionSpec). False: the
    # trained space alone, as bundles were before (requests then read the trained head).
    text_space: bool = True

    def __post_init__(self) -> None:
        if not 14 <= self.opset <= 21:
            raise ConfigError(f"opset must be between 14 and 21, got {self.opset}")
        if self.max_abs_diff <= 0 or not 0 < self.min_cosine <= 1:
            raise ConfigError("max_abs_diff must be positive and min_cosine in (0, 1]")
        if self.parity_texts < 4:
            raise ConfigError(f"parity_texts must be at least 4, got {self.parity_texts}")
        if self.index_threads < 1:
            raise ConfigError(f"index_threads must be positive, got {self.index_threads}")


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe TOML file as a dict, with a clear error for a bad file."""
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ExportError(f"recipe {path} not found; see export/default.toml for an example") from None
    except tomllib.TOMLDecodeError as e:
        raise ExportError(f"recipe {path} is not valid TOML: {e}") from e


def export_config_from_recipe(recipe: dict[str, Any], *, source: str = "recipe") -> ExportConfig:
    exp = dict(recipe.get("export", {}))
    idx = dict(recipe.get("index", {}))
    allowed = {f.name for f in fields(ExportConfig)} - {"hnsw", "index_threads"}
    unknown = set(exp) - allowed
    unknown_idx = set(idx) - {"M", "ef_construction", "ef_search", "threads"}
    if unknown or unknown_idx:
        raise ExportError(
            f"{source}: unknown keys {sorted(unknown | unknown_idx)}; [export] takes {sorted(allowed)}, "
            "[index] takes M, ef_construction, ef_search, threads"
        )
    threads = idx.pop("threads", 1)
    try:
        return ExportConfig(**exp, hnsw=HnswParams(**idx), index_threads=threads)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{source}: {e}") from e


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    parity: dict[str, Any]
    index_recall_at_10: float
    seconds: dict[str, float]
    files: dict[str, int]
    fidelity: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bundle"] = str(self.bundle)
        return data


def _export_tower(tower: TextTower, path: Path, opset: int, tokenizer: TextTokenizer) -> None:
    # Two texts of different lengths, so the traced graph sees padding.
    example = tokenizer(["a short example", "a somewhat longer example text to trace the tower with"])
    ids = torch.from_numpy(example["input_ids"])
    mask = torch.from_numpy(example["attention_mask"])
    tower.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False): its graph is the one ONNX Runtime's
        # transformer optimiser can fuse (attention, layer norm, GELU).
        torch.onnx.export(
            tower,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    width = int(tower.encoder.config.hidden_size)
    _fix_width_and_check(path, 2 * width if isinstance(tower.head, JoinedHead) else width)


def _fix_width_and_check(path: Path, width: int) -> None:
    import onnx

    # The exporter names the output's second axis after an internal node; it is the fixed width.
    model = onnx.load(str(path))
    axis = model.graph.output[0].type.tensor_type.shape.dim[1]
    axis.Clear()
    axis.dim_value = width
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _pick_parity_texts(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """Texts of many lengths: shortest, longest, evenly spread quantiles, and a few odd ones."""
    unique = sorted(set(texts), key=len)
    if not unique:
        return list(_ODD_TEXTS)
    take = max(1, n - len(_ODD_TEXTS) - 1)
    positions = np.linspace(0, len(unique) - 1, num=min(take, len(unique))).round().astype(int)
    chosen = [unique[i] for i in sorted(set(positions.tolist()))]
    longest = " ; ".join(random.Random(seed).sample(unique, min(len(unique), 40)))
    return [*chosen, longest, *_ODD_TEXTS]


def _torch_encode(
    tower: TextTower, tokenizer: TextTokenizer, texts: list[str], batch: int = 16
) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            feats = tokenizer(texts[start : start + batch])
            out.append(
                tower(torch.from_numpy(feats["input_ids"]), torch.from_numpy(feats["attention_mask"])).numpy()
            )
    return np.concatenate(out).astype(np.float32)


def _compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    return {"max_abs_diff": float(np.max(np.abs(reference - other))), **cosines(reference, other)}


def check_parity(tower: TextTower, encoder: OnnxEncoder, texts: list[str]) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on ``texts``: in mixed-length batches and one text at a time."""
    reference = _torch_encode(tower, encoder.tokenizer, texts)
    batched = encoder.encode(texts)
    every = max(1, len(texts) // 8)  # about eight texts, one at a time (no padding at all)
    singles = np.concatenate([encoder.encode([t]) for t in texts[::every]])
    a, b = _compare(reference, batched), _compare(reference[::every], singles)
    lengths = encoder.tokenizer.count_tokens(texts)
    return {
        "texts": len(texts),
        "token_lengths": {"min": min(lengths), "max": max(lengths)},
        "max_abs_diff": max(a["max_abs_diff"], b["max_abs_diff"]),
        "min_cosine": min(a["min_cosine"], b["min_cosine"]),
        "mean_cosine": a["mean_cosine"],
    }


def _user_texts(ckpt: Checkpoint) -> list[str]:
    fmt = ckpt.config.user_input
    catalog = ckpt.catalog
    texts = []
    probe = ckpt.probe or {}
    requests = list(probe.get("requests", []))
    for i, history in enumerate(probe.get("histories", [])[:200]):
        known = [catalog.get(h).text for h in history if h in catalog]
        request = requests[i] if i % 4 == 0 and i < len(requests) else None
        if known or request:
            texts.append(fmt.render(known, request))
    if not texts:  # no probe: histories from catalogue order
        all_texts = catalog.texts
        texts = [fmt.render(all_texts[i : i + 1 + i % 7]) for i in range(0, min(len(all_texts), 400), 5)]
    return texts


def _export_sequence(tower: SequenceTower, path: Path, opset: int, dim: int) -> None:
    history = torch.nn.functional.normalize(torch.randn(2, 5, dim), dim=-1)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    tower.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (history, mask),
            str(path),
            input_names=["history", "history_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "history": {0: "batch", 1: "length"},
                "history_mask": {0: "batch", 1: "length"},
                "embedding": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    _fix_width_and_check(path, dim)


def _pick_histories(histories: list[list[str]], n: int) -> list[list[str]]:
    """Histories of many lengths (1 to the longest), shortest and longest included."""
    if not histories:
        return []
    by_length = sorted(histories, key=len)
    positions = np.linspace(0, len(by_length) - 1, num=min(n, len(by_length))).round().astype(int)
    picked = [by_length[i] for i in sorted(set(positions.tolist()))]
    return [by_length[-1][-1:], *picked]  # a one-item history too


def check_sequence_parity(
    tower: SequenceTower, encoder: SequenceUserEncoder, histories: list[list[str]], vectors_of: Any
) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on history vectors: mixed-length batches and one at a time."""
    reference = []
    with torch.no_grad():
        for start in range(0, len(histories), 16):
            chunk = histories[start : start + 16]
            length = min(tower.max_history, max(len(h) for h in chunk))
            batch = torch.zeros(len(chunk), length, tower.output.out_features)
            mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for row, h in enumerate(chunk):
                recent = h[-length:]
                stored = vectors_of(recent)
                own = stored if encoder.fusion is None else trained_block(stored, encoder.fusion)
                batch[row, length - len(recent) :] = torch.from_numpy(own)
                mask[row, length - len(recent) :] = 1
            reference.append(tower(batch, mask).numpy())
    ref = np.concatenate(reference)
    batched = encoder.tower_vectors(histories)
    every = max(1, len(histories) // 8)
    singles = np.concatenate([encoder.tower_vectors([h]) for h in histories[::every]])
    a, b = _compare(ref, batched), _compare(ref[::every], singles)
    lengths = [min(len(h), tower.max_history) for h in histories]
    return {
        "histories": len(histories),
        "history_lengths": {"min": min(lengths), "max": max(lengths)},
        "max_abs_diff": max(a["max_abs_diff"], b["max_abs_diff"]),
        "min_cosine": min(a["min_cosine"], b["min_cosine"]),
        "mean_cosine": a["mean_cosine"],
    }


def _require(parity: dict[str, Any], name: str, config: ExportConfig) -> None:
    p = parity[name]
    if p["max_abs_diff"] > config.max_abs_diff or p["min_cosine"] < config.min_cosine:
        raise ParityError(
            f"the exported {name} tower disagrees with PyTorch: max abs diff "
            f"{p['max_abs_diff']:.2e} (allowed {config.max_abs_diff:.0e}), min cosine "
            f"{p['min_cosine']:.6f} (required {config.min_cosine}). No bundle was written. "
            f"Check the encoder exports with opset {config.opset}, or loosen [export] "
            "max_abs_diff/min_cosine in the recipe."
        )


def export_bundle(
    checkpoint: Path,
    out: Path,
    *,
    config: ExportConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    reference: Path | None = None,
    max_overlap_drop: float | None = None,
) -> ExportResult:
    """Export ``checkpoint`` into a verified bundle at ``out``.

    A pruned checkpoint's bundle is measured against ``reference``, the bundle of the unpruned
    model (fidelity in the manifest, as for every compression step); ``max_overlap_drop`` then
    refuses a result whose overlap@10 with it, for users or requests, falls below
    ``1 - max_overlap_drop``.
    """
    config = config or ExportConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ckpt = load_checkpoint(Path(checkpoint), attn_implementation="eager")
    pruning = ckpt.meta.get("pruning")
    if pruning and reference is None:
        raise ExportError(
            f"{checkpoint} is pruned, and a compressed bundle needs its measured cost: pass --reference "
            f"with the bundle of the unpruned checkpoint ({pruning.get('from')}), made by "
            "`recsys-infer export` of that checkpoint"
        )
    timings["load_checkpoint"] = time.perf_counter() - t0
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        files = _export_graphs(ckpt, tmp, config)
        timings["export_onnx"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        checked = _check_and_encode(ckpt, tmp, files, config, progress)
        timings["parity_and_encode_catalog"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = HnswIndex.build(checked.vectors, config.hnsw, threads=config.index_threads, progress=progress)
        index.save(tmp / ITEM_INDEX)
        timings["build_index"] = time.perf_counter() - t0
        by_kind: dict[str, float] = {}
        if checked.query_kinds:
            by_kind = _choose_ef(index, checked.vectors, checked.query_kinds)
        recall, n_queries = _index_recall(index, checked.vectors, checked.queries)
        _write_catalog_files(ckpt, tmp, config)
        manifest = write_manifest(
            tmp, _manifest(ckpt, files, checked, index, config, recall, n_queries, by_kind)
        )
        check_answers(tmp, "the exported bundle")
        fidelity = None
        if reference is not None:
            fidelity = _measure_against(reference, tmp, manifest, pruning, max_overlap_drop)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    return ExportResult(
        bundle=Path(out),
        parity=checked.parity,
        index_recall_at_10=recall,
        seconds={k: round(v, 2) for k, v in timings.items()},
        files=sizes,
        fidelity=fidelity,
    )


def _tokenizer(ckpt: Checkpoint, max_length: int) -> TextTokenizer:
    return TextTokenizer(
        Tokenizer.from_str(ckpt.tokenizer_json), max_length=max_length, pad_token=ckpt.config.pad_token
    )


def two_spaces(ckpt: Checkpoint, config: ExportConfig) -> bool:
    """Whether the bundle keeps the text space beside the trained one (a sequence model, asked
    for, without learned item offsets: those live in the trained space and would unbalance it)."""
    if not config.text_space or ckpt.config.user_tower is not UserTowerKind.SEQUENCE:
        return False
    if ckpt.model.item_offsets is not None:
        logger.warning("this checkpoint learned item offsets: exporting its trained space alone")
        return False
    return True


def _text_towers(ckpt: Checkpoint, config: ExportConfig) -> tuple[TextTower, TextTower]:
    """The item and request towers as exported: joined to the text space when it is kept."""
    item, request = ckpt.model.item, ckpt.model.request_tower
    if two_spaces(ckpt, config):
        return item.joined(), request.joined()
    return item, request


def _export_graphs(ckpt: Checkpoint, tmp: Path, config: ExportConfig) -> dict[str, str]:
    """Each tower's ONNX graph and the tokenizer into ``tmp``; the graph file of each tower."""
    mc = ckpt.config
    dim = int(ckpt.model.item.encoder.config.hidden_size)
    item_tokenizer = _tokenizer(ckpt, mc.item_max_length)
    if mc.user_tower is UserTowerKind.SEQUENCE:
        own_request = ckpt.model.request is not None
        request_file = REQUEST_TOWER if own_request else ITEM_TOWER
        files = {"user": USER_SEQUENCE, "item": ITEM_TOWER, "request": request_file}
        item, request = _text_towers(ckpt, config)
        _export_tower(item, tmp / ITEM_TOWER, config.opset, item_tokenizer)
        if own_request:
            _export_tower(request, tmp / request_file, config.opset, item_tokenizer)
        _export_sequence(ckpt.model.user, tmp / USER_SEQUENCE, config.opset, dim)
    elif mc.shared_towers:
        files = {"user": SHARED_TOWER, "item": SHARED_TOWER}
        _export_tower(ckpt.model.user, tmp / SHARED_TOWER, config.opset, item_tokenizer)
    else:
        files = {"user": USER_TOWER, "item": ITEM_TOWER}
        _export_tower(ckpt.model.user, tmp / USER_TOWER, config.opset, item_tokenizer)
        _export_tower(ckpt.model.item, tmp / ITEM_TOWER, config.opset, item_tokenizer)
    (tmp / TOKENIZER).write_text(ckpt.tokenizer_json, encoding="utf-8")
    return files


@dataclass
class _Checked:
    """What the parity checks leave: their record, the item vectors and probe user vectors."""

    parity: dict[str, Any]
    vectors: np.ndarray
    queries: np.ndarray
    has_offsets: bool
    fusion: FusionSpec | None = None
    # A two-space bundle's probe queries by kind ("history", "request", "history + request"):
    # each kind sits differently in the joined space, so the index is checked on each.
    query_kinds: dict[str, np.ndarray] = field(default_factory=dict)


def _check_and_encode(
    ckpt: Checkpoint, tmp: Path, files: dict[str, str], config: ExportConfig, progress: bool
) -> _Checked:
    """Every graph against PyTorch (refused beyond tolerance), then the catalogue's vectors."""
    mc = ckpt.config
    sequence = mc.user_tower is UserTowerKind.SEQUENCE
    joined = two_spaces(ckpt, config)
    dim = int(ckpt.model.item.encoder.config.hidden_size)
    width = 2 * dim if joined else dim  # of the item (and request) vectors
    item_tower, request_tower = _text_towers(ckpt, config)
    catalog: Catalog = ckpt.catalog
    probe = ckpt.probe or {}
    sessions = {f: create_session(tmp / f, Device.CPU) for f in set(files.values())}
    lengths = {"user": mc.user_max_length, "item": mc.item_max_length, "request": mc.user_max_length}
    text = {
        name: OnnxEncoder(sessions[file], _tokenizer(ckpt, lengths[name]), dim=width)
        for name, file in files.items()
        if not (sequence and name == "user")
    }
    parity: dict[str, Any] = {
        "reference": "PyTorch fp32 (this checkpoint)",
        "tolerance": {"max_abs_diff": config.max_abs_diff, "min_cosine": config.min_cosine},
        "item": check_parity(
            item_tower, text["item"], _pick_parity_texts(catalog.texts, config.parity_texts)
        ),
    }
    user_texts = [] if sequence else _user_texts(ckpt)
    if sequence:
        requests = list(probe.get("requests", [])) or [t[:60] for t in catalog.texts[:50]]
        picked = _pick_parity_texts(requests, config.parity_texts)
        parity["request"] = check_parity(request_tower, text["request"], picked)
    else:
        picked = _pick_parity_texts(user_texts, config.parity_texts)
        parity["user"] = check_parity(ckpt.model.user, text["user"], picked)
    for name in ("item", "request" if sequence else "user"):
        _require(parity, name, config)

    vectors = text["item"].encode(catalog.texts, progress=progress)
    offsets = ckpt.model.offset_matrix() if sequence else None
    if offsets is not None:
        # The learned per-item offsets join the stored vectors (items unseen in training
        # have none); the item graph itself reads text alone, as a new item's would be.
        np.save(tmp / ITEM_OFFSETS, offsets.numpy().astype(np.float32), allow_pickle=False)
        vectors = add_offsets(vectors, offsets.numpy())
    np.save(tmp / ITEM_VECTORS, vectors, allow_pickle=False)
    if not sequence:
        return _Checked(parity, vectors, text["user"].encode(user_texts[:200]), False)
    label = {item_id: i for i, item_id in enumerate(catalog.ids)}

    def vectors_of(item_ids: Sequence[str]) -> np.ndarray:
        return np.asarray(vectors[[label[i] for i in item_ids]])

    seq_tower: SequenceTower = ckpt.model.user
    fusion = FusionSpec(dims=(dim, dim)) if joined else None

    def user_encoder(fusion: FusionSpec | None) -> SequenceUserEncoder:
        return SequenceUserEncoder(
            sessions[files["user"]],
            vectors_of,
            dim=dim,
            max_history=seq_tower.max_history,
            requests=text["request"],
            fusion=fusion,
        )

    histories = [[i for i in h if i in label] for h in probe.get("histories", [])]
    histories = [h for h in histories if h] or [catalog.ids[i : i + 1 + i % 50] for i in range(0, 400, 7)]
    parity["user"] = check_sequence_parity(
        seq_tower, user_encoder(fusion), _pick_histories(histories, config.parity_texts), vectors_of
    )
    _require(parity, "user", config)
    if fusion is not None:
        fusion = _choose_fusion(ckpt, user_encoder(fusion), vectors, label)
    users = user_encoder(fusion)
    history_queries = users.encode_histories(histories[:200])
    kinds = {} if fusion is None else _query_kinds(ckpt, users, history_queries)
    return _Checked(parity, vectors, history_queries, offsets is not None, fusion, kinds)


def _probe_examples(ckpt: Checkpoint) -> list[tuple[list[str], str, str | None]]:
    """The probe's validation users as (history, target, request made of the target), with
    ids the catalogue no longer holds dropped, and users left with no history skipped."""
    from recsys_infer.data.probe import request_from_item

    probe, catalog = ckpt.probe or {}, ckpt.catalog
    known = set(catalog.ids)
    examples = []
    for history, target in zip(probe.get("histories", []), probe.get("targets", []), strict=False):
        kept = [i for i in history if i in known]
        if kept and target in known:
            examples.append((kept, target, request_from_item(catalog.get(target))))
    return examples


def _query_kinds(
    ckpt: Checkpoint, users: SequenceUserEncoder, history_queries: np.ndarray
) -> dict[str, np.ndarray]:
    """Up to 200 probe queries of each kind a two-space bundle answers."""
    from recsys_infer.runtime.types import Query

    mixed = [Query(tuple(h), r) for h, _, r in _probe_examples(ckpt) if r][:200]
    kinds = {"history": history_queries}
    if mixed:
        kinds["request"] = users.encode_requests([q.text or "" for q in mixed])
        kinds["history + request"] = users.encode(mixed)
    return kinds


def _choose_fusion(
    ckpt: Checkpoint, users: SequenceUserEncoder, vectors: np.ndarray, label: dict[str, int]
) -> FusionSpec:
    """The two spaces' weights, chosen on the probe's validation users (see :mod:`.fusion`)."""
    examples = _probe_examples(ckpt)
    if users.fusion is None:  # pragma: no cover - called for two-space bundles only
        raise ExportError("choosing fusion weights needs a two-space user encoder")
    if not examples:
        logger.warning("the checkpoint has no validation probe: fusion weights left at their defaults")
        return replace(users.fusion, chosen_on={"split": "none: the checkpoint has no probe"})
    queries = ProbeQueries(
        histories=[[label[i] for i in h] for h, _, _ in examples],
        targets=[label[t] for _, t, _ in examples],
        requests=[r for _, _, r in examples],
    )
    tower = users.tower_vectors([h for h, _, _ in examples])
    texts = [r for r in queries.requests if r]
    request_vectors = users.requests.encode(texts) if texts else np.zeros((0, vectors.shape[1]), np.float32)
    return choose_fusion(
        queries,
        vectors,
        tower,
        request_vectors,
        trained_dim=users.fusion.dims[0],
        max_history=users.max_history,
    )


def _write_catalog_files(ckpt: Checkpoint, tmp: Path, config: ExportConfig) -> None:
    (tmp / ITEM_IDS).write_text(json.dumps(ckpt.catalog.ids, ensure_ascii=False), encoding="utf-8")
    ckpt.catalog.write_jsonl(tmp / CATALOG)
    if config.include_probe and ckpt.probe:
        (tmp / PROBE).write_text(json.dumps(ckpt.probe, ensure_ascii=False), encoding="utf-8")


def _towers(ckpt: Checkpoint, files: dict[str, str], width: int) -> dict[str, TowerSpec]:
    """``width``: of the item vectors (both spaces' in a two-space bundle); a sequence tower
    emits the trained space's vectors."""
    mc = ckpt.config
    dim = int(ckpt.model.item.encoder.config.hidden_size)

    def text(name: str, max_length: int, **more: Any) -> TowerSpec:
        return TowerSpec(file=files[name], max_length=max_length, dim=width, pooling=mc.pooling, **more)

    towers = {"item": text("item", mc.item_max_length, head=ckpt.model.item.head is not None)}
    if mc.user_tower is UserTowerKind.SEQUENCE and mc.sequence is not None:
        seq = mc.sequence
        towers["user"] = TowerSpec(
            file=files["user"],
            max_length=seq.max_history,
            dim=dim,
            pooling=mc.pooling,
            kind="sequence",
            hidden=seq.hidden,
            layers=seq.layers,
            heads=seq.heads,
        )
        towers["request"] = text("request", mc.user_max_length)
    else:
        towers["user"] = text("user", mc.user_max_length)
    return towers


def _manifest(
    ckpt: Checkpoint,
    files: dict[str, str],
    checked: _Checked,
    index: HnswIndex,
    config: ExportConfig,
    recall: float,
    n_queries: int,
    recall_by_kind: dict[str, float] | None = None,
) -> Manifest:
    """The new bundle's manifest (its ``files`` are filled in when it is written)."""
    mc, catalog, probe = ckpt.config, ckpt.catalog, ckpt.probe
    dim = int(checked.vectors.shape[1])
    towers = _towers(ckpt, files, dim)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        opset=config.opset,
        towers=towers,
        user_tower=str(mc.user_tower),
        shared_towers=mc.shared_towers,
        tokenizer=TokenizerSpec(TOKENIZER, mc.pad_token),
        user_input=mc.user_input,
        index=IndexSpec(
            file=ITEM_INDEX,
            vectors_file=ITEM_VECTORS,
            item_ids_file=ITEM_IDS,
            space=Space.IP,
            dim=dim,
            count=len(catalog),
            capacity=index.capacity,
            M=config.hnsw.M,
            ef_construction=config.hnsw.ef_construction,
            ef_search=index.params.ef_search,
            build_threads=config.index_threads,
            built_with="item tower of this bundle",
            offsets_file=ITEM_OFFSETS if checked.has_offsets else None,
        ),
        catalog=CatalogSpec(CATALOG, len(catalog)),
        probe=(
            ProbeSpec(
                PROBE,
                probe.get("split", "validation"),
                len(probe.get("histories", [])),
                len(probe.get("requests", [])),
            )
            if config.include_probe and probe
            else None
        ),
        parity=checked.parity,
        fidelity={
            "reference": "this checkpoint in PyTorch fp32 with exact search",
            **{f"{name}_min_cosine": checked.parity[name]["min_cosine"] for name in towers},
            "index_recall_at_10_vs_exact": recall,
            "index_recall_queries": n_queries,
            **({"index_recall_at_10_by_query": recall_by_kind} if recall_by_kind else {}),
        },
        provenance=_provenance(ckpt),
        fusion=checked.fusion,
    )


def _measure_against(
    reference: Path,
    bundle: Path,
    manifest: Manifest,
    pruning: dict[str, Any] | None,
    max_drop: float | None,
) -> dict[str, Any]:
    """Fidelity of the fresh bundle against ``reference``, gated, recorded in its manifest."""
    from recsys_infer.runtime.bundle import read_manifest

    ref = reference_of(reference, read_manifest(reference), None).resolve()
    fidelity = measure_fidelity(
        Engine.load(ref, device=Device.CPU, exact=True, verify=False),
        Engine.load(bundle, device=Device.CPU, exact=True, verify=False),
    )
    fidelity["reference"] = str(ref)
    check_gate(
        fidelity,
        max_drop,
        "the exported model brings",
        "Prune less, or distill longer (--distill-steps).",
    )
    steps = (CompressionStep("prune", fidelity, {k: v for k, v in (pruning or {}).items() if k != "step"}),)
    write_manifest(
        bundle,
        replace(
            manifest,
            reference=ReferenceSpec(str(ref), sha256_file(ref / MANIFEST)),
            fidelity={**manifest.fidelity, **fidelity, "measured_by": "recsys-infer export --reference"},
            compression=steps if pruning else manifest.compression,
        ),
    )
    return fidelity


#: The recall@10 against exact search that every kind of probe query must reach before a
#: two-space bundle's ``ef_search`` stops widening, and the widest it goes.
EF_TARGET_RECALL = 0.99
EF_MAX = 1024


def _choose_ef(index: HnswIndex, vectors: np.ndarray, kinds: dict[str, np.ndarray]) -> dict[str, float]:
    """Widen the index's ``ef_search`` (doubling from the configured floor) until each kind of
    probe query finds ``EF_TARGET_RECALL`` of its exact top 10, or ``EF_MAX``; the index keeps
    the chosen width. In the joined space a request reads one block of each item vector, and
    a graph built on whole vectors finds its neighbours less readily than a history's (on
    ml-latest-small at ef 64 it cost requests 0.039 Recall@10 of exact search's 0.31)."""
    ef = index.params.ef_search
    while True:
        index.set_ef_search(ef)
        by_kind = {kind: _index_recall(index, vectors, q)[0] for kind, q in kinds.items() if len(q)}
        if min(by_kind.values()) >= EF_TARGET_RECALL or ef * 2 > EF_MAX:
            logger.info("ef_search %d: index recall@10 by query kind %s", ef, by_kind)
            short = {kind: r for kind, r in by_kind.items() if r < EF_TARGET_RECALL}
            if short:
                logger.warning(
                    "the HNSW index finds only %s of exact search's top 10 at ef_search %d, the widest "
                    "export tries (target %.2f): such queries lose quality to the index. Evaluate with and "
                    "without --exact to see how much; a larger M (export --recipe, [index] M) may help.",
                    ", ".join(f"{r:.3f} for {kind} queries" for kind, r in short.items()),
                    ef,
                    EF_TARGET_RECALL,
                )
            return by_kind
        ef *= 2


def _index_recall(index: HnswIndex, vectors: np.ndarray, queries: np.ndarray) -> tuple[float, int]:
    """Recall@10 of the HNSW index against exact search, for user vectors of the probe set."""
    k = min(10, len(index))
    approx, _ = index.search(queries, k)
    exact, _ = ExactIndex(vectors).search(queries, k)
    return round(recall_at_k(approx, exact), 4), int(queries.shape[0])


def _provenance(ckpt: Checkpoint) -> Provenance:
    import onnx
    import onnxruntime
    import transformers

    return Provenance(
        checkpoint=str(ckpt.path.resolve()),
        checkpoint_sha256=sha256_file(ckpt.path / CHECKPOINT_FILE),
        encoder={
            "name": ckpt.config.encoder,
            "license": ckpt.config.encoder_license,
            "revision": ckpt.config.encoder_revision,
            "pooling": str(ckpt.config.pooling),
        },
        data=ckpt.meta.get("data", {}),
        training={k: v for k, v in ckpt.meta.get("training", {}).items() if k != "losses"},
        versions={
            "recsys_infer": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    )
