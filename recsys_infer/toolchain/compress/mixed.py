"""Fidelity-aware mixed precision for a BERT-style text graph (``quantize --mode auto``).

Dynamic int8 is the fastest kernel ONNX Runtime has on a CPU, but one scale per activation
tensor costs a request path its top-10 (near-tied scores reshuffle). The error is not spread
evenly: a few matrix products (the early layers' FFN and attention outputs, whose inputs carry
outlier channels 20-46x their median) cause most of it. The search below runs the tolerant
products in dynamic int8 (``DynamicQuantizeMatMul``, and ``QAttention`` for fused attention)
and keeps the others in a more faithful precision:

1. **Units.** The graph's matrix products, grouped as a transformer layer has them: the fused
   attention (Q, K and V), the attention output, the FFN input and output of every layer, and the
   trained head.
2. **The kept precision, measured.** A kept matrix product runs in the fastest of these forms
   that is faster than fp32 on this CPU at both 64 tokens and the probe's real request lengths
   (every kept unit in it, measured interleaved), else in fp32:

   - *int8 with outliers* (:mod:`.outliers`): dynamic int8 with the input channels of largest
     calibrated range in a small fp32 side product, so they no longer set the int8 scale;
   - *blockwise int8* (``MatMulNBits``: int8 products with a scale per block of 128 weights and
     of 128 activations, so an outlier spoils only its block). On a CPU with VNNI it is 1.5x to
     2x faster than fp32; on an AVX2-only CPU it is slower than fp32 at 64 tokens.

   A fused attention has neither form, so a kept attention stays fp32.
3. **Sensitivity.** Each unit alone in dynamic int8 (the rest fp32): the mean cosine distance of
   the probe's request vectors to the reference's. The probe holds validation data, never the
   test split.
4. **Greedy choice.** Units ordered by sensitivity per weight (the cheapest error per byte of
   weights moved to int8 first); a binary search finds the most units that can run in dynamic
   int8 while the measured request overlap@10 holds the target; the others keep their kept
   precision. Where even the most faithful plan in one kept form misses the target, the search
   runs again with the next form, and last with fp32 kept units.
5. **Per tensor where it holds.** Where one weight scale per matrix (:data:`INT8_TENSOR`) runs
   faster than one per output column on this CPU (every unit each way, measured interleaved),
   the chosen plan's int8 units are moved to it alone in turn, ordered by the mean cosine each
   costs per weight, and a second binary search finds how many can go while the target holds.
6. **Measured, not assumed.** Every candidate's overlap is measured on the probe's requests; the
   chosen graph's batch-1 latency is measured against fp32 and all-int8, interleaved, and the
   whole search is written into the manifest's compression record.

When even the most faithful candidate misses the target, the search says so, with the best it
found, and writes nothing.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.enums import Device
from recsys_infer.errors import ConfigError, FidelityError
from recsys_infer.ranking import overlap, top_k
from recsys_infer.runtime.encoder import OnnxEncoder
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.providers import create_session
from recsys_infer.runtime.types import Query
from recsys_infer.runtime.users import SequenceUserEncoder, TextUserEncoder
from recsys_infer.toolchain.compress.graphs import (
    Unit,
    blockwise_int8,
    dynamic_int8,
    graph_units,
    matmuls_to_keep,
    quiet_quantizer,
)
from recsys_infer.toolchain.compress.outliers import outlier_channels, split_outliers
from recsys_infer.toolchain.compress.smooth import smoothed_source
from recsys_infer.toolchain.export.fidelity import Reference, StepInputs, served_vectors

logger = logging.getLogger(__name__)


class UnitForm(StrEnum):
    """What a unit can run in: dynamic int8 (``INT8``; ``INT8_TENSOR`` with one weight scale for
    the whole matrix instead of one per output column: less faithful, and on a short request
    faster, as measured in benchmarks/studies/README.md, int8_scales); dynamic int8 with its
    input's outlier channels in an fp32 side product (``OUTLIERS``, :mod:`.outliers`); blockwise
    int8 (``BLOCKWISE``, MatMulNBits); fp32. ``OUTLIERS`` and ``BLOCKWISE`` are forms of matrix
    products only."""

    INT8 = "int8"
    INT8_TENSOR = "int8-tensor"
    OUTLIERS = "int8-outliers"
    BLOCKWISE = "int8-blockwise"
    FP32 = "fp32"


INT8, INT8_TENSOR, OUTLIERS, BLOCKWISE, FP32 = UnitForm  # the names the plans and records use
#: The kept precisions a search may try before fp32, each where it runs faster than fp32.
KEPT_FORMS = (OUTLIERS, BLOCKWISE)
#: Block size of blockwise kept units: on the ml-latest-small request graph (VNNI CPU), 128 ran
#: 1.24x faster than 64 at 64 tokens for the same overlap@10 (0.946 against 0.948).
KEPT_BLOCK = 128


def _products(graph: Path, *, but: Sequence[str]) -> list[str]:
    """The graph's matrix products (MatMul, Gemm, Attention nodes), less ``but``."""
    import onnx

    keep = set(but)
    nodes = onnx.load(str(graph)).graph.node
    return [n.name for n in nodes if n.op_type in ("MatMul", "Gemm", "Attention") and n.name not in keep]


def build_mixed(
    src: Path,
    dst: Path,
    units: Sequence[Unit],
    plan: dict[str, str],
    *,
    outliers: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write ``src`` with each unit in the precision ``plan`` gives it (fp32 where it gives none).
    Units in :data:`OUTLIERS` take their channels from ``outliers`` (by node name)."""

    unknown = set(plan.values()) - {INT8, INT8_TENSOR, OUTLIERS, BLOCKWISE, FP32}
    if unknown:
        raise ConfigError(f"unknown precisions {sorted(unknown)}")
    chosen = {u.name: plan.get(u.name, FP32) for u in units}
    formless = [u.name for u in units if u.op_type != "MatMul" and chosen[u.name] in (BLOCKWISE, OUTLIERS)]
    if formless:
        raise ConfigError(f"only MatMul units have blockwise and outlier forms, not {formless}")
    nodes = {
        p: [n for u in units if chosen[u.name] == p for n in u.nodes]
        for p in (INT8, INT8_TENSOR, OUTLIERS, BLOCKWISE)
    }
    outliers = outliers or {}
    unpicked = [n for n in nodes[OUTLIERS] if n not in outliers]
    if unpicked:
        raise ConfigError(f"no outlier channels were calibrated for {unpicked}")
    with quiet_quantizer(), tempfile.TemporaryDirectory(prefix="recsys-infer-mixed-") as tmp:
        split_record = None
        if nodes[OUTLIERS]:  # split first; the int8 halves then go with the int8 units
            split = Path(tmp) / "split.onnx"
            split_record = split_outliers(src, split, {n: outliers[n] for n in nodes[OUTLIERS]})
            src, nodes[INT8] = split, nodes[INT8] + nodes[OUTLIERS]
        if nodes[INT8_TENSOR]:  # each pass leaves every product but its own as it is
            tensor = Path(tmp) / "int8-tensor.onnx"
            dynamic_int8(
                src, tensor, ops=["MatMul", "Attention"], exclude=_products(src, but=nodes[INT8_TENSOR]),
                per_channel=False,
            )  # fmt: skip
            src = tensor
        step = src
        if nodes[INT8]:  # every other product (kept units, and any outside ``units``) stays as it is
            step = dst if not nodes[BLOCKWISE] else Path(tmp) / "int8.onnx"
            dynamic_int8(src, step, ops=["MatMul", "Attention"], exclude=_products(src, but=nodes[INT8]))
        if nodes[BLOCKWISE]:
            blockwise_int8(step, dst, block_size=KEPT_BLOCK, exclude=_products(step, but=nodes[BLOCKWISE]))
        elif step == src:
            shutil.copyfile(src, dst)
    return {
        "plan": chosen,
        "int8_units": len([p for p in chosen.values() if p in (INT8, INT8_TENSOR)]),
        **(
            {"per_tensor_units": sum(p == INT8_TENSOR for p in chosen.values())} if nodes[INT8_TENSOR] else {}
        ),
        **(
            {"outlier_units": len([p for p in chosen.values() if p == OUTLIERS]), "outliers": split_record}
            if split_record
            else {}
        ),
        "blockwise_units": len([p for p in chosen.values() if p == BLOCKWISE]),
        "units": len(chosen),
    }


class GraphProbe:
    """The probe's queries through candidate text graphs, against the reference's vectors.

    ``engine`` is the bundle whose request-path graph is being replaced (loaded with exact
    search), ``reference`` the uncompressed bundle. A candidate is swapped into ``engine``'s
    request path for one measurement (so vectors are made exactly as the engine makes them) and
    is never written into a bundle. ``groups`` are the query kinds that read the graph: requests
    for a sequence bundle's request tower; history users and requests for a text user tower.
    A candidate's overlap@10 is the lowest over the groups.
    """

    def __init__(
        self, engine: Engine, reference: Reference, groups: Sequence[str], *, threads: int | None
    ) -> None:

        encoder = engine.request_encoder
        if not isinstance(encoder, OnnxEncoder):
            raise ConfigError("the mixed-precision search needs the bundle's own ONNX request encoder")
        self._engine = engine
        self._original = encoder
        self.tokenizer = encoder.tokenizer
        self.dim = encoder.dim
        self._threads = threads
        self._items = reference.items
        self._groups = {name: reference.queries[name] for name in groups if reference.queries[name]}
        self._ref = {name: reference.served(name) for name in self._groups}
        self._ref_top = {name: top_k(v, self._items, 10) for name, v in self._ref.items()}

    def encoder(self, graph: Path) -> OnnxEncoder:
        session = create_session(graph, Device.CPU, threads=self._threads)
        return OnnxEncoder(session, self.tokenizer, dim=self.dim)

    def _swap(self, encoder: OnnxEncoder) -> None:
        users = self._engine.user_encoder
        if isinstance(users, SequenceUserEncoder):
            users.requests = encoder
        elif isinstance(users, TextUserEncoder):
            users.encoder = encoder

    def measure(self, graph: Path) -> dict[str, float]:

        self._swap(self.encoder(graph))
        try:
            vectors = {name: served_vectors(self._engine, q) for name, q in self._groups.items()}
        finally:
            self._swap(self._original)
        overlaps = {
            name: overlap(self._ref_top[name], top_k(v, self._items, 10)) for name, v in vectors.items()
        }
        cos = np.concatenate([np.sum(v * self._ref[name], axis=1) for name, v in vectors.items()])
        return {
            "overlap@10": round(min(overlaps.values()), 4),
            **{f"{name}_overlap@10": round(o, 4) for name, o in overlaps.items()},
            "mean_cosine": round(float(cos.mean()), 6),
            "min_cosine": round(float(cos.min()), 6),
        }

    def latency(
        self, graphs: dict[str, Path], *, texts: Sequence[str], rounds: int = 3
    ) -> dict[str, dict[str, float]]:
        """Batch-1 p50 (ms) of each graph on ``texts`` (tokenised as served) and on a 64-token
        text, the graphs interleaved round by round."""
        encoders = {name: self.encoder(path) for name, path in graphs.items()}
        real = [self.tokenizer([t]) for t in texts]
        long = self.tokenizer([" ".join(["word"] * 62)])
        samples: dict[str, dict[str, list[float]]] = {n: {"real": [], "64": []} for n in encoders}
        for _ in range(rounds):
            for name, enc in encoders.items():
                for feats in real[:5]:
                    enc.run(feats)
                for key, feeds in (("real", real), ("64", [long] * 40)):
                    for feats in feeds:
                        t = time.perf_counter_ns()
                        enc.run(feats)
                        samples[name][key].append((time.perf_counter_ns() - t) / 1e6)
        return {
            n: {
                "p50_ms_real": round(float(np.median(s["real"])), 4),
                "p50_ms_64_tokens": round(float(np.median(s["64"])), 4),
            }
            for n, s in samples.items()
        }


@dataclass
class SearchResult:
    plan: dict[str, str]
    fidelity: dict[str, float]
    record: dict[str, Any]


def _kept(units: Sequence[Unit], precision: str) -> dict[str, str]:
    """Every unit in its kept precision: ``precision`` where it has that form, fp32 elsewhere."""
    return {u.name: precision if precision == FP32 or u.op_type == "MatMul" else FP32 for u in units}


def _most_passing(
    measure: Callable[[int], dict[str, float]], n: int, target: float
) -> dict[int, dict[str, float]]:
    """Bisect ``k`` in [0, n] for the largest whose overlap@10 holds ``target``, assuming overlap
    falls as ``k`` grows; every measurement made, by ``k``. ``n`` is tried first (all in int8),
    then 0 (none); when 0 misses, nothing holds."""
    results = {n: measure(n)}
    if results[n]["overlap@10"] >= target or n == 0:
        return results
    results[0] = measure(0)
    lo, hi = 0, n  # invariant once 0 holds: lo holds the target, hi does not
    while results[0]["overlap@10"] >= target and hi - lo > 1:
        mid = (lo + hi) // 2
        results[mid] = measure(mid)
        lo, hi = (mid, hi) if results[mid]["overlap@10"] >= target else (lo, mid)
    return results


def search_plan(
    src: Path,
    units: Sequence[Unit],
    probe: GraphProbe,
    *,
    target: float,
    workdir: Path,
    kept: Sequence[str] = (FP32,),
    outliers: dict[str, np.ndarray] | None = None,
    per_tensor: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> SearchResult:
    """The plan with the most units in dynamic int8 whose request overlap@10 holds ``target``,
    the others in the first of the ``kept`` precisions that lets some plan hold it (``outliers``:
    the calibrated channels, for :data:`OUTLIERS`). With ``per_tensor``, as many of its int8
    units then move to :data:`INT8_TENSOR` as the target allows (:func:`_per_tensor_stage`)."""

    def trial(name: str, plan: dict[str, str]) -> dict[str, float]:
        path = workdir / f"{name}.onnx"
        build_mixed(src, path, units, plan, outliers=outliers)
        measured = probe.measure(path)
        path.unlink()
        return measured

    sensitivity: dict[str, float] = {}
    for i, unit in enumerate(units):
        progress(f"sensitivity {i + 1}/{len(units)}: {unit.name}")
        measured = trial(f"only-{i}", {unit.name: INT8})
        sensitivity[unit.name] = round(1.0 - measured["mean_cosine"], 8)
    # The cheapest error per weight first: moving those to int8 buys the most speed per loss.
    order = sorted(units, key=lambda u: sensitivity[u.name] / max(u.weights, 1))
    record: dict[str, Any] = {
        "target_overlap@10": target,
        "sensitivity": sensitivity,
        "order": [u.name for u in order],
        "tried": [],
    }

    def plan(precision: str, k: int) -> dict[str, str]:
        return {**_kept(units, precision), **{u.name: INT8 for u in order[:k]}}

    def candidate(precision: str, k: int) -> dict[str, float]:
        progress(f"candidate: {k} of {len(units)} units in int8, the rest {precision}")
        measured = trial(f"k{k}", plan(precision, k))
        record["tried"].append({"kept": precision, "int8_units": k, **measured})
        return measured

    best_seen: tuple[float, str] = (-1.0, "")
    for precision in kept:
        results = _most_passing(functools.partial(candidate, precision), len(units), target)
        best = max((k for k, r in results.items() if r["overlap@10"] >= target), default=None)
        if best is None:
            best_seen = max(best_seen, (results[0]["overlap@10"], precision))
            continue
        record["kept"] = precision
        record["tried"].sort(key=lambda t: (t["kept"] != precision, t["int8_units"]))
        chosen, fidelity = plan(precision, best), results[best]
        if per_tensor:
            chosen, fidelity, record["per_tensor"] = _per_tensor_stage(
                chosen, fidelity, units, trial, target=target, progress=progress
            )
        return SearchResult(chosen, fidelity, record)
    raise FidelityError(
        f"no mixed-precision graph holds request overlap@10 {target}: the most faithful candidate "
        f"(no unit in dynamic int8, the rest {best_seen[1]}) reaches {best_seen[0]:.4f}. With fp32 "
        "that is the input graph as it is: the input bundle itself is below the target (pruned?). "
        "Lower --target-overlap or start from a less compressed bundle."
    )


def _per_tensor_stage(
    chosen: dict[str, str],
    fidelity: dict[str, float],
    units: Sequence[Unit],
    trial: Callable[[str, dict[str, str]], dict[str, float]],
    *,
    target: float,
    progress: Callable[[str], None],
) -> tuple[dict[str, str], dict[str, float], dict[str, Any]]:
    """``chosen`` (which holds ``target`` at ``fidelity``) with as many of its int8 units in
    :data:`INT8_TENSOR` as still hold it: each int8 unit alone moved, its cost the mean cosine
    it loses; the cheapest per weight first; a bisection for how many. The plan, its fidelity and
    the record."""
    movable = [u for u in units if chosen[u.name] == INT8]
    sensitivity: dict[str, float] = {}
    for i, unit in enumerate(movable):
        progress(f"per-tensor sensitivity {i + 1}/{len(movable)}: {unit.name}")
        measured = trial(f"tensor-{i}", {**chosen, unit.name: INT8_TENSOR})
        sensitivity[unit.name] = round(max(0.0, fidelity["mean_cosine"] - measured["mean_cosine"]), 8)
    order = sorted(movable, key=lambda u: sensitivity[u.name] / max(u.weights, 1))
    tried: list[dict[str, Any]] = []

    def plan(k: int) -> dict[str, str]:
        return {**chosen, **{u.name: INT8_TENSOR for u in order[:k]}}

    def measure(k: int) -> dict[str, float]:
        if k == 0:  # the plan as it came, measured already
            return fidelity
        progress(f"candidate: {k} of {len(movable)} int8 units per tensor")
        measured = trial(f"t{k}", plan(k))
        tried.append({"per_tensor_units": k, **measured})
        return measured

    results = _most_passing(measure, len(movable), target)
    best = max(k for k, r in results.items() if r["overlap@10"] >= target)
    record = {
        "sensitivity": sensitivity,
        "order": [u.name for u in order],
        "tried": sorted(tried, key=lambda t: t["per_tensor_units"]),
        "units": best,
    }
    return plan(best), results[best], record


def _timed(
    graph: Path,
    units: Sequence[Unit],
    plans: dict[str, dict[str, str] | None],
    probe: GraphProbe,
    requests: Sequence[Query],
    workdir: Path,
    *,
    outliers: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency of ``graph`` built with each of ``plans`` (None: as it is), the graphs
    interleaved on the first 200 of ``requests`` and at 64 tokens (:meth:`GraphProbe.latency`)."""
    graphs = {name: graph if plan is None else workdir / f"timed-{name}.onnx" for name, plan in plans.items()}
    try:
        for name, plan in plans.items():
            if plan is not None:
                build_mixed(graph, graphs[name], units, plan, outliers=outliers)
        return probe.latency(graphs, texts=[q.text or "" for q in requests[:200]])
    finally:
        for name, plan in plans.items():
            if plan is not None:
                graphs[name].unlink(missing_ok=True)


def _kept_precisions(
    graph: Path,
    units: Sequence[Unit],
    probe: GraphProbe,
    requests: Sequence[Query],
    workdir: Path,
    progress: Callable[[str], None],
    *,
    outliers: dict[str, np.ndarray] | None = None,
    forms: Sequence[str] = KEPT_FORMS,
) -> dict[str, Any]:
    """The kept precisions to try, fastest first: each of ``forms`` that is faster than fp32 on
    this CPU at both 64 tokens and real request lengths (every kept unit in it, measured
    interleaved), then fp32."""
    progress(f"timing {', '.join(forms)} against fp32 for the kept units")
    plans = {FP32: None, **{form: _kept(units, form) for form in forms}}
    latency = _timed(graph, units, plans, probe, requests, workdir, outliers=outliers)
    faster = [f for f in forms if all(latency[f][key] < latency[FP32][key] for key in latency[FP32])]
    faster.sort(key=lambda f: sum(latency[f][key] / latency[FP32][key] for key in latency[FP32]))
    return {"try": [*faster, FP32], "latency": latency}


def _per_tensor_timing(
    graph: Path, units: Sequence[Unit], probe: GraphProbe, requests: Sequence[Query], workdir: Path
) -> dict[str, Any]:
    """Whether :data:`INT8_TENSOR` is faster than :data:`INT8` on this CPU at both 64 tokens and
    real request lengths (every unit in it, measured interleaved); where it is not, the search
    never trades fidelity for it."""
    plans: dict[str, dict[str, str] | None] = {p: {u.name: p for u in units} for p in (INT8, INT8_TENSOR)}
    latency = _timed(graph, units, plans, probe, requests, workdir)
    faster = all(latency[INT8_TENSOR][key] < latency[INT8][key] for key in latency[INT8])
    return {"faster": faster, "latency": latency}


def request_probe(
    inputs: StepInputs, *, threads: int | None = None
) -> tuple[GraphProbe, list[Query], list[dict[str, np.ndarray]]]:
    """The probe for the input bundle's request-path text graph against the reference; the
    probe's requests; and, tokenised one by one, the texts the graph reads for them (for a text
    user tower, the users' texts too), which calibrate smoothing."""
    engine, ref = inputs.source, inputs.reference
    requests, users = ref.queries["request"], ref.queries["user"]
    if not requests:
        raise FidelityError(
            f"no probe request could be built for {inputs.reference_path}: nothing to measure the search on"
        )
    groups, texts = ["request"], [q.text or "" for q in requests]
    if isinstance(engine.user_encoder, TextUserEncoder):
        groups.append("user")
        texts += [engine.user_text(q) for q in users]
    probe = GraphProbe(engine, ref, groups, threads=threads)
    return probe, requests, [probe.tokenizer([t]) for t in texts]


def smoothed_request_graph(
    inputs: StepInputs,
    graph: Path,
    workdir: Path,
    *,
    smooth: float | str,
    exclude: Sequence[str] = (),
    per_channel: bool = True,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Path, dict[str, Any]]:
    """The input bundle's request-path text ``graph`` smoothed (:func:`.smooth.smoothed_source`,
    calibrated and searched on the probe's requests): the graph to quantize and the record."""
    probe, _, feeds = request_probe(inputs, threads=threads)
    return smoothed_source(
        graph, feeds, smooth, workdir, measure=probe.measure, exclude=exclude, per_channel=per_channel,
        progress=progress,
    )  # fmt: skip


def mixed_precision_graph(
    inputs: StepInputs,
    graph: Path,
    dst: Path,
    *,
    target: float,
    keep_fp32: Sequence[str] = (),
    smooth: float | str | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Search and write the mixed-precision form of the input bundle's request-path text ``graph``
    (smoothed first when ``smooth`` asks); the record of the search (smoothing, sensitivities,
    candidates, the plan, measured latency against ``graph`` as it came)."""
    import onnx

    probe, requests, feeds = request_probe(inputs, threads=threads)
    model = onnx.load(str(graph))
    fixed = set(matmuls_to_keep(model.graph, keep_fp32))
    units = [u for u in graph_units(model) if not fixed & set(u.nodes)]
    if not units:
        raise ConfigError(f"{graph.name} has no matrix product left to quantize")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recsys-infer-auto-") as tmp:
        source, smoothing = graph, None
        if smooth is not None:
            source, smoothing = smoothed_source(
                graph,
                feeds,
                smooth,
                Path(tmp),
                measure=probe.measure,
                exclude=sorted(fixed),
                progress=progress,
            )

        progress("outlier channels")
        products = [n for u in units if u.op_type == "MatMul" for n in u.nodes]
        outliers = outlier_channels(source, feeds, products) if products else {}
        kept = _kept_precisions(source, units, probe, requests, Path(tmp), progress, outliers=outliers)
        progress(f"timing {INT8_TENSOR} against {INT8}")
        per_tensor = _per_tensor_timing(source, units, probe, requests, Path(tmp))
        result = search_plan(
            source, units, probe, target=target, workdir=Path(tmp), kept=kept["try"], outliers=outliers,
            per_tensor=per_tensor["faster"], progress=progress,
        )  # fmt: skip
        built = build_mixed(source, dst, units, result.plan, outliers=outliers)
        progress("measuring latency")
        latency = probe.latency({"input": graph, "mixed": dst}, texts=[q.text or "" for q in requests[:200]])
    speedup = {key: round(latency["input"][key] / latency["mixed"][key], 3) for key in latency["input"]}
    logger.info(
        "auto: %d of %d units in dynamic int8, request overlap@10 %.4f (target %.2f), %.2fx faster "
        "on real requests, %.2fx at 64 tokens",
        built["int8_units"], built["units"], result.fidelity["overlap@10"], target,
        speedup["p50_ms_real"], speedup["p50_ms_64_tokens"],
    )  # fmt: skip
    return {
        **built,
        "kept_fp32": sorted(fixed),
        **({"smoothing": smoothing} if smoothing is not None else {}),
        "search": {
            **result.record,
            "kept_precision": kept,
            "per_tensor_timing": per_tensor,
            "chosen": result.fidelity,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "latency": {**latency, "speedup_vs_input": speedup, "threads": threads},
    }
