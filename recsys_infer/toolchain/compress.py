"""Compress a bundle: graph optimisation and quantization, each measured before it is kept.

Every step reads a bundle and writes a new one (the input is never modified). The towers chosen
get new graph files; a graph the chosen and unchosen towers share (a sequence bundle's item tower
also reads requests) is split, so that only the chosen towers read the new file. The item index
is kept as the reference item tower built it, unless ``reindex`` asks to rebuild it with the new
item tower.

The cost of each step is measured against the *reference*: the uncompressed fp32 bundle the
chain started from (its graphs match PyTorch within the export tolerance), ranked by exact
search. On the bundle's probe set (validation users, never test users) it records the mean and
minimum cosine between new and reference vectors of every tower, and the overlap@10/@100 of the
recommendations. ``max_overlap_drop`` turns the measurement into a gate: when the overlap@10 of
any kind of query (history users, or the requests of a bundle that reads them) falls below
``1 - max_overlap_drop``, no bundle is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.enums import Calibration, Device, Precision, QuantMode, TowerChoice
from recsys_infer.errors import BundleError, ConfigError, ExportError, FidelityError
from recsys_infer.runtime.bundle import (
    MANIFEST,
    atomic_directory,
    read_manifest,
    sha256_file,
    write_manifest,
)
from recsys_infer.runtime.engine import Engine, Query
from recsys_infer.runtime.manifest import CompressionStep, Manifest, ReferenceSpec, TowerSpec
from recsys_infer.runtime.reindex import reindex_bundle
from recsys_infer.runtime.schema import encode
from recsys_infer.runtime.users import unit_rows

logger = logging.getLogger(__name__)


#: Named groups of MatMul nodes a quantization step can keep in fp32, by the names the
#: TorchScript exporter gives BERT's linear layers (they survive ONNX Runtime's fusions).
KEEP_FP32_GROUPS: dict[str, str] = {
    "ffn-out": r"/layer\.\d+/output/dense/",
    "ffn-in": r"/layer\.\d+/intermediate/dense/",
    "attention-out": r"/attention/output/dense/",
    "head": r"^/head/",
}


@dataclass(frozen=True)
class QuantizeConfig:
    mode: QuantMode = QuantMode.DYNAMIC
    towers: TowerChoice = TowerChoice.BOTH
    per_channel: bool = True
    calibration: Calibration = Calibration.MINMAX
    calibration_size: int = 256
    block_size: int = 64
    keep_fp32: tuple[str, ...] = ()
    reindex: bool = False
    max_overlap_drop: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", QuantMode(self.mode))
        object.__setattr__(self, "towers", TowerChoice(self.towers))
        object.__setattr__(self, "calibration", Calibration(self.calibration))
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two, at least 16; got {self.block_size}")
        if self.calibration_size < 8:
            raise ConfigError(f"calibration_size must be at least 8, got {self.calibration_size}")
        if self.max_overlap_drop is not None and not 0 <= self.max_overlap_drop <= 1:
            raise ConfigError(f"max_overlap_drop must lie in [0, 1], got {self.max_overlap_drop}")


@dataclass
class StepResult:
    bundle: Path
    step: dict[str, Any]
    fidelity: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "step": self.step,
            "fidelity": self.fidelity,
            "files": self.files,
            "seconds": round(self.seconds, 2),
        }


# -- graph transforms (file in, file out) ---------------------------------------------------------


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """ONNX Runtime's quantization tools drop temporary files into the working directory."""
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="recsys-infer-q-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(here)


def _is_bert(graph: Any) -> bool:
    return {i.name for i in graph.input} == {"input_ids", "attention_mask"}


def optimize_graph(src: Path, dst: Path) -> dict[str, Any]:
    """ONNX Runtime's transformer fusions for a BERT-style text tower; other graphs are copied."""
    import onnx

    graph = onnx.load(str(src)).graph
    before = len(graph.node)
    if not _is_bert(graph):
        shutil.copyfile(src, dst)
        return {"fused": False, "nodes_before": before, "nodes_after": before, "reason": "not a BERT graph"}
    from onnxruntime.transformers.optimizer import optimize_model

    with _scratch():
        model = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, use_gpu=False)
        stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        model.save_model_to_file(str(dst))
    after = len(onnx.load(str(dst)).graph.node)
    return {"fused": True, "nodes_before": before, "nodes_after": after, "fused_operators": stats}


def _matmuls_to_keep(graph: Any, keep: Sequence[str]) -> list[str]:
    patterns = [re.compile(KEEP_FP32_GROUPS.get(k, k)) for k in keep]
    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    return [n for n in names if any(p.search(n) for p in patterns)]


def quantize_dynamic_graph(src: Path, dst: Path, config: QuantizeConfig) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src)).graph
    excluded = _matmuls_to_keep(graph, config.keep_fp32)
    ops = ["MatMul", "Attention"] if _is_bert(graph) else ["MatMul"]
    with _scratch():
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=config.per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            nodes_to_exclude=excluded,
            # Fused graphs (Attention, SkipLayerNormalization) need the default tensor type.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {"kept_fp32": excluded, "op_types": ops}


def quantize_blockwise_graph(src: Path, dst: Path, config: QuantizeConfig) -> dict[str, Any]:
    """int8 weights in blocks of ``block_size`` along the input dimension, each block with its own
    scale (ONNX Runtime's MatMulNBits). At accuracy level 4 the activations are quantized to int8
    block by block too, so an outlier spoils only its own block, where dynamic int8 gives one
    scale to the whole tensor. A fused graph's Attention ops (the Q, K and V projections) have no
    blockwise form and stay fp32."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    excluded = _matmuls_to_keep(model.graph, config.keep_fp32)
    with _scratch():
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=config.block_size,
            is_symmetric=True,
            accuracy_level=4,  # int8 compute, activations scaled per block
            nodes_to_exclude=excluded,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    quantized = sum(n.op_type == "MatMulNBits" for n in onnx.load(str(dst)).graph.node)
    return {
        "kept_fp32": excluded,
        "op_types": ["MatMul"],
        "bits": 8,
        "block_size": config.block_size,
        "accuracy_level": 4,
        "blockwise_matmuls": quantized,
    }


class _Feeds:
    """Hands ONNX Runtime's calibrator prepared input batches, and can start over."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def text_feeds(
    tokenizer_file: Path, pad_token: str, max_length: int, texts: Sequence[str], batch: int = 16
) -> _Feeds:
    """Batches of real texts, every one padded to ``max_length`` (the histogram calibrators need
    one shape throughout)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=max_length)
    pad = tokenizer.token_to_id(pad_token)
    if pad is None:
        raise BundleError(f"the bundle's tokenizer has no padding token {pad_token!r}")
    tokenizer.enable_padding(pad_id=pad, pad_token=pad_token, length=max_length)
    feeds = []
    for start in range(0, len(texts), batch):
        encodings = tokenizer.encode_batch(list(texts[start : start + batch]))
        feeds.append(
            {
                "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
            }
        )
    return _Feeds(feeds)


def history_feeds(
    vectors: np.ndarray,
    label: dict[str, int],
    histories: Sequence[Sequence[str]],
    length: int,
    batch: int = 16,
) -> _Feeds:
    """Batches of real histories for a sequence user tower, left-padded to ``length`` items."""
    feeds = []
    for start in range(0, len(histories), batch):
        chunk = histories[start : start + batch]
        history = np.zeros((len(chunk), length, vectors.shape[1]), dtype=np.float32)
        mask = np.zeros((len(chunk), length), dtype=np.int64)
        for b, h in enumerate(chunk):
            recent = [label[i] for i in h if i in label][-length:]
            if recent:
                history[b, length - len(recent) :] = vectors[recent]
                mask[b, length - len(recent) :] = 1
        feed: dict[str, np.ndarray] = {"history": history, "history_mask": mask}
        feeds.append(feed)
    return _Feeds(feeds)


def quantize_static_graph(src: Path, dst: Path, reader: Any, config: QuantizeConfig) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        Calibration.MINMAX: CalibrationMethod.MinMax,
        Calibration.PERCENTILE: CalibrationMethod.Percentile,
        Calibration.ENTROPY: CalibrationMethod.Entropy,
    }
    excluded = _matmuls_to_keep(onnx.load(str(src)).graph, config.keep_fp32)
    with _scratch() as tmp:
        prepared = tmp / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), auto_merge=True, skip_optimization=False)
        quantize_static(
            str(prepared),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[config.calibration],
            nodes_to_exclude=excluded,
            op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "CalibMovingAverage": False},
        )
    return {"kept_fp32": excluded, "calibration": str(config.calibration)}


def fp16_graph(src: Path, dst: Path) -> dict[str, Any]:
    """Half-precision weights and activations with float32 inputs and outputs (for CUDA)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(dst))
    return {"keep_io_types": True}


# -- fidelity -------------------------------------------------------------------------------------


def _top(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    k = min(k, items.shape[0])
    scores = users @ items.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1), 1)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6)}


def probe_queries(engine: Engine, limit: int = 500) -> tuple[list[Query], list[Query]]:
    """The probe set's users (histories) and requests, as queries this bundle can read."""
    bundle = engine.path
    if engine.manifest is None or bundle is None:
        raise BundleError("fidelity needs a bundle loaded from disk")
    probe: dict[str, Any] = {}
    if engine.manifest.probe is not None:
        probe = json.loads((bundle / engine.manifest.probe.file).read_text(encoding="utf-8"))
    known = set(engine.item_ids)
    histories = [[i for i in h if i in known] for h in probe.get("histories", [])]
    users = [Query(history=tuple(h)) for h in histories if h][:limit]
    requests = [Query(text=t) for t in probe.get("requests", [])][:limit]
    if not users:
        # No probe (e.g. exported without one): pseudo-users made of catalogue runs.
        ids = list(engine.item_ids)
        users = [Query(history=tuple(ids[i : i + 1 + i % 20])) for i in range(0, min(len(ids), 2000), 7)]
    return users, requests


def _stored_vectors(engine: Engine) -> np.ndarray:
    if engine.manifest is None or engine.path is None:
        raise BundleError("fidelity needs a bundle loaded from disk")
    return np.load(engine.path / engine.manifest.index.vectors_file, allow_pickle=False)


def measure_fidelity(reference: Engine, candidate: Engine, *, item_sample: int = 1000) -> dict[str, Any]:
    """Cosines and recommendation overlap of ``candidate`` against ``reference`` (exact search)."""
    users, requests = probe_queries(reference)
    ref_items, new_items = _stored_vectors(reference), _stored_vectors(candidate)
    result: dict[str, Any] = {"reference": str(reference.path), "queries": {}}
    groups = {"user": users}
    if requests:
        groups["request"] = requests
    for name, queries in groups.items():
        ref_users = reference.encode_users(queries)
        new_users = candidate.encode_users(queries)
        entry: dict[str, Any] = {"count": len(queries), **_cosines(ref_users, new_users)}
        for k in (10, 100):
            entry[f"overlap@{k}"] = round(
                _overlap(_top(ref_users, ref_items, k), _top(new_users, new_items, k)), 4
            )
        result["queries"][name] = entry
    texts = list(reference.catalog.texts)
    step = max(1, len(texts) // item_sample)
    sample = texts[::step][:item_sample]
    result["item"] = {
        "count": len(sample),
        **_cosines(reference.encode_items(sample), candidate.encode_items(sample)),
    }
    result["index_vectors"] = _cosines(ref_items, new_items) if ref_items.shape == new_items.shape else None
    result["overlap@10"] = result["queries"]["user"]["overlap@10"]
    result["overlap@100"] = result["queries"]["user"]["overlap@100"]
    return result


# -- deriving a bundle ----------------------------------------------------------------------------

#: What a graph transform gets: source graph, destination, and the towers that will read it.
Transform = Callable[[Path, Path, list[str]], dict[str, Any]]

_USER_SIDE = ("user", "request")


def _chosen(towers: dict[str, Any], choice: TowerChoice) -> list[str]:
    if choice is TowerChoice.BOTH:
        return list(towers)
    wanted = _USER_SIDE if choice is TowerChoice.USER else ("item",)
    return [t for t in towers if t in wanted]


def reference_of(src: Path, manifest: Manifest, override: Path | None) -> Path:
    """The uncompressed bundle a chain started from: ``override``, the one ``src`` records, or
    ``src`` itself when it has not been compressed."""
    if override is not None:
        path = Path(override)
    elif manifest.reference is not None:
        path = Path(manifest.reference.bundle)
        if not (path / MANIFEST).is_file():
            raise BundleError(
                f"{src} was compressed from the reference bundle {path}, which is no longer there; "
                "pass --reference with the uncompressed bundle this chain started from"
            )
    else:
        path = src
    if read_manifest(path).compression:
        raise BundleError(f"the reference {path} is itself compressed; pass the uncompressed bundle")
    return path


def derive_bundle(
    src: Path,
    out: Path,
    *,
    step: dict[str, Any],
    transform: Transform,
    suffix: str,
    towers: TowerChoice,
    precision: Precision | None = None,
    reindex: bool = False,
    max_overlap_drop: float | None = None,
    reference: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> StepResult:
    """Copy ``src`` to ``out`` with the chosen towers' graphs transformed, then measure the result
    against the reference and keep it only if it passes ``max_overlap_drop``."""
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise BundleError(
            "--out must differ from the input bundle: a compression step never modifies its input"
        )
    manifest = read_manifest(src)
    ref_path = reference_of(src, manifest, reference).resolve()
    chosen = _chosen(dict(manifest.towers), TowerChoice(towers))
    if not chosen:
        raise BundleError(f"{src} has no {towers} tower to compress")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name in manifest.files:
            shutil.copy2(src / name, tmp / name)
        towers_spec, graphs = _transform_graphs(
            src, tmp, manifest, chosen, step, transform, suffix, precision
        )
        index = manifest.index
        if "item" in chosen and not reindex:
            index = replace(index, built_with="the reference item tower (pass --reindex to rebuild)")
        draft = write_manifest(tmp, replace(manifest, towers=towers_spec, index=index))
        if reindex and "item" in chosen:
            reindex_bundle(tmp, None, tmp, overwrite=True, progress=progress,
                           built_with="the compressed item tower of this bundle (--reindex)")  # fmt: skip
            draft = read_manifest(tmp)
        fidelity = measure_fidelity(
            Engine.load(ref_path, device=Device.CPU, exact=True, verify=False),
            Engine.load(tmp, device=Device.CPU, exact=True, verify=False),
        )
        fidelity["reference"] = str(ref_path)
        check_gate(
            fidelity,
            max_overlap_drop,
            f"{step['step']} lowered",
            "Compress less (another mode such as blockwise, --keep-fp32 ffn-out, a lower ratio) "
            "or allow a larger drop.",
        )
        record = CompressionStep(
            step=step["step"],
            fidelity=fidelity,
            extra={
                **{k: v for k, v in step.items() if k != "step"},
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "input": {"bundle": str(src.resolve()), "manifest_sha256": sha256_file(src / MANIFEST)},
                "graphs": graphs,
                "reindexed": bool(reindex and "item" in chosen),
            },
        )
        final = replace(
            draft,
            compression=(*draft.compression, record),
            reference=ReferenceSpec(str(ref_path), sha256_file(ref_path / MANIFEST)),
            fidelity={**fidelity, "measured_by": f"recsys-infer {step['step']}"},
        )
        write_manifest(tmp, final)
        _check_answers(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    return StepResult(out, encode(record), fidelity, files, time.perf_counter() - started)


def _transform_graphs(
    src: Path,
    tmp: Path,
    manifest: Manifest,
    chosen: list[str],
    step: dict[str, Any],
    transform: Transform,
    suffix: str,
    precision: Precision | None,
) -> tuple[dict[str, TowerSpec], dict[str, Any]]:
    """Transform the chosen towers' graphs into new files in ``tmp``; the new tower specs and a
    record of each graph made. A graph an unchosen tower still reads is kept; others go."""
    spec = dict(manifest.towers)
    graphs: dict[str, Any] = {}
    for file in sorted({spec[t].file for t in chosen}):
        readers = [t for t in spec if spec[t].file == file]
        mine = [t for t in readers if t in chosen]
        base = file.removesuffix(".onnx") if mine == readers else f"{mine[0]}_tower"
        new = f"{base}.{suffix}.onnx"
        logger.info("%s: %s -> %s (%s)", step["step"], file, new, ", ".join(mine))
        graphs[new] = {"from": file, "towers": mine, **transform(src / file, tmp / new, mine)}
        for t in mine:
            spec[t] = replace(
                spec[t],
                file=new,
                precision=precision or spec[t].precision,
                steps=(*spec[t].steps, step["step"]),
            )
    for name in {g["from"] for g in graphs.values()}:
        if all(t.file != name for t in spec.values()):
            (tmp / name).unlink()
    return spec, graphs


def _check_answers(bundle: Path) -> None:
    """The last check: the finished bundle loads, verified, and answers."""
    engine = Engine.load(bundle, device=Device.CPU)
    users, _ = probe_queries(engine, limit=1)
    if not engine.recommend_batch(users, k=min(10, len(engine)), exclude_seen=False)[0]:
        raise ExportError("the compressed bundle returned no recommendations for a probe user")


def check_gate(fidelity: dict[str, Any], max_drop: float | None, what: str, advice: str) -> None:
    """Refuse a result whose overlap@10 with the reference, for any kind of query (history users,
    requests), falls below ``1 - max_drop``: a sequence bundle's requests can fare far worse
    than its users, and a gate on users alone would let that through."""
    if max_drop is None:
        return
    lowest, name = min((q["overlap@10"], name) for name, q in fidelity["queries"].items())
    if lowest < 1 - max_drop:
        raise FidelityError(
            f"{what} the {name} overlap@10 with the reference to {lowest:.4f}, below the allowed "
            f"{1 - max_drop:.4f} (--max-overlap-drop {max_drop}). No bundle was written. {advice}"
        )


def add_offsets(vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Text vectors plus learned per-item offsets, re-normalised to unit length."""
    return unit_rows(vectors + offsets)


def optimize_bundle(
    src: Path, out: Path, *, towers: TowerChoice = TowerChoice.BOTH, **kwargs: Any
) -> StepResult:
    """ONNX Runtime's transformer fusions on the chosen towers (default both)."""
    return derive_bundle(
        src,
        out,
        step={"step": "optimize", "towers": str(towers)},
        transform=lambda a, b, _: optimize_graph(a, b),
        suffix="opt",
        towers=towers,
        **kwargs,
    )


def quantize_bundle(
    src: Path,
    out: Path,
    config: QuantizeConfig,
    *,
    reference: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> StepResult:
    """int8 (dynamic, static or blockwise) or fp16 graphs for the chosen towers."""
    src = Path(src)
    manifest = read_manifest(src)
    step = {
        "step": "quantize",
        "mode": str(config.mode),
        "towers": str(config.towers),
        "per_channel": config.per_channel,
        "keep_fp32": list(config.keep_fp32),
    }
    if config.mode is QuantMode.STATIC:
        step |= {"calibration": str(config.calibration), "calibration_size": config.calibration_size}
    if config.mode is QuantMode.BLOCKWISE:
        step |= {"block_size": config.block_size}
        step.pop("per_channel")

    def transform(a: Path, b: Path, readers: list[str]) -> dict[str, Any]:
        if config.mode is QuantMode.DYNAMIC:
            return quantize_dynamic_graph(a, b, config)
        if config.mode is QuantMode.BLOCKWISE:
            return quantize_blockwise_graph(a, b, config)
        if config.mode is QuantMode.FP16:
            return fp16_graph(a, b)
        feeds = _calibration(src, manifest, readers, config.calibration_size)
        return quantize_static_graph(a, b, feeds, config)

    precision = Precision.FP16 if config.mode is QuantMode.FP16 else Precision.INT8
    suffix = {
        QuantMode.DYNAMIC: "int8",
        QuantMode.STATIC: "qdq",
        QuantMode.BLOCKWISE: "b8",
        QuantMode.FP16: "fp16",
    }[config.mode]
    return derive_bundle(
        src,
        out,
        step=step,
        transform=transform,
        suffix=suffix,
        towers=config.towers,
        precision=precision,
        reindex=config.reindex,
        max_overlap_drop=config.max_overlap_drop,
        reference=reference,
        overwrite=overwrite,
        progress=progress,
    )


def _calibration(src: Path, manifest: Manifest, readers: list[str], size: int) -> _Feeds:
    """Real inputs for the towers that read one graph: validation users from the probe set for
    the user side, catalogue texts for the item side (never the test split)."""
    engine = Engine.load(src, device=Device.CPU, exact=True, verify=False)
    users, requests = probe_queries(engine, limit=size)
    tower = manifest.towers[readers[0]]
    if tower.kind == "sequence":
        vectors = np.load(src / manifest.index.vectors_file, allow_pickle=False)
        label = {item_id: i for i, item_id in enumerate(engine.item_ids)}
        return history_feeds(vectors, label, [q.history for q in users], tower.max_length)
    texts: list[str] = []
    per = max(1, size // len(readers))
    for name in readers:
        if name == "item":
            catalog = list(engine.catalog.texts)
            texts += catalog[:: max(1, len(catalog) // per)][:per]
        elif name == "request":
            texts += [q.text or "" for q in requests][:per]
        else:
            texts += [engine.user_text(q) for q in users][:per]
    return text_feeds(src / manifest.tokenizer.file, manifest.tokenizer.pad_token, tower.max_length, texts)
