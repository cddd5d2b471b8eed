"""Outlier channels kept out of dynamic int8 (the kept precision ``int8-outliers`` of
``quantize --mode auto``).

Dynamic int8 gives an activation one scale, and a few channels far above the rest set it
(LLM.int8(): Dettmers et al., 2022, arXiv:2208.07339, found the same in larger transformers).
Smoothing (:mod:`.smooth`) flattens most of them, but on the ml-latest-small request graph the
first layer's FFN output still costs ten times more fidelity in int8 than any other product, so
`--mode auto` used to keep that product whole in fp32. Here a product ``X W`` is split instead:

- the ``k`` channels of ``X`` with the largest calibrated ranges are zeroed in its int8 input
  (folded into the smoothing ``Mul``'s scale where one precedes it, else a ``Mul`` by a 0/1 mask)
  and the matching rows of ``W`` are zeroed, so neither sets a scale any more;
- those ``k`` channels run in fp32 through a small side product: ``Gather`` of the channels,
  ``MatMul`` with the ``k`` rows of ``W``, ``Add`` to the int8 product's output (after its bias,
  so ONNX Runtime still fuses the bias into ``DynamicQuantizeMatMul``).

In fp32 the split graph computes the same function. It costs three small operators, where an
fp32 product of an FFN output costs two to three times its int8 form.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import ConfigError
from recsys_infer.toolchain.compress.smooth import activation_ranges

#: Channels per product kept in fp32: 8 of the FFN output's 1,536 (0.5% of the product) held the
#: first layer's FFN output of the ml-latest-small request graph, smoothed, to the fidelity of
#: fp32 on the probe's requests.
CHANNELS = 8
#: The suffix of the nodes and initializers the split adds.
SUFFIX = "_outliers"


def outlier_channels(
    graph: Path, feeds: Sequence[dict[str, np.ndarray]], nodes: Sequence[str], k: int = CHANNELS
) -> dict[str, np.ndarray]:
    """For each MatMul named in ``nodes``, the ``k`` channels of its input with the largest
    absolute values over ``feeds`` (one text each), sorted."""
    import onnx

    if k < 1:
        raise ConfigError(f"the number of outlier channels must be positive, got {k}")
    by_name = {n.name: n for n in onnx.load(str(graph), load_external_data=False).graph.node}
    missing = [name for name in nodes if name not in by_name]
    if missing:
        raise ConfigError(f"{graph.name} has no node {missing[0]!r}")
    inputs = {name: by_name[name].input[0] for name in nodes}
    ranges = activation_ranges(graph, feeds, sorted(set(inputs.values())))
    return {name: np.sort(np.argsort(-ranges[x], kind="stable")[:k]) for name, x in inputs.items()}


class _Graph:
    """A graph being edited: its nodes as a list of detached copies (written back by ``save``),
    its initializers by name, and who reads each tensor."""

    def __init__(self, src: Path) -> None:
        import onnx

        self.model = onnx.load(str(src))
        self.nodes: list[Any] = []
        for original in self.model.graph.node:
            self.nodes.append(onnx.NodeProto())
            self.nodes[-1].CopyFrom(original)
        self.weights = {t.name: t for t in self.model.graph.initializer}
        self.producers = {out: n for n in self.nodes for out in n.output}
        self.readers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.weights[name]).copy()

    def set(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        if name in self.weights:
            self.weights[name].CopyFrom(numpy_helper.from_array(value, name))
        else:
            self.model.graph.initializer.append(numpy_helper.from_array(value, name))
            self.weights[name] = self.model.graph.initializer[-1]

    def insert(self, new: Sequence[Any], *, before: Any = None, after: Any = None) -> None:
        at = next(i for i, n in enumerate(self.nodes) if n is (before if before is not None else after))
        self.nodes[at + (after is not None) : at + (after is not None)] = list(new)

    def save(self, dst: Path) -> None:
        import onnx

        del self.model.graph.node[:]
        self.model.graph.node.extend(self.nodes)
        onnx.save(self.model, str(dst))


def _split_one(g: _Graph, node: Any, idx: np.ndarray) -> None:
    """Split one MatMul ``node`` (see the module docstring) on input channels ``idx``."""
    from onnx import helper

    name = node.name
    weight = g.array(node.input[1])
    if weight.ndim != 2:
        raise ConfigError(f"the weight of {name!r} has shape {weight.shape}; only 2-D weights split")
    side = weight[idx].copy()
    weight[idx] = 0.0
    g.set(node.input[1], weight)
    x = node.input[0]
    mul = g.producers.get(x)
    scale = mul.input[1] if mul is not None and mul.op_type == "Mul" else ""
    folds = (
        scale in g.weights
        and list(g.weights[scale].dims) == [weight.shape[0]]
        and len(g.readers[scale]) == len(g.readers[x]) == 1
    )
    if mul is not None and folds:
        # A per-channel Mul (smoothing) feeds only this product: the side product reads the Mul's
        # input with the scale folded into its rows, and the Mul's scale zeroes the channels.
        inverse = g.array(scale)
        side *= inverse[idx][:, None]
        inverse[idx] = 0.0
        g.set(scale, inverse)
        source, extra = mul.input[0], []
    else:
        mask = np.ones(weight.shape[0], dtype=np.float32)
        mask[idx] = 0.0
        g.set(f"{name}{SUFFIX}_mask", mask)
        node.input[0] = f"{name}{SUFFIX}_masked"
        extra = [
            helper.make_node("Mul", [x, f"{name}{SUFFIX}_mask"], [node.input[0]], name=f"{name}{SUFFIX}_mask")
        ]
        source = x
    g.set(f"{name}{SUFFIX}_channels", idx)
    g.set(f"{name}{SUFFIX}_weight", side)
    gather = helper.make_node(
        "Gather",
        [source, f"{name}{SUFFIX}_channels"],
        [f"{name}{SUFFIX}_input"],
        name=f"{name}{SUFFIX}_gather",
        axis=-1,
    )
    product = helper.make_node(
        "MatMul",
        [f"{name}{SUFFIX}_input", f"{name}{SUFFIX}_weight"],
        [f"{name}{SUFFIX}_output"],
        name=f"{name}{SUFFIX}",
    )
    g.insert([*extra, gather, product], before=node)
    # The side product joins after the bias Add where there is one, so the bias stays fused.
    last, readers = node, g.readers.get(node.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Add" and any(i in g.weights for i in readers[0].input):
        last = readers[0]
    total, last.output[0] = last.output[0], f"{name}{SUFFIX}_int8_part"
    join = helper.make_node(
        "Add", [last.output[0], f"{name}{SUFFIX}_output"], [total], name=f"{name}{SUFFIX}_add"
    )
    g.insert([join], after=last)


def split_outliers(src: Path, dst: Path, channels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write ``src`` with each MatMul named in ``channels`` split (see the module docstring): its
    listed input channels in an fp32 side product, the rest left for int8."""
    g = _Graph(src)
    by_name = {n.name: n for n in g.nodes}
    for name, picked in channels.items():
        node = by_name.get(name)
        if node is None or node.op_type != "MatMul" or node.input[1] not in g.weights:
            raise ConfigError(f"{name!r} is not a MatMul with a weight initializer in {src.name}")
        if len(g.readers[node.input[1]]) != 1:
            raise ConfigError(f"the weight of {name!r} is shared with other nodes; it cannot be split")
        _split_one(g, node, np.asarray(picked, dtype=np.int64))
    g.save(dst)
    return {"channels": {n: [int(c) for c in v] for n, v in sorted(channels.items())}}
