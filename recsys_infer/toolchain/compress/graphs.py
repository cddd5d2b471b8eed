"""Graph transforms for compression, each a graph file in and a graph file out: ONNX Runtime's
transformer fusions, dynamic / static / blockwise int8 and fp16, plus the calibration feeds that
static int8 reads. ONNX Runtime's tools write their scratch files into temporary directories of
their own; nothing here changes the process's working directory.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.enums import Calibration, QuantMode, TowerChoice
from recsys_infer.errors import BundleError, ConfigError

#: Named groups of MatMul nodes a quantization step can keep in fp32, by the names the
#: TorchScript exporter gives BERT's linear layers (they survive ONNX Runtime's fusions).
KEEP_FP32_GROUPS: dict[str, str] = {
    "ffn-out": r"/layer\.\d+/output/dense/",
    "ffn-in": r"/layer\.\d+/intermediate/dense/",
    "attention-out": r"/attention/output/dense/",
    "head": r"^/head/",
}


_LAYER = re.compile(r"/layer\.(\d+)/")
#: A product's role, by the same name patterns a step keeps in fp32 (unambiguous, so unordered).
_ROLES = tuple((role, re.compile(pattern)) for role, pattern in KEEP_FP32_GROUPS.items())


@dataclass(frozen=True)
class Unit:
    """A group of matrix products that get one precision together."""

    name: str
    nodes: tuple[str, ...]
    weights: int  # parameters in its weight matrices
    op_type: str  # "Attention" (fused Q/K/V), "Gemm" (any of its products is one) or "MatMul"


def graph_units(model: Any) -> list[Unit]:
    """The quantizable units of a (fused or plain) BERT-style graph, in graph order."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type == "Attention":
            key = f"attention.{node.name.rsplit('_', 1)[-1]}"
        elif node.op_type in ("MatMul", "Gemm") and any(i in sizes for i in node.input[1:2]):
            role = next((r for r, p in _ROLES if p.search(node.name)), None)
            layer = _LAYER.search(node.name)
            if role == "head":
                key = "head"
            elif role is not None and layer is not None:
                key = f"{role}.{layer.group(1)}"
            elif layer is not None:  # unfused Q, K, V projections
                key = f"attention.{layer.group(1)}"
            else:
                key = f"other.{node.name}"
        else:
            continue
        groups.setdefault(key, []).append(node)
    units = []
    for key, nodes in groups.items():
        weights = sum(sizes.get(i, 0) for n in nodes for i in n.input[1:2])
        kinds = {n.op_type for n in nodes}
        kind = next(k for k in ("Attention", "Gemm", "MatMul") if k in kinds)
        units.append(Unit(key, tuple(n.name for n in nodes), weights, kind))
    return units


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
    target_overlap: float = 0.95  # auto: the request overlap@10 the mixed graph must hold
    # Activation smoothing of a text graph before dynamic int8 (toolchain.compress.smooth):
    # "off", "auto" (its strength searched on the probe) or a strength in (0, 1). None: the
    # mode's default, "auto" for --mode auto and "off" for the others.
    smooth: str | None = None

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
        if not 0 < self.target_overlap <= 1:
            raise ConfigError(f"target_overlap must lie in (0, 1], got {self.target_overlap}")
        if self.smooth is None:
            object.__setattr__(self, "smooth", "auto" if self.mode is QuantMode.AUTO else "off")
        smooth = str(self.smooth).strip().lower()
        if smooth not in ("off", "auto"):
            try:
                alpha = float(smooth)
            except ValueError:
                alpha = -1.0
            if not 0 < alpha < 1:
                raise ConfigError(f"smooth must be off, auto or a strength in (0, 1), got {self.smooth!r}")
            smooth = str(alpha)
        object.__setattr__(self, "smooth", smooth)
        if smooth != "off":
            if self.mode not in (QuantMode.DYNAMIC, QuantMode.AUTO):
                raise ConfigError(
                    f"smoothing goes before dynamic int8 (--mode dynamic or auto), not --mode {self.mode}"
                )
            if self.towers is TowerChoice.BOTH:
                raise ConfigError(
                    "smoothing is calibrated and measured per side (the probe's requests for the user "
                    "side, the catalogue for the item side): pass --tower user or --tower item, or "
                    "--smooth off"
                )

    @property
    def smooth_alpha(self) -> float | str | None:
        """The smoothing asked for: a strength, "auto", or None (off)."""
        return None if self.smooth == "off" else "auto" if self.smooth == "auto" else float(str(self.smooth))


def _is_bert(graph: Any) -> bool:
    return {i.name for i in graph.input} == {"input_ids", "attention_mask"}


def is_text_graph(path: Path) -> bool:
    """Whether the graph file is a BERT-style text tower (token ids in), not a history graph."""
    import onnx

    return _is_bert(onnx.load(str(path), load_external_data=False).graph)


#: ONNX Runtime transformer fusions left out of ``optimize``: on the CPU the fused kernels are
#: slower than the operators they replace (benchmarks/studies/README.md, layer_norm_fusion). A
#: CUDA session fuses the residual Add again at load (ONNX Runtime's own SkipLayerNormFusion,
#: which CPU sessions switch off: ``runtime.providers``).
UNFUSED = ("skip_layer_norm", "bias_skip_layer_norm", "bias_gelu")


def optimize_graph(src: Path, dst: Path) -> dict[str, Any]:
    """ONNX Runtime's transformer fusions for a BERT-style text tower (attention, embedding
    layer norm, Gelu; not those of :data:`UNFUSED`); other graphs are copied."""
    import onnx

    graph = onnx.load(str(src)).graph
    before = len(graph.node)
    if not _is_bert(graph):
        shutil.copyfile(src, dst)
        return {"fused": False, "nodes_before": before, "nodes_after": before, "reason": "not a BERT graph"}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for fusion in UNFUSED:
        setattr(options, f"enable_{fusion}", False)
    model = optimize_model(
        str(src), model_type="bert", num_heads=0, hidden_size=0, use_gpu=False, optimization_options=options
    )
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(dst))
    after = len(onnx.load(str(dst)).graph.node)
    return {
        "fused": True,
        "nodes_before": before,
        "nodes_after": after,
        "fused_operators": stats,
        "not_fused": list(UNFUSED),
    }


def matmuls_to_keep(graph: Any, keep: Sequence[str]) -> list[str]:
    patterns = [re.compile(KEEP_FP32_GROUPS.get(k, k)) for k in keep]
    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    return [n for n in names if any(p.search(n) for p in patterns)]


def quantize_dynamic_graph(src: Path, dst: Path, config: QuantizeConfig) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(src)).graph
    excluded = matmuls_to_keep(graph, config.keep_fp32)
    ops = ["MatMul", "Attention"] if _is_bert(graph) else ["MatMul"]
    dynamic_int8(src, dst, ops=ops, exclude=excluded, per_channel=config.per_channel)
    return {"kept_fp32": excluded, "op_types": ops}


class _DropAdvice(logging.Filter):
    """The quantizer's advice to pre-process, logged on every call to the root logger: the graphs
    here are quantized as they are on purpose (pre-processing fails on fused graphs without
    auto_merge and changes nothing the dynamic quantizer reads), so it only tells users noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    root, drop = logging.getLogger(), _DropAdvice()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def dynamic_int8(
    src: Path, dst: Path, *, ops: Sequence[str], exclude: Sequence[str], per_channel: bool = True
) -> None:
    """ONNX Runtime's dynamic int8 (int8 weights, activations quantized at run time) of the
    ``ops`` nodes of ``src``, except the nodes named in ``exclude``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_quantizer():  # its advice to pre-process does not apply to these graphs
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(ops),
            # The quantizer rewrites a Gemm as "<name>_MatMul" before it reads the exclusions.
            nodes_to_exclude=[*exclude, *(f"{n}_MatMul" for n in exclude)],
            # Fused graphs (Attention, SkipLayerNormalization) need the default tensor type.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def quantize_blockwise_graph(src: Path, dst: Path, config: QuantizeConfig) -> dict[str, Any]:
    """int8 weights in blocks of ``block_size`` along the input dimension, each block with its own
    scale (ONNX Runtime's MatMulNBits). At accuracy level 4 the activations are quantized to int8
    block by block too, so an outlier spoils only its own block, where dynamic int8 gives one
    scale to the whole tensor. A fused graph's Attention ops (the Q, K and V projections) have no
    blockwise form and stay fp32."""
    import onnx

    excluded = matmuls_to_keep(onnx.load(str(src)).graph, config.keep_fp32)
    blockwise_int8(src, dst, block_size=config.block_size, exclude=excluded)
    quantized = sum(n.op_type == "MatMulNBits" for n in onnx.load(str(dst)).graph.node)
    return {
        "kept_fp32": excluded,
        "op_types": ["MatMul"],
        "bits": 8,
        "block_size": config.block_size,
        "accuracy_level": 4,
        "blockwise_matmuls": quantized,
    }


def blockwise_int8(src: Path, dst: Path, *, block_size: int, exclude: Sequence[str] = ()) -> None:
    """Write ``src`` with its MatMuls but the ``exclude``d in blockwise int8: MatMulNBits,
    symmetric 8-bit weights, accuracy level 4 (int8 products, activations scaled per block)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,  # int8 compute, activations scaled per block
        nodes_to_exclude=list(exclude),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


class Feeds:
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
) -> Feeds:
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
    return Feeds(feeds)


def history_feeds(
    vectors: np.ndarray,
    label: dict[str, int],
    histories: Sequence[Sequence[str]],
    length: int,
    batch: int = 16,
) -> Feeds:
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
    return Feeds(feeds)


def quantize_static_graph(src: Path, dst: Path, reader: Any, config: QuantizeConfig) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        Calibration.MINMAX: CalibrationMethod.MinMax,
        Calibration.PERCENTILE: CalibrationMethod.Percentile,
        Calibration.ENTROPY: CalibrationMethod.Entropy,
    }
    excluded = matmuls_to_keep(onnx.load(str(src)).graph, config.keep_fp32)
    with tempfile.TemporaryDirectory(prefix="recsys-infer-q-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
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
