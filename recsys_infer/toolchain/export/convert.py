"""A bundle's text towers as sentence-transformers folders, so the tools a user already runs
(sentence-transformers, optimum's ORT models, Text Embeddings Inference) can use our towers.

Each folder holds the tower's encoder weights and tokenizer, its pooling and a Normalize module
(``modules.json``), and the ONNX file sentence-transformers' ONNX backend loads
(``onnx/model.onnx``). The weights come from the checkpoint the bundle was exported from; the
conversion is refused unless sentence-transformers, loading the folder, gives the bundle's own
vectors. A tower sentence-transformers cannot express without custom code is refused with the
reason: a sequence user tower (it reads item vectors, not text), a trained head on the encoder
(the sequence kind's item and request towers), and compressed graphs (their weights are no
longer the checkpoint's).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import ExportError, MissingDependencyError
from recsys_infer.runtime.atomic import atomic_directory
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.schema import encode
from recsys_infer.runtime.users import TextUserEncoder
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
    if manifest.user.kind == "sequence":
        return (
            "its user tower is a sequence model over item vectors, and its item and request towers "
            "carry a trained head (a residual MLP, joined to the encoder's own space): "
            "sentence-transformers cannot express either without custom code. Convert a bundle of "
            "the text kind (train --user-tower text)"
        )
    if any(t.head for t in manifest.towers.values()):
        return (
            "a tower carries a trained head, which sentence-transformers cannot express without custom code"
        )
    if not (checkpoint / CHECKPOINT_FILE).is_file():
        return (
            f"the checkpoint it was exported from is not at {checkpoint}; pass --checkpoint with it "
            "(the folder `recsys-infer train` wrote)"
        )
    return None


def to_sentence_transformers(
    bundle: Path, out: Path, *, checkpoint: Path | None = None, overwrite: bool = False
) -> ConvertResult:
    """Write ``bundle``'s text towers under ``out`` (``out/item``, ``out/user``; one folder,
    ``out/shared``, for shared towers), each a sentence-transformers folder with its ONNX
    backend file, checked against the bundle's own vectors."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingDependencyError("sentence-transformers", "bench") from e
    try:  # where sentence-transformers 5.7 keeps them; before, sentence_transformers.models
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers import models  # type: ignore[attr-defined,no-redef]
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    ckpt = Path(checkpoint or manifest.provenance.training.get("checkpoint") or "")
    reason = _refusal(manifest, ckpt)
    if reason:
        raise ExportError(f"cannot convert {bundle} to sentence-transformers: {reason}")
    engine = Engine.load(bundle, device="cpu")
    if not isinstance(engine.user_encoder, TextUserEncoder):  # the text kind, checked above
        raise ExportError(f"{bundle}'s user tower does not read text")
    texts = [item.text for item in engine.items(list(engine.item_ids[:64]))]
    towers: dict[str, tuple[str, Any]] = (
        {"shared": ("user_encoder", engine.item_encoder)}
        if manifest.shared_towers
        else {
            "item": ("item_encoder", engine.item_encoder),
            "user": ("user_encoder", engine.user_encoder.encoder),
        }
    )
    tokenizer_json = (bundle / manifest.tokenizer.file).read_text(encoding="utf-8")
    folders: dict[str, Path] = {}
    cosines: dict[str, float] = {}
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        for name, (weights, ours) in towers.items():
            spec = manifest.towers["item" if name in ("item", "shared") else "user"]
            staged = tmp / f".{name}-encoder"
            shutil.copytree(ckpt / weights, staged)
            PreTrainedTokenizerFast(
                tokenizer_object=Tokenizer.from_str(tokenizer_json), pad_token=manifest.tokenizer.pad_token
            ).save_pretrained(staged)
            transformer = models.Transformer(str(staged), max_seq_length=spec.max_length)
            pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode=str(spec.pooling))
            folder = tmp / name
            SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(
                str(folder)
            )
            shutil.rmtree(staged)
            with warnings.catch_warnings():  # the exporter's tracer and deprecation notes, not ours
                warnings.simplefilter("ignore")
                onnx = SentenceTransformer(
                    str(folder), backend="onnx", device="cpu"
                )  # exports onnx/model.onnx
            onnx.save_pretrained(str(folder))
            theirs = np.asarray(onnx.encode(texts, normalize_embeddings=True), dtype=np.float32)
            cosine = float(np.min(np.sum(theirs * ours.encode(texts), axis=1)))
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


def _embedding_dimension(transformer: Any) -> int:
    """The module's output width, by the name sentence-transformers gives it (renamed in 5.7)."""
    method = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    return int(method())
