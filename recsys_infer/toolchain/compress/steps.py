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

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsys_infer.enums import Device, Precision, QuantMode, TowerChoice
from recsys_infer.errors import BundleError, ConfigError
from recsys_infer.indexing.reindex import reindex_bundle
from recsys_infer.runtime.bundle import MANIFEST, atomic_directory, read_manifest, sha256_file, write_manifest
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.manifest import CompressionStep, Manifest, ReferenceSpec, TowerSpec
from recsys_infer.runtime.schema import encode
from recsys_infer.runtime.users import trained_block, unit_rows
from recsys_infer.toolchain.compress.graphs import (
    Feeds,
    QuantizeConfig,
    fp16_graph,
    history_feeds,
    is_text_graph,
    matmuls_to_keep,
    optimize_graph,
    quantize_blockwise_graph,
    quantize_dynamic_graph,
    quantize_static_graph,
    text_feeds,
)
from recsys_infer.toolchain.compress.mixed import mixed_precision_graph, smoothed_request_graph
from recsys_infer.toolchain.export.fidelity import (
    Reference,
    StepInputs,
    check_answers,
    check_gate,
    measure_fidelity,
    probe_queries,
    reference_of,
)

from .share import share_weights

__all__ = [
    "QuantizeConfig",
    "StepResult",
    "check_gate",
    "derive_bundle",
    "measure_fidelity",
    "optimize_bundle",
    "probe_queries",
    "quantize_bundle",
    "reference_of",
]

logger = logging.getLogger(__name__)


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


# -- deriving a bundle ----------------------------------------------------------------------------

#: What a graph transform gets: source graph, destination, and the towers that will read it.
Transform = Callable[[Path, Path, list[str]], dict[str, Any]]

_USER_SIDE = ("user", "request")


def _chosen(towers: dict[str, Any], choice: TowerChoice) -> list[str]:
    if choice is TowerChoice.BOTH:
        return list(towers)
    wanted = _USER_SIDE if choice is TowerChoice.USER else ("item",)
    return [t for t in towers if t in wanted]


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
    inputs: StepInputs | None = None,
) -> StepResult:
    """Copy ``src`` to ``out`` with the chosen towers' graphs transformed, then measure the result
    against the reference and keep it only if it passes ``max_overlap_drop``. ``inputs``: the
    run's input and reference engines when the transform already loaded them."""
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise BundleError(
            "--out must differ from the input bundle: a compression step never modifies its input"
        )
    manifest = read_manifest(src)
    ref_path = reference_of(src, manifest, reference).resolve()
    inputs = inputs or StepInputs(src, ref_path)
    chosen = _chosen(dict(manifest.towers), TowerChoice(towers))
    if not chosen:
        raise BundleError(f"{src} has no {towers} tower to compress")
    stages = tqdm(
        total=3 + int(bool(reindex and "item" in chosen)),
        unit="stage",
        disable=not progress,
        desc=f"{step['step']}: {', '.join(sorted({manifest.towers[t].file for t in chosen}))}",
    )
    with atomic_directory(out, overwrite=overwrite) as tmp, stages:
        for name in manifest.files:
            shutil.copy2(src / name, tmp / name)
        towers_spec, graphs = _transform_graphs(
            src, tmp, manifest, chosen, step, transform, suffix, precision
        )
        shared = share_weights(tmp, {spec.file for spec in towers_spec.values()})
        stages.update()
        stages.set_description(f"{step['step']}: measuring fidelity against {ref_path.name}")
        index = manifest.index
        if "item" in chosen and not reindex:
            index = replace(index, built_with="the reference item tower (pass --reindex to rebuild)")
        draft = write_manifest(tmp, replace(manifest, towers=towers_spec, index=index))
        if reindex and "item" in chosen:
            reindex_bundle(tmp, None, tmp, overwrite=True, progress=progress,
                           built_with="the compressed item tower of this bundle (--reindex)")  # fmt: skip
            draft = read_manifest(tmp)
            stages.update()
        fidelity = _gated_fidelity(inputs.reference, tmp, max_overlap_drop, step["step"])
        stages.update()
        stages.set_description(f"{step['step']}: checking the written bundle")
        reindexed = bool(reindex and "item" in chosen)
        record = _step_record(step, fidelity, src, graphs, reindexed, shared)
        final = replace(
            draft,
            compression=(*draft.compression, record),
            reference=ReferenceSpec(str(ref_path), sha256_file(ref_path / MANIFEST)),
            fidelity={**fidelity, "measured_by": f"recsys-infer {step['step']}"},
        )
        write_manifest(tmp, final)
        check_answers(tmp, "the compressed bundle")
        stages.update()
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
    return StepResult(out, encode(record), fidelity, files, time.perf_counter() - started)


def _gated_fidelity(reference: Reference, bundle: Path, max_drop: float | None, step: str) -> dict[str, Any]:
    """``bundle``'s fidelity to the reference, refused past ``max_drop``."""
    fidelity = measure_fidelity(reference, Engine.load(bundle, device=Device.CPU, exact=True, verify=False))
    fidelity["reference"] = str(reference.engine.path)
    check_gate(
        fidelity,
        max_drop,
        f"{step} lowered",
        "Compress less (another mode such as blockwise, --keep-fp32 ffn-out, a lower ratio) "
        "or allow a larger drop.",
    )
    return fidelity


def _step_record(
    step: dict[str, Any],
    fidelity: dict[str, Any],
    src: Path,
    graphs: dict[str, Any],
    reindexed: bool,
    shared: dict[str, Any],
) -> CompressionStep:
    """The manifest's entry for this step: its settings, input, graphs and measured fidelity."""
    return CompressionStep(
        step=step["step"],
        fidelity=fidelity,
        extra={
            **{k: v for k, v in step.items() if k != "step"},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "input": {"bundle": str(src.resolve()), "manifest_sha256": sha256_file(src / MANIFEST)},
            "graphs": graphs,
            "shared_weights": shared,
            "reindexed": reindexed,
        },
    )


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


#: The file-name suffix of each mode's graphs.
_SUFFIX = {
    QuantMode.DYNAMIC: "int8",
    QuantMode.STATIC: "qdq",
    QuantMode.BLOCKWISE: "b8",
    QuantMode.FP16: "fp16",
    QuantMode.AUTO: "mixed",
}


def quantize_bundle(
    src: Path,
    out: Path,
    config: QuantizeConfig,
    *,
    reference: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> StepResult:
    """int8 (dynamic, static, blockwise or auto: mixed int8/fp32) or fp16 graphs for the chosen
    towers."""
    src = Path(src)
    manifest = read_manifest(src)
    max_drop = config.max_overlap_drop
    ref_path = reference_of(src, manifest, reference).resolve()
    if config.mode is QuantMode.AUTO:
        if config.towers is not TowerChoice.USER:
            raise ConfigError(
                "--mode auto searches the request path's text graph against request overlap; pass "
                "--tower user (quantize the item tower with --mode dynamic --reindex)"
            )
        # The target is a floor for every kind of query the new graphs serve, not for requests alone.
        max_drop = 1 - config.target_overlap if max_drop is None else max_drop
    inputs = StepInputs(src, ref_path)  # loaded once, for the transform and the measurement alike
    return derive_bundle(
        src, out, step=_quantize_record(config), transform=_quantizer(inputs, manifest, config),
        suffix=_SUFFIX[config.mode], towers=config.towers,
        precision=Precision.FP16 if config.mode is QuantMode.FP16 else Precision.INT8,
        reindex=config.reindex, max_overlap_drop=max_drop, reference=reference, overwrite=overwrite,
        progress=progress, inputs=inputs,
    )  # fmt: skip


def _quantize_record(config: QuantizeConfig) -> dict[str, Any]:
    """The manifest's record of a quantize step: the settings its mode reads."""
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
    if config.mode is QuantMode.AUTO:
        step |= {"target_overlap@10": config.target_overlap}
    if config.mode in (QuantMode.DYNAMIC, QuantMode.AUTO):
        step |= {"smooth": config.smooth}
    return step


def _quantizer(inputs: StepInputs, manifest: Manifest, config: QuantizeConfig) -> Transform:
    """The graph transform of ``config.mode``, for the graphs of the input bundle."""

    def transform(a: Path, b: Path, readers: list[str]) -> dict[str, Any]:
        if config.mode is QuantMode.AUTO and is_text_graph(a):
            return mixed_precision_graph(
                inputs, a, b, target=config.target_overlap, keep_fp32=config.keep_fp32,
                smooth=config.smooth_alpha, progress=lambda s: logger.info("auto: %s", s),
            )  # fmt: skip
        if config.mode is QuantMode.DYNAMIC and config.smooth_alpha is not None and is_text_graph(a):
            return _smoothed_dynamic(inputs, a, b, readers, config)
        if config.mode in (QuantMode.DYNAMIC, QuantMode.AUTO):  # auto: a history graph has no transformer
            return quantize_dynamic_graph(a, b, config)
        if config.mode is QuantMode.BLOCKWISE:
            return quantize_blockwise_graph(a, b, config)
        if config.mode is QuantMode.FP16:
            return fp16_graph(a, b)
        feeds = _calibration(inputs, manifest, readers, config.calibration_size)
        return quantize_static_graph(a, b, feeds, config)

    return transform


def _smoothed_dynamic(
    inputs: StepInputs, a: Path, b: Path, readers: list[str], config: QuantizeConfig
) -> dict[str, Any]:
    """Dynamic int8 of text graph ``a`` after smoothing, the strength chosen on the item side's
    catalogue or the request side's probe requests."""
    import onnx

    exclude = matmuls_to_keep(onnx.load(str(a)).graph, config.keep_fp32)
    alpha = config.smooth_alpha
    if alpha is None:  # pragma: no cover - the caller checks
        raise ConfigError("smoothing needs a strength")
    with tempfile.TemporaryDirectory(prefix="recsys-infer-smooth-") as tmp:
        if readers == ["item"]:
            source, smoothing = _smoothed_item_graph(
                inputs, a, Path(tmp), smooth=alpha, exclude=exclude, per_channel=config.per_channel,
            )  # fmt: skip
        else:
            source, smoothing = smoothed_request_graph(
                inputs, a, Path(tmp), smooth=alpha, exclude=exclude,
                per_channel=config.per_channel, progress=lambda s: logger.info("dynamic: %s", s),
            )  # fmt: skip
        return {**quantize_dynamic_graph(source, b, config), "smoothing": smoothing}


def _smoothed_item_graph(
    inputs: StepInputs,
    graph: Path,
    workdir: Path,
    *,
    smooth: float | str,
    exclude: list[str],
    per_channel: bool,
    calibration: int = 500,
    sample: int = 1000,
) -> tuple[Path, dict[str, Any]]:
    """The item tower's ``graph`` smoothed (``toolchain.compress.smooth.smoothed_source``): the graph to
    quantize and the record. The ranges come from ``calibration`` catalogue texts; each strength
    is judged in dynamic int8 by the mean cosine of ``sample`` other catalogue texts' vectors to
    the reference item tower's, encoded in batches as reindexing encodes the catalogue."""
    from recsys_infer.runtime.encoder import OnnxEncoder
    from recsys_infer.runtime.providers import create_session
    from recsys_infer.toolchain.compress.smooth import smoothed_source

    engine = inputs.source
    items, target = engine.item_encoder, inputs.reference.engine.item_encoder
    if not isinstance(items, OnnxEncoder):
        raise ConfigError(f"{inputs.src} has no ONNX item tower to smooth")
    texts = [item.text for item in engine.items(engine.item_ids)]
    every = max(1, len(texts) // (calibration + sample))
    spread = texts[::every]
    held, calib = spread[::2][:sample], spread[1::2][:calibration] or spread[:calibration]
    wanted = unit_rows(target.encode(held))

    def measure(path: Path) -> dict[str, float]:
        encoder = OnnxEncoder(create_session(path, Device.CPU), items.tokenizer, dim=items.dim)
        cos = np.sum(unit_rows(encoder.encode(held)) * wanted, axis=1)
        return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6)}

    source, record = smoothed_source(
        graph, [items.tokenizer([t]) for t in calib], smooth, workdir, measure=measure, exclude=exclude,
        per_channel=per_channel, progress=lambda s: logger.info("dynamic (item): %s", s),
    )  # fmt: skip
    return source, {**record, "measured_on": f"{len(held)} catalogue texts' item vectors"}


def _calibration(inputs: StepInputs, manifest: Manifest, readers: list[str], size: int) -> Feeds:
    """Real inputs for the towers that read one graph: validation users from the probe set for
    the user side, catalogue texts for the item side (never the test split)."""
    engine, src = inputs.source, inputs.src
    users, requests = probe_queries(engine, limit=size)
    tower = manifest.towers[readers[0]]
    if tower.kind == "sequence":
        vectors = np.load(src / manifest.index.vectors_file, allow_pickle=False)
        if manifest.fusion is not None:  # two spaces stored side by side: the graph reads the trained one
            vectors = trained_block(vectors, manifest.fusion)
        label = {item_id: i for i, item_id in enumerate(engine.item_ids)}
        return history_feeds(vectors, label, [q.history for q in users], tower.max_length)
    texts: list[str] = []
    per = max(1, size // len(readers))
    for name in readers:
        if name == "item":
            catalog = [i.text for i in engine.items(engine.item_ids)]
            texts += catalog[:: max(1, len(catalog) // per)][:per]
        elif name == "request":
            texts += [q.text or "" for q in requests][:per]
        else:
            texts += [engine.user_text(q) for q in users][:per]
    return text_feeds(src / manifest.tokenizer.file, manifest.tokenizer.pad_token, tower.max_length, texts)
