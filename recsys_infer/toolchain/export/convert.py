"""A bundle's text towers as sentence-transformers folders, so the tools a user already runs
(sentence-transformers, optimum's ORT models, Text Embeddings Inference) can use our towers.

Each folder holds the tower's encoder weights and tokenizer, its pooling and a Normalize module
(``modules.json``), the ONNX file sentence-transformers' ONNX backend loads
(``onnx/model.onnx``), and a model card with the bundle's facts (base model, licence). The
weights come from the checkpoint the bundle was exported from; the conversion is refused unless
sentence-transformers, loading the folder, gives the bundle's own vectors.

What sentence-transformers can hold, by kind:

- the text kind: its item and user towers (one folder, ``shared``, when they share weights);
- the sequence kind (the default): the towers of its text space, the part of each item and
  request vector that is the encoder's own (``item`` and ``request``; one folder, ``shared``,
  when the request tower has no encoder of its own). The trained space is left out: its head
  and the sequence tower over item vectors cannot be written without custom code, and a bundle
  exported with ``--no-text-space`` has nothing else, so it is refused with that reason;
- compressed graphs are refused: their weights are no longer the checkpoint's.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import ExportError, MissingDependencyError
from recsys_infer.runtime.atomic import atomic_directory
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.schema import encode
from recsys_infer.runtime.users import SequenceUserEncoder, TextUserEncoder
from recsys_infer.toolchain.train.checkpoint import CHECKPOINT_FILE

logger = logging.getLogger(__name__)

#: Lowest cosine between sentence-transformers' vectors and the bundle's for a folder to count.
MIN_COSINE = 0.9999


@dataclass(frozen=True)
class ConvertResult:
    folders: dict[str, Path]  # tower name ("item", "user") -> folder
    min_cosine: dict[str, float]  # sentence-transformers (ONNX backend) against the bundle


def _refusal(manifest: Any, checkpoint: Path) -> str | None:
    if manifest.compression:
        steps = ", ".join(str(encode(step).get("step")) for step in manifest.compression)
        return (
            f"its graphs are compressed ({steps}), so their weights are no longer the checkpoint's; "
            "convert the fp32 bundle they were made from"
        )
    if manifest.user.kind == "sequence" and manifest.fusion is None:
        return (
            "it was exported with --no-text-space, so its item and request vectors are a trained head's "
            "alone, which sentence-transformers cannot express without custom code (nor the sequence "
            "tower over item vectors). Export it again without --no-text-space to convert its text space"
        )
    if manifest.user.kind != "sequence" and any(t.head for t in manifest.towers.values()):
        return (
            "a tower carries a trained head, which sentence-transformers cannot express without custom code"
        )
    if not (checkpoint / CHECKPOINT_FILE).is_file():
        return (
            f"the checkpoint it was exported from is not at {checkpoint}; pass --checkpoint with it "
            "(the folder `recsys-infer train` wrote)"
        )
    return None


#: A tower to write: the checkpoint folder of its encoder's weights, the bundle tower it stands
#: for (its token budget and pooling), and the bundle's own vectors for texts, to check against.
_Tower = tuple[str, str, Callable[[list[str]], np.ndarray]]


def _towers(engine: Engine, manifest: Any, checkpoint: Path) -> dict[str, _Tower]:
    """The folders to write, by name, for the bundle's kind."""
    if manifest.user.kind != "sequence":
        if not isinstance(engine.user_encoder, TextUserEncoder):  # pragma: no cover - the text kind
            raise ExportError("the bundle's user tower does not read text")
        if manifest.shared_towers:
            return {"shared": ("user_encoder", "item", engine.item_encoder.encode)}
        return {
            "item": ("item_encoder", "item", engine.item_encoder.encode),
            "user": ("user_encoder", "user", engine.user_encoder.encoder.encode),
        }
    start = manifest.fusion.dims[0]  # the text space: the components after the trained ones

    def text_space(encoder: Any) -> Callable[[list[str]], np.ndarray]:
        def encode(texts: list[str]) -> np.ndarray:
            part = np.asarray(encoder.encode(texts), dtype=np.float32)[:, start:]
            return part / np.linalg.norm(part, axis=1, keepdims=True)

        return encode

    item = ("item_encoder", "item", text_space(engine.item_encoder))
    if not (checkpoint / "request_encoder").is_dir():
        return {"shared": item}
    if not isinstance(engine.user_encoder, SequenceUserEncoder):  # pragma: no cover - the sequence kind
        raise ExportError("the bundle's user tower is not a sequence tower")
    return {"item": item, "request": ("request_encoder", "request", text_space(engine.user_encoder.requests))}


def _card_data(manifest: Any) -> Any:
    """The bundle's facts for sentence-transformers' model card."""
    from sentence_transformers import SentenceTransformerModelCardData

    encoder = manifest.provenance.encoder
    name = str(encoder.get("name") or "")
    data = SentenceTransformerModelCardData(
        license=encoder.get("license") or None,
        model_name=f"recsys-infer towers on {name}" if name else None,
        tags=["recsys-infer", "recommendation", "two-tower"],
        local_files_only=True,  # no network: nothing is looked up on the Hub for the card
    )
    if name and not name.startswith("/"):
        data.base_model = name
        data.base_model_revision = encoder.get("revision")
    return data


def to_sentence_transformers(
    bundle: Path, out: Path, *, checkpoint: Path | None = None, overwrite: bool = False
) -> ConvertResult:
    """Write ``bundle``'s text towers under ``out``, one sentence-transformers folder each
    (named as the module docstring says), with its ONNX backend file, checked against the
    bundle's own vectors."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingDependencyError("sentence-transformers", "bench") from e
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    ckpt = Path(checkpoint or manifest.provenance.training.get("checkpoint") or "")
    reason = _refusal(manifest, ckpt)
    if reason:
        raise ExportError(f"cannot convert {bundle} to sentence-transformers: {reason}")
    engine = Engine.load(bundle, device="cpu")
    texts = [item.text for item in engine.items(list(engine.item_ids[:64]))]
    tokenizer_json = (bundle / manifest.tokenizer.file).read_text(encoding="utf-8")
    folders: dict[str, Path] = {}
    cosines: dict[str, float] = {}
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        for name, (weights, tower, ours) in _towers(engine, manifest, ckpt).items():
            folder = tmp / name
            _write_folder(folder, ckpt / weights, manifest, manifest.towers[tower], tokenizer_json)
            with warnings.catch_warnings():  # the exporter's tracer and deprecation notes, not ours
                warnings.simplefilter("ignore")
                onnx = SentenceTransformer(
                    str(folder), backend="onnx", device="cpu"
                )  # exports onnx/model.onnx
            onnx.save_pretrained(str(folder))
            theirs = np.asarray(onnx.encode(texts, normalize_embeddings=True), dtype=np.float32)
            cosine = float(np.min(np.sum(theirs * ours(texts), axis=1)))
            if cosine < MIN_COSINE:
                raise ExportError(
                    f"sentence-transformers' {name} vectors from {ckpt} differ from the bundle's (lowest "
                    f"cosine {cosine:.6f} < {MIN_COSINE}): is {ckpt} the checkpoint {bundle} was exported "
                    "from? Nothing was written."
                )
            folders[name] = Path(out) / name
            cosines[name] = round(cosine, 6)
            logger.info("%s tower: lowest cosine to the bundle %.6f", name, cosine)
    return ConvertResult(folders, cosines)


def _write_folder(folder: Path, weights: Path, manifest: Any, spec: Any, tokenizer_json: str) -> None:
    """A sentence-transformers folder: the encoder at ``weights`` with the bundle's tokenizer,
    the tower's pooling and token budget, a Normalize module, and the bundle's card facts."""
    from sentence_transformers import SentenceTransformer

    try:  # where sentence-transformers 5.7 keeps them; before, sentence_transformers.models
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers import models  # type: ignore[attr-defined,no-redef]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    staged = folder.parent / f".{folder.name}-encoder"
    shutil.copytree(weights, staged)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json), pad_token=manifest.tokenizer.pad_token
    ).save_pretrained(staged)
    transformer = models.Transformer(str(staged), max_seq_length=spec.max_length)
    pooling = models.Pooling(_embedding_dimension(transformer), pooling_mode=str(spec.pooling))
    model = SentenceTransformer(
        modules=[transformer, pooling, models.Normalize()], device="cpu", model_card_data=_card_data(manifest)
    )
    model.save(str(folder))
    shutil.rmtree(staged)


def _embedding_dimension(transformer: Any) -> int:
    """The module's output width, by the name sentence-transformers gives it (renamed in 5.7)."""
    method = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    return int(method())
