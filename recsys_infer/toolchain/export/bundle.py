"""Export a checkpoint to a bundle: ONNX towers verified against PyTorch, then the item index.

Nothing is left at ``--out`` unless every step passed: the bundle is assembled in a temporary
directory beside it and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from recsys_infer.enums import Device, Space, UserTowerKind
from recsys_infer.errors import ExportError
from recsys_infer.runtime.bundle import atomic_directory, sha256_file, write_manifest
from recsys_infer.runtime.catalog import Catalog
from recsys_infer.runtime.encoder import OnnxEncoder
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.index import HnswIndex
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
    SeenSpec,
    TokenizerSpec,
    TowerSpec,
)
from recsys_infer.runtime.providers import create_session
from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.runtime.users import SequenceUserEncoder, add_offsets
from recsys_infer.toolchain.export.fidelity import check_answers, check_gate, measure_fidelity, reference_of
from recsys_infer.toolchain.export.fusion import ProbeQueries, choose_fusion, choose_seen_penalty
from recsys_infer.toolchain.export.onnx_export import export_sequence, export_tower
from recsys_infer.toolchain.export.parity import (
    check_parity,
    check_sequence_parity,
    history_texts,
    pick_histories,
    pick_parity_texts,
    require_parity,
)
from recsys_infer.toolchain.export.recipe import ExportConfig
from recsys_infer.toolchain.export.search_width import choose_ef, index_recall
from recsys_infer.toolchain.train.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint
from recsys_infer.toolchain.train.model import SequenceTower, TextTower
from recsys_infer.version import __version__

logger = logging.getLogger(__name__)


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
            by_kind = choose_ef(index, checked.vectors, checked.query_kinds)
        recall, n_queries = index_recall(index, checked.vectors, checked.queries)
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
    for). Learned item offsets join the trained block only (:func:`add_offsets`)."""
    return config.text_space and ckpt.config.user_tower is UserTowerKind.SEQUENCE


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
        export_tower(item, tmp / ITEM_TOWER, config.opset, item_tokenizer)
        if own_request:
            export_tower(request, tmp / request_file, config.opset, item_tokenizer)
        export_sequence(ckpt.model.user, tmp / USER_SEQUENCE, config.opset, dim)
    elif mc.shared_towers:
        files = {"user": SHARED_TOWER, "item": SHARED_TOWER}
        export_tower(ckpt.model.user, tmp / SHARED_TOWER, config.opset, item_tokenizer)
    else:
        files = {"user": USER_TOWER, "item": ITEM_TOWER}
        export_tower(ckpt.model.user, tmp / USER_TOWER, config.opset, item_tokenizer)
        export_tower(ckpt.model.item, tmp / ITEM_TOWER, config.opset, item_tokenizer)
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
    seen: SeenSpec | None = None


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
        "item": check_parity(item_tower, text["item"], pick_parity_texts(catalog.texts, config.parity_texts)),
    }
    user_texts = [] if sequence else history_texts(ckpt)
    if sequence:
        requests = list(probe.get("requests", [])) or [t[:60] for t in catalog.texts[:50]]
        picked = pick_parity_texts(requests, config.parity_texts)
        parity["request"] = check_parity(request_tower, text["request"], picked)
    else:
        picked = pick_parity_texts(user_texts, config.parity_texts)
        parity["user"] = check_parity(ckpt.model.user, text["user"], picked)
    for name in ("item", "request" if sequence else "user"):
        require_parity(parity, name, config)

    vectors = text["item"].encode(catalog.texts, progress=progress)
    offsets = ckpt.model.offset_matrix() if sequence else None
    if offsets is not None:
        # The learned per-item offsets join the stored vectors' trained block (items unseen
        # in training have none); the item graph reads text alone, as a new item's would be.
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
        seq_tower, user_encoder(fusion), pick_histories(histories, config.parity_texts), vectors_of
    )
    require_parity(parity, "user", config)
    if fusion is not None:
        fusion = _choose_fusion(ckpt, user_encoder(fusion), vectors, label)
    users = user_encoder(fusion)
    history_queries = users.encode_histories(histories[:200])
    kinds = {} if fusion is None else _query_kinds(ckpt, users, history_queries)
    seen = _choose_seen(ckpt, users, vectors, label) if config.seen_penalty else None
    return _Checked(parity, vectors, history_queries, offsets is not None, fusion, kinds, seen)


def _choose_seen(
    ckpt: Checkpoint, users: SequenceUserEncoder, vectors: np.ndarray, label: dict[str, int]
) -> SeenSpec | None:
    """The seen penalties chosen on the probe's validation users, for histories alone and for
    histories with the requests made of their targets (``None`` without a probe)."""
    from recsys_infer.runtime.types import Query

    examples = _probe_examples(ckpt)
    if not examples:
        return None

    def chosen(picked: list[tuple[list[str], str, str | None]], queries: np.ndarray) -> tuple[float, Any]:
        histories = [[label[i] for i in h] for h, _, _ in picked]
        return choose_seen_penalty(queries, vectors, histories, [label[t] for _, t, _ in picked])

    penalty, alone = chosen(examples, users.encode_histories([h for h, _, _ in examples]))
    record: dict[str, Any] = {"split": "validation", "metric": "ndcg@10", "history": alone}
    mixed = [e for e in examples if e[2]]
    with_request = penalty
    if mixed:
        with_request, record["history + request"] = chosen(
            mixed, users.encode([Query(tuple(h), r) for h, _, r in mixed])
        )
    logger.info("seen penalties chosen on validation: %s alone, %s with a request", penalty, with_request)
    return SeenSpec(penalty=penalty, with_request=with_request, chosen_on=record)


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
        seen=checked.seen,
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
