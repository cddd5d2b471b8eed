"""Activation smoothing before dynamic int8 (``quantize --smooth``).

Dynamic int8 gives each activation tensor one scale, so the few channels that carry outliers
set a scale that rounds every other channel coarsely (on the ml-latest-small probe's requests
the LayerNorm outputs that feed the FFN reach 8-18x their median channel, those that feed
attention 3.5-6x, and the GELU outputs 6-20x). Smoothing (SmoothQuant: Xiao et al., 2023,
arXiv:2211.10438) moves part of that range into the weights, which are quantized per column and
tolerate it better: for a product ``X W`` it picks a per-channel
``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)``, multiplies the weight's row ``k`` by ``s_k``
and the activation's channel ``k`` by ``1 / s_k``. In fp32 the graph computes the same
function; in int8 the activation's range is flatter.

Here the ``1 / s`` is an explicit ``Mul`` before each smoothed product (its input also feeds the
residual connection, so it cannot be folded into the LayerNorm). The smoothed products are the
fused attention (Q, K and V), the FFN input and the FFN output of every layer; the attention
output gained nothing measurable and the trained head is insensitive, so they are left alone.

The ranges come from the user-side texts the probe holds (validation data, never test), one text
per run so that no padding enters them. ``alpha`` is a number, or chosen by :func:`smooth_search`:
every candidate in dynamic int8, measured on the probe's queries, the one whose vectors are
closest to the reference's (mean cosine, which is steadier than overlap@10 on 500 requests)
wins; no smoothing is a candidate too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import ConfigError
from recsys_infer.toolchain.compress.graphs import dynamic_int8, graph_units, quiet_quantizer

logger = logging.getLogger(__name__)

#: The unit roles (see :func:`recsys_infer.toolchain.compress.graphs.graph_units`) whose inputs get smoothed.
SMOOTHED_ROLES = ("attention", "ffn-in", "ffn-out")
#: The strengths :func:`smooth_search` tries. On the ml-latest-small request graph in all-int8,
#: 0.7 held request overlap@10 0.939 on the probe (0.893 unsmoothed) and 0.5 only 0.870; between
#: 0.6 and 0.9 overlap moved by about 0.01 from one strength to the next, mean cosine steadily.
ALPHAS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
#: The suffix of the ``Mul`` node (and its scale initializer) put before a smoothed product.
SUFFIX = "_smooth"


def _targets(model: Any) -> list[Any]:
    """The nodes whose first input gets smoothed: the products of :data:`SMOOTHED_ROLES` with a
    2-D weight initializer of their own (MatMul ``[K, N]``, fused Attention ``[K, 3K]``)."""

    names = {n for u in graph_units(model) if u.name.split(".")[0] in SMOOTHED_ROLES for n in u.nodes}
    weights = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return [
        n
        for n in model.graph.node
        if n.name in names
        and n.op_type in ("MatMul", "Attention")
        and n.input[1] in weights
        and len(weights[n.input[1]].dims) == 2
        and readers[n.input[1]] == 1
    ]


def activation_ranges(
    graph: Path, feeds: Iterable[dict[str, np.ndarray]], tensors: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The largest absolute value of every channel (last axis) of each of ``tensors`` (default:
    each smoothed product's input), over ``feeds`` (run one by one, unpadded)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(graph))
    names = sorted(set(tensors) if tensors is not None else {n.input[0] for n in _targets(model)})
    if not names:
        return {}
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    # The graph as it is: ORT's own fusions could swallow the tensors asked for.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        outputs = session.run(names, {k: v for k, v in feed.items() if k in inputs})
        for name, value in zip(names, outputs, strict=True):
            top = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = top if name not in ranges else np.maximum(ranges[name], top)
    if not ranges:
        raise ConfigError("smoothing needs at least one calibration text")
    return ranges


def smooth_graph(src: Path, dst: Path, ranges: dict[str, np.ndarray], alpha: float) -> dict[str, Any]:
    """Write ``src`` smoothed with strength ``alpha`` (see the module docstring) to ``dst``: the
    same function in fp32, its products' inputs flatter."""
    import onnx
    from onnx import numpy_helper

    if not 0 < alpha < 1:
        raise ConfigError(f"the smoothing strength alpha must lie in (0, 1), got {alpha}")
    model = onnx.load(str(src))
    weights = {t.name: t for t in model.graph.initializer}
    smoothed = []
    for node in _targets(model):
        top = ranges.get(node.input[0])
        if top is None:
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        rows = np.abs(weight).max(axis=1)
        scale = (np.maximum(top, 1e-5) ** alpha / np.maximum(rows, 1e-5) ** (1 - alpha)).astype(np.float32)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        inverse, flat = f"{node.name}{SUFFIX}_inverse", f"{node.name}{SUFFIX}_output"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
        mul = onnx.helper.make_node("Mul", [node.input[0], inverse], [flat], name=f"{node.name}{SUFFIX}")
        node.input[0] = flat
        position = list(model.graph.node).index(node)
        model.graph.node.insert(position, mul)  # just before its reader: the order stays topological
        smoothed.append(node.name)
    if not smoothed:
        raise ConfigError(f"{src.name} has no attention or FFN product to smooth (not a BERT-style graph?)")
    onnx.save(model, str(dst))
    return {"alpha": alpha, "smoothed": len(smoothed), "roles": list(SMOOTHED_ROLES)}


def smooth_search(
    src: Path,
    ranges: dict[str, np.ndarray],
    measure: Callable[[Path], dict[str, float]],
    quantize: Callable[[Path, Path], None],
    workdir: Path,
    *,
    alphas: Sequence[float] = ALPHAS,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[float | None, dict[str, Any]]:
    """The ``alpha`` (None: no smoothing) whose dynamic int8 graph ``measure`` finds closest to
    the reference (mean cosine), and the record of every candidate."""
    tried: list[dict[str, Any]] = []
    for alpha in (None, *alphas):
        progress(f"smoothing: alpha {alpha}" if alpha else "smoothing: none")
        fp32, int8 = workdir / f"smooth-{alpha}.onnx", workdir / f"smooth-{alpha}.int8.onnx"
        if alpha is not None:
            smooth_graph(src, fp32, ranges, alpha)
        quantize(src if alpha is None else fp32, int8)
        tried.append({"alpha": alpha, **measure(int8)})
        for path in (fp32, int8):
            path.unlink(missing_ok=True)
    best = max(tried, key=lambda t: t["mean_cosine"])
    logger.info(
        "smoothing: alpha %s, mean cosine to the reference %.6f in dynamic int8 (%.6f without)",
        best["alpha"], best["mean_cosine"], tried[0]["mean_cosine"],
    )  # fmt: skip
    return best["alpha"], {"chosen_alpha": best["alpha"], "tried": tried}


def smoothed_source(
    graph: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    smooth: float | str,
    workdir: Path,
    *,
    measure: Callable[[Path], dict[str, float]],
    exclude: Sequence[str] = (),
    per_channel: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Path, dict[str, Any]]:
    """``graph`` smoothed as ``smooth`` asks: a strength, or "auto" (:func:`smooth_search`, each
    candidate in dynamic int8 less the ``exclude``d products, judged by ``measure``). The ranges
    come from ``feeds`` (one text each). Returns the graph to quantize (``graph`` itself where no
    smoothing won; else a file in ``workdir``) and the record."""

    progress(f"smoothing: activation ranges over {len(feeds)} texts")
    ranges = activation_ranges(graph, feeds)
    record: dict[str, Any] = {"calibration_texts": len(feeds)}
    alpha: float | None
    if smooth == "auto":

        def quantize(a: Path, b: Path) -> None:
            with quiet_quantizer():
                dynamic_int8(a, b, ops=["MatMul", "Attention"], exclude=exclude, per_channel=per_channel)

        alpha, searched = smooth_search(graph, ranges, measure, quantize, workdir, progress=progress)
        record |= searched
    else:
        alpha = float(smooth)
    if alpha is None:
        return graph, {**record, "alpha": None}
    out = workdir / "smoothed.onnx"
    return out, {**record, **smooth_graph(graph, out, ranges, alpha)}
