"""Training checkpoints: a directory a later `export` (or a resumed `train`) reads.

Layout::

    recsys_checkpoint.json   model config, training summary, data provenance
    user_encoder/            Hugging Face config.json + model.safetensors (text user tower)
    item_encoder/            the item tower's encoder (absent when text towers share weights)
    item_head.safetensors    sequence kind: the trainable head on the frozen item encoder
    sequence_tower.safetensors  sequence kind: the user tower over history item vectors
    item_offsets.safetensors    sequence kind, optional: learned per-item offsets and their mask
    request_encoder/         sequence kind, optional: a request tower of its own (pruned for
    request_head.safetensors    requests alone), its encoder and its copy of the item head
    tokenizer.json           the encoder's tokenizer
    catalog.jsonl            the catalogue the model was trained on
    probe.json               validation histories and requests (for export's probe set)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from recsys_infer.enums import UserTowerKind
from recsys_infer.errors import CheckpointError
from recsys_infer.runtime.bundle import atomic_directory
from recsys_infer.runtime.catalog import Catalog
from recsys_infer.toolchain.train.model import ItemHead, ModelConfig, TextTower, TwoTower

CHECKPOINT_FILE = "recsys_checkpoint.json"
ITEM_HEAD = "item_head.safetensors"
SEQUENCE_TOWER = "sequence_tower.safetensors"
ITEM_OFFSETS = "item_offsets.safetensors"
REQUEST_HEAD = "request_head.safetensors"
CHECKPOINT_VERSION = 1
_MAKE = "recsys-infer train --data PATH --out CHECKPOINT"


@dataclass
class Checkpoint:
    path: Path
    model: TwoTower
    config: ModelConfig
    catalog: Catalog
    tokenizer_json: str
    probe: dict[str, Any] | None
    meta: dict[str, Any]


def save_checkpoint(
    out: Path,
    model: TwoTower,
    *,
    tokenizer_json: str,
    catalog: Catalog,
    probe: dict[str, Any] | None,
    meta: dict[str, Any],
    overwrite: bool = False,
) -> None:
    """Write the checkpoint atomically: a crash leaves no half-written directory at ``out``."""
    with atomic_directory(out, overwrite=overwrite, marker=CHECKPOINT_FILE) as tmp:
        if model.config.user_tower is UserTowerKind.SEQUENCE:
            if model.item.head is None:
                raise CheckpointError("a sequence model's item tower must have a head")
            model.item.encoder.save_pretrained(tmp / "item_encoder", safe_serialization=True)
            save_file(_contiguous(model.item.head), str(tmp / ITEM_HEAD))
            save_file(_contiguous(model.user), str(tmp / SEQUENCE_TOWER))
            if model.item_offsets is not None:
                offsets = {"offsets": model.item_offsets.detach(), "mask": model.offset_mask}
                save_file({k: v.contiguous() for k, v in offsets.items()}, str(tmp / ITEM_OFFSETS))
            if model.request is not None:
                if model.request.head is None:
                    raise CheckpointError("a sequence model's request tower must have a head")
                model.request.encoder.save_pretrained(tmp / "request_encoder", safe_serialization=True)
                save_file(_contiguous(model.request.head), str(tmp / REQUEST_HEAD))
        else:
            model.user.encoder.save_pretrained(tmp / "user_encoder", safe_serialization=True)
            if not model.config.shared_towers:
                model.item.encoder.save_pretrained(tmp / "item_encoder", safe_serialization=True)
        (tmp / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        catalog.write_jsonl(tmp / "catalog.jsonl")
        if probe is not None:
            (tmp / "probe.json").write_text(json.dumps(probe), encoding="utf-8")
        doc = {"format_version": CHECKPOINT_VERSION, "model": model.config.to_dict(), **meta}
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(doc, indent=2), encoding="utf-8")


def _request_tower(encoder: Any, config: ModelConfig, head_file: Path) -> TextTower:
    if config.sequence is None:  # pragma: no cover - only sequence checkpoints get here
        raise CheckpointError("a request tower belongs to a sequence model")
    shape = config.sequence
    head = ItemHead(int(encoder.config.hidden_size), shape.item_head_hidden, whiten=shape.whiten)
    head.load_state_dict(load_file(str(head_file)))
    tower = TextTower(encoder, config.pooling, head)
    tower.eval()
    return tower


def _contiguous(module: nn.Module) -> dict[str, Any]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def load_checkpoint(path: Path, *, attn_implementation: str | None = None) -> Checkpoint:
    """Read a checkpoint. ``attn_implementation="eager"`` gives the graph ONNX export wants."""
    from transformers import AutoModel

    path = Path(path)
    doc_path = path / CHECKPOINT_FILE
    if not doc_path.is_file():
        raise CheckpointError(
            f"{path} is not a recsys-infer checkpoint (no {CHECKPOINT_FILE}); make one with: {_MAKE}"
        )
    doc = json.loads(doc_path.read_text(encoding="utf-8"))
    if doc.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{doc_path}: checkpoint format {doc.get('format_version')!r} is not supported "
            f"(this version reads {CHECKPOINT_VERSION}); retrain with: {_MAKE}"
        )
    config = ModelConfig.from_dict(doc["model"])
    sequence = config.user_tower is UserTowerKind.SEQUENCE
    if sequence:
        parts = ["item_encoder", ITEM_HEAD, SEQUENCE_TOWER]
        if config.sequence is not None and config.sequence.item_offsets:
            parts.append(ITEM_OFFSETS)
    else:
        parts = ["user_encoder"] + ([] if config.shared_towers else ["item_encoder"])
    needed = [*parts, "tokenizer.json", "catalog.jsonl"]
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: the checkpoint is incomplete; retrain with: {_MAKE}")
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    catalog = Catalog.read_jsonl(path / "catalog.jsonl")
    if sequence:
        encoder = AutoModel.from_pretrained(path / "item_encoder", **kwargs)
        model = TwoTower(None, encoder, config, n_items=len(catalog))
        if model.item_offsets is not None:
            offsets = load_file(str(path / ITEM_OFFSETS))
            model.item_offsets.data.copy_(offsets["offsets"])
            model.offset_mask.copy_(offsets["mask"])
        if model.item.head is None:  # pragma: no cover - TwoTower always makes one for this kind
            raise CheckpointError("internal: the sequence model has no item head")
        model.item.head.load_state_dict(load_file(str(path / ITEM_HEAD)))
        model.user.load_state_dict(load_file(str(path / SEQUENCE_TOWER)))
        if (path / "request_encoder").is_dir():
            if not (path / REQUEST_HEAD).is_file():
                raise CheckpointError(f"{path} has a request_encoder but no {REQUEST_HEAD}: it is incomplete")
            model.request = _request_tower(
                AutoModel.from_pretrained(path / "request_encoder", **kwargs), config, path / REQUEST_HEAD
            )
    else:
        user = AutoModel.from_pretrained(path / "user_encoder", **kwargs)
        item = None if config.shared_towers else AutoModel.from_pretrained(path / "item_encoder", **kwargs)
        model = TwoTower(user, item, config)
    model.eval()
    probe_path = path / "probe.json"
    return Checkpoint(
        path=path,
        model=model,
        config=config,
        catalog=catalog,
        tokenizer_json=(path / "tokenizer.json").read_text(encoding="utf-8"),
        probe=json.loads(probe_path.read_text(encoding="utf-8")) if probe_path.is_file() else None,
        meta={k: v for k, v in doc.items() if k not in ("model", "format_version")},
    )
