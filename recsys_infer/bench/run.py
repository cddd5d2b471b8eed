"""``recsys-infer bench``: every variant side by side, in one run, against the PyTorch reference.

The order of work: load every subject; measure each bundle's memory in a fresh interpreter;
time all subjects interleaved (rounds × measurements × subjects); split a recommendation's time
into its parts; measure quality (overlap with the reference's recommendations, and the test
split's Recall/NDCG); sweep the HNSW index; then write the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data import Dataset, leave_one_out, load_dataset
from recsys_infer.data.probe import request_from_item
from recsys_infer.enums import Backend, Device, Spin
from recsys_infer.errors import ConfigError, DataError
from recsys_infer.evaluation.metrics import (
    EvalResult,
    eval_examples,
    evaluate,
    paired_difference,
    sample_examples,
)
from recsys_infer.evaluation.recommenders import EngineRecommender
from recsys_infer.ranking import overlap, recall_at_k, top_k
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.index import HnswIndex, HnswParams
from recsys_infer.runtime.providers import parse_device, plan_placement

from .subjects import Subject, bundle_subject, item_vectors, measure_memory, text_side
from .timing import Call, Stopwatch, TimedCallable, TimedMethod, interleaved, percentiles, timed

logger = logging.getLogger(__name__)

SCHEMA = "recsys-infer/bench"
SCHEMA_VERSION = 1
FIXED_LENGTHS = (32, 64, 128)


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. ``quick`` shrinks everything for a smoke test (the tiny model in CI)."""

    threads: int = 2
    rounds: int = 5
    calls: int = 40  # timed calls per measurement per round (batch-1 measurements)
    batch_calls: int = 6  # timed calls of the batch-32 measurement per round
    batch_size: int = 32
    users: int | None = None  # test users for quality (None: all)
    overlap_users: int = 500
    catalogue_texts: int = 512
    ef_sweep: tuple[int, ...] = (10, 20, 40, 80, 160, 320)
    hnsw_queries: int = 500
    peers: bool = True
    bf16: bool = True
    memory: bool = True
    quick: bool = False
    # Where every subject runs: the bundles, the PyTorch reference and the peers alike. ``auto``
    # is resolved once, to the GPU where ONNX Runtime has one and else the CPU.
    device: str = "auto"
    # When ONNX Runtime's threads busy-wait (a Spin). The subjects share one process and two
    # cores: spinning after each run (``always``), the idle threads of the subject timed last
    # stole the cores of the next, which put recommend's p99 at 3x its p50 (benchmarks/README.md,
    # "The tail"). ``run`` stops them when a run returns, and keeps what spinning buys a lone
    # engine within each run; ``never`` makes every operator that splits its work wake them.
    spin: Spin = Spin.RUN
    warmup: int = 5  # untimed calls before each subject's block of calls
    # Every bundle runs under each of these runtimes (recsys_infer.enums.Backend); a bundle whose
    # item tower runs on another runtime than ONNX Runtime re-encodes its catalogue through it
    # first, so its quality is measured after reindexing, as a catalogue encoded there would serve.
    backends: tuple[str, ...] = ("onnxruntime",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spin", Spin.of(self.spin))
        if self.threads < 1 or self.rounds < 1 or self.calls < 1 or self.batch_calls < 1:
            raise ConfigError("threads, rounds, calls and batch_calls must be positive")
        if parse_device(self.device)[0] is Device.AUTO:  # bench measures one device, named
            placement = plan_placement(Device.AUTO, ())
            gpu = placement.device is not Device.CPU
            object.__setattr__(self, "device", f"{placement.device}:{placement.index}" if gpu else "cpu")

    @classmethod
    def quick_mode(cls, **overrides: Any) -> BenchConfig:
        settings: dict[str, Any] = {
            "rounds": 2,
            "calls": 8,
            "batch_calls": 2,
            "users": 60,
            "overlap_users": 40,
            "catalogue_texts": 64,
            "ef_sweep": (10, 40),
            "hnsw_queries": 40,
            "quick": True,
        }
        return cls(**{**settings, **overrides})


@dataclass
class Inputs:
    """The real inputs every subject sees: test users' histories and attribute requests."""

    histories: list[list[str]]
    requests: list[str]
    fixed: dict[int, str]
    catalog: list[str]
    examples: list[Any]
    lengths: dict[str, Any] = field(default_factory=dict)


def _distribution(values: Sequence[int]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "count": int(a.size),
        "min": int(a.min()),
        "p25": float(np.percentile(a, 25)),
        "median": float(np.median(a)),
        "p75": float(np.percentile(a, 75)),
        "max": int(a.max()),
    }


def _fixed_texts(subject: Subject, words: str) -> dict[int, str]:
    """A text of exactly ``n`` tokens (special tokens included) for each fixed length."""
    tokenizer = getattr(subject.text_encoder, "tokenizer", None)
    if tokenizer is None:
        raise DataError("the first subject's text encoder has no tokenizer to size texts with")
    raw = tokenizer._tokenizer  # the tokenizers.Tokenizer inside TextTokenizer
    raw.no_truncation()
    try:
        ids = raw.encode(words, add_special_tokens=False).ids
    finally:
        raw.enable_truncation(max_length=tokenizer.max_length)
    out = {}
    for n in FIXED_LENGTHS:
        out[n] = raw.decode(ids[: max(1, n - 2)])
    return out


def gather_inputs(dataset: Dataset, config: BenchConfig, first: Subject) -> Inputs:
    split = leave_one_out(dataset)
    examples = sample_examples(eval_examples(split, "test"), config.users)
    if not examples:
        raise DataError(f"{dataset.name} has no test users (each user needs at least three interactions)")
    histories = [list(e.history) for e in examples]
    requests = [r for r in (request_from_item(dataset.catalog.get(e.target)) for e in examples) if r]
    if not requests:
        requests = [t[:80] for t in dataset.catalog.texts[: len(examples)]]
    texts = list(dataset.catalog.texts)
    step = max(1, len(texts) // config.catalogue_texts)
    catalog = texts[::step][: config.catalogue_texts]
    fixed = _fixed_texts(first, " ".join(texts[:400]) * 4)
    inputs = Inputs(histories, requests, fixed, catalog, examples)
    tok = first.text_encoder.tokenizer  # type: ignore[attr-defined]
    inputs.lengths = {
        "history_items": _distribution([len(h) for h in histories]),
        "request_tokens": _distribution(tok.count_tokens(requests)),
        "fixed_tokens": {str(n): tok.count_tokens([t])[0] for n, t in fixed.items()},
        "catalogue_tokens": _distribution(tok.count_tokens(catalog)),
    }
    if (
        first.engine is not None
        and first.engine.manifest is not None
        and first.engine.manifest.user.kind == "text"
    ):
        user_texts = [first.engine.user_text({"history": h}) for h in histories]
        inputs.lengths["user_text_tokens"] = _distribution(tok.count_tokens(user_texts))
    return inputs


def _cycle(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def engine_calls(engine: Engine, inputs: Inputs, n: int) -> dict[str, list[Call]]:
    """``n`` calls each of the engine's user tower and of end-to-end recommendations."""
    hist = _cycle(inputs.histories, n)
    reqs = _cycle(inputs.requests, n)
    return {
        "user@real": [partial(engine.encode_users, [{"history": h}]) for h in hist],
        "recommend@history": [partial(engine.recommend, history=h, k=10) for h in hist],
        "recommend@request": [partial(engine.recommend, text=t, k=10) for t in reqs],
    }


def latency_plan(subject: Subject, inputs: Inputs, config: BenchConfig) -> dict[str, list[Call]]:
    enc = subject.text_encoder
    plan: dict[str, list[Call]] = {}
    for n, text in inputs.fixed.items():
        plan[f"text@{n}"] = [partial(enc.encode, [text])] * config.calls
    plan["text@real"] = [partial(enc.encode, [t]) for t in _cycle(inputs.requests, config.calls)]
    batch = [inputs.fixed[64]] * config.batch_size
    plan[f"text@64x{config.batch_size}"] = [partial(enc.encode, batch)] * config.batch_calls
    if subject.engine is not None:
        plan.update(engine_calls(subject.engine, inputs, config.calls))
    plan["catalogue"] = [partial(subject.item_encoder.encode, inputs.catalog)]
    return plan


def breakdown(engine: Engine, calls: Sequence[Call]) -> dict[str, float]:
    """Shares of a recommendation's time: tokenisation, the graphs (with input assembly), the
    index search, and the rest (the engine's own Python). Measured through proxies in a pass of
    its own, so the latency figures never carry their overhead. ``calls`` call ``engine``."""
    tokenize, encode, search = Stopwatch(), Stopwatch(), Stopwatch()
    text: Any = text_side(engine)
    saved = (engine.user_encoder, engine.store, getattr(text, "tokenizer", None))
    # A text user tower's encoder is the text side itself, so its tokenisation is caught too.
    engine.user_encoder = TimedMethod(saved[0], "encode", encode)
    engine.store = TimedMethod(saved[1], "search", search)
    if saved[2] is not None:
        text.tokenizer = TimedCallable(saved[2], tokenize)
    try:
        timed(calls, warmup=0)  # warm-up pass, proxies included
        for w in (tokenize, encode, search):
            w.reset()
        total = float(sum(timed(calls, warmup=0)))
    finally:
        engine.user_encoder, engine.store = saved[0], saved[1]
        if saved[2] is not None:
            text.tokenizer = saved[2]
    return {
        "tokenize": round(tokenize.ms / total, 4),
        "graph": round(max(0.0, encode.ms - tokenize.ms) / total, 4),
        "search": round(search.ms / total, 4),
        "other": round(max(0.0, 1 - (encode.ms + search.ms) / total), 4),
    }


def _top_ids(engine: Engine, queries: list[dict[str, Any]], k: int, *, batch: int = 1) -> list[list[str]]:
    """Each query's top ``k``, ``batch`` queries to a call: one, as a lone request is served (a
    dynamic int8 graph scales activations over the whole batch, so batching changes vectors)."""
    out: list[list[str]] = []
    for start in range(0, len(queries), batch):
        recs = engine.recommend_batch(queries[start : start + batch], k=min(k, len(engine)))
        out += [[r.item_id for r in row] for row in recs]
    return out


def neighbour_overlap(
    ref: np.ndarray, new: np.ndarray, ref_items: np.ndarray, new_items: np.ndarray
) -> float:
    """Overlap@10 of each query's nearest items, exact search on both sides."""
    return overlap(top_k(ref, ref_items, 10), top_k(new, new_items, 10))


def hnsw_sweep(engine: Engine, inputs: Inputs, config: BenchConfig) -> dict[str, Any]:
    """Build time, then recall@10 against exact search and queries/s for each ef."""
    if engine.manifest is None:
        raise DataError("the HNSW sweep needs a bundle")
    vectors = item_vectors(engine)
    spec = engine.manifest.index
    params = HnswParams(spec.M, spec.ef_construction, spec.ef_search)
    t0 = time.perf_counter()
    index = HnswIndex.build(vectors, params, space=spec.space, threads=config.threads)
    build_s = time.perf_counter() - t0
    queries = engine.encode_users([{"history": h} for h in _cycle(inputs.histories, config.hnsw_queries)])
    k = min(10, len(vectors))
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    sweep = []
    for ef in config.ef_sweep:
        index.set_ef_search(ef)
        for q in queries[:20]:
            index.search(q[None, :], k)
        labels = np.empty_like(exact)
        t0 = time.perf_counter_ns()
        for i, q in enumerate(queries):
            labels[i] = index.search(q[None, :], k)[0][0]
        secs = (time.perf_counter_ns() - t0) / 1e9
        sweep.append(
            {
                "ef": ef,
                "recall@10": round(recall_at_k(labels, exact), 4),
                "qps": round(len(queries) / secs, 1),
            }
        )
    return {
        "items": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "M": spec.M,
        "ef_construction": spec.ef_construction,
        "ef_search_in_bundle": spec.ef_search,
        "build_s": round(build_s, 3),
        "build_threads": config.threads,
        "queries": len(queries),
        "sweep": sweep,
    }


def environment(threads: int) -> dict[str, Any]:
    import hnswlib  # noqa: F401  (imported for its version below)
    import onnxruntime
    import tokenizers

    flags: list[str] = []
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    wanted = (
                        "avx2",
                        "avx512f",
                        "avx512_vnni",
                        "avx512_bf16",
                        "amx_bf16",
                        "amx_int8",
                        "amx_tile",
                    )
                    flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
                    break
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for name in ("hnswlib", "torch", "sentence-transformers", "recsys-infer"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "threads": threads,
        "providers": onnxruntime.get_available_providers(),
        "versions": versions,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE") if k in os.environ},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def default_reference(bundle: Path) -> Path | None:
    """The checkpoint a bundle was exported from, where it still exists."""
    from recsys_infer.runtime.bundle import read_manifest

    path = read_manifest(bundle).provenance.checkpoint
    return Path(path) if path and (Path(path) / "recsys_checkpoint.json").is_file() else None


def run_bench(
    bundles: Sequence[Path],
    data: str | Path | Dataset,
    *,
    reference: Path | None = None,
    config: BenchConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``bundles`` (and the reference and peers) and return the report (schema v1)."""
    config = config or BenchConfig()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    if not bundles:
        raise ConfigError("bench needs at least one bundle")
    ref_path = reference or default_reference(Path(bundles[0]))

    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as work, _one_blas_thread():
        return _run(bundles, data, ref_path, config, say, started, Path(work))


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread for the whole run. The reference's exact search is a numpy
    product; OpenBLAS threads that spin after it steal the cores PyTorch's threads need next,
    which inflated the reference's end-to-end p99 tenfold in a first run."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning("threadpoolctl is not installed: numpy's BLAS keeps its own thread count")
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass
class _Loaded:
    dataset: Dataset
    inputs: Inputs
    subjects: list[Subject]
    checkpoint: Any  # the reference's Checkpoint, or None


def _load(
    bundles: Sequence[Path],
    data: str | Path | Dataset,
    ref_path: Path | None,
    config: BenchConfig,
    say: Callable[[str], None],
    work: Path,
) -> _Loaded:
    """Every subject, reference first (when there is one), bundles, then the peers."""
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    bundle_subjects: list[Subject] = []
    # The reference's and the peers' names, which a bundle's subject may not take.
    names = {"pytorch-fp32", "pytorch-bf16", "st-onnx", "st-onnx-int8", "st-openvino", "st-openvino-int8"}
    for path, backend in ((p, b) for p in bundles for b in config.backends):
        name = Path(path).name + ("" if backend == "onnxruntime" else f"@{backend}")
        if name in names:
            name = next(f"{name}-{i}" for i in range(2, len(names) + 3) if f"{name}-{i}" not in names)
        names.add(name)
        say(f"loading bundle {path} on {backend}")
        subject = bundle_subject(Path(path), threads=config.threads, name=name, device=config.device,
                                 spin=config.spin, backend=backend)  # fmt: skip
        known = set(subject.engine.item_ids) if subject.engine is not None else set(dataset.catalog.ids)
        missing = [i for i in dataset.catalog.ids if i not in known]
        if missing:
            raise DataError(
                f"{len(missing)} items of {dataset.name} are not in {name}'s catalogue (e.g. "
                f"{missing[0]!r}): bench a bundle on the data it was built from"
            )
        item = subject.engine.backends.get("item") if subject.engine is not None else None
        if subject.engine is not None and item is not None and item.backend is not Backend.ONNXRUNTIME:
            say(f"re-encoding {name}'s catalogue through its own item tower ({item.backend})")
            items = subject.engine.items(subject.engine.item_ids)
            subject.engine.update_items(
                [i.item_id for i in items], [i.text for i in items], [dict(i.attributes) for i in items]
            )
        bundle_subjects.append(subject)
    inputs = gather_inputs(dataset, config, bundle_subjects[0])
    subjects: list[Subject] = []
    checkpoint = None
    if ref_path is not None:
        from recsys_infer.toolchain.train.checkpoint import load_checkpoint

        from .reference import peer_subjects, reference_subject

        say(f"loading the PyTorch reference {ref_path} and encoding its catalogue")
        t0 = time.perf_counter()
        checkpoint = load_checkpoint(ref_path)
        load_s = time.perf_counter() - t0
        first = bundle_subjects[0].engine
        fusion = first.manifest.fusion if first is not None and first.manifest is not None else None
        for bf16 in (False, True) if config.bf16 else (False,):  # fp32 first: the reference
            subjects.append(
                reference_subject(
                    ref_path,
                    checkpoint,
                    threads=config.threads,
                    load_s=load_s,
                    bf16=bf16,
                    fusion=fusion,
                    device=config.device,
                )
            )
        subjects += bundle_subjects
        if config.peers:
            say("exporting the sentence-transformers peers (ONNX and OpenVINO, each plain and in int8)")
            length = bundle_subjects[0].text_max_length
            subjects += peer_subjects(
                ref_path,
                work,
                threads=config.threads,
                max_length=length,
                checkpoint=checkpoint,
                device=config.device,
                spin=config.spin,
                calibration=inputs.catalog,
            )
    else:
        subjects += bundle_subjects
    return _Loaded(dataset, inputs, subjects, checkpoint)


def _quality(loaded: _Loaded, config: BenchConfig, say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Per subject: overlap with the reference's recommendations, test Recall/NDCG paired
    against the reference, and for peers the overlap with their own encoder in fp32."""
    say("quality: recommendations against the reference, test-split Recall/NDCG")
    inputs, subjects = loaded.inputs, loaded.subjects
    baseline = subjects[0]
    queries: dict[str, list[dict[str, Any]]] = {
        "user": [{"history": h} for h in inputs.histories[: config.overlap_users]],
        "request": [{"text": t} for t in inputs.requests[: config.overlap_users]],
    }
    ref = {g: _top_ids(baseline.engine, q, 100) for g, q in queries.items()} if baseline.engine else {}
    evals: dict[str, EvalResult] = {
        s.name: evaluate(EngineRecommender(s.engine, s.name), inputs.examples, ks=(10,), exclude_seen=True)
        for s in subjects
        if s.engine is not None
    }
    peer_reference = None
    if loaded.checkpoint is not None and any(s.kind == "peer" for s in subjects):
        from .reference import encoder_only

        bare = encoder_only(loaded.checkpoint, threads=config.threads, device=config.device)
        peer_reference = (bare.encode(inputs.requests[: config.overlap_users]), bare.encode(inputs.catalog))
    out: dict[str, dict[str, Any]] = {}
    for s in subjects:
        quality: dict[str, Any] = {}
        if s.engine is not None and ref:
            for group, qs in queries.items():
                mine = _top_ids(s.engine, qs, 100)
                for k in (10, 100):
                    quality[f"{group}_overlap@{k}"] = round(overlap(mine, ref[group], k), 4)
                batched = _top_ids(s.engine, qs, 10, batch=64)  # as a micro-batching service runs them
                quality[f"{group}_overlap@10_batched"] = round(overlap(batched, ref[group], 10), 4)
        if s.name in evals:
            summary = evals[s.name].summary()
            quality.update({m: summary[m] for m in ("recall@10", "ndcg@10")})
            if s is not baseline and baseline.name in evals:
                quality["paired_vs_reference"] = {
                    m: paired_difference(evals[s.name], evals[baseline.name], m).to_json()
                    for m in ("recall@10", "ndcg@10")
                }
        if s.kind == "peer" and peer_reference is not None:
            # One request to a run, as ours are measured (its int8 export scales by batch too).
            lone = inputs.requests[: config.overlap_users]
            mine_q = np.concatenate([s.text_encoder.encode([t]) for t in lone])
            items = s.text_encoder.encode(inputs.catalog)
            quality["request_overlap@10_vs_own_fp32"] = round(
                neighbour_overlap(peer_reference[0], mine_q, peer_reference[1], items), 4
            )
        out[s.name] = quality
    return out


def _row(s: Subject, samples: dict[str, list[float]], inputs: Inputs, config: BenchConfig) -> dict[str, Any]:
    batch_key = f"text@64x{config.batch_size}"
    lat = {m: percentiles(v) for m, v in samples.items()}
    throughput = {
        f"texts_per_s_batch{config.batch_size}_seq64": round(
            config.batch_size * 1000 / lat[batch_key]["p50"], 1
        ),
        "catalogue_items_per_s": round(len(inputs.catalog) * 1000 / lat["catalogue"]["p50"], 1),
    }
    if "recommend@history" in lat:
        throughput["recommend_per_s_one_thread"] = round(1000 / lat["recommend@history"]["mean"], 1)
    row: dict[str, Any] = {
        "name": s.name,
        "kind": s.kind,
        "description": s.description,
        "path": s.path,
        "manifest_sha256": s.manifest_sha256,
        "precision": s.precision,
        "size_mb": round(s.size_bytes / 1e6, 2),
        "load_s": round(s.load_s, 3),
        "memory_mb": s.memory,
        "latency_ms": {m: v for m, v in lat.items() if m not in ("catalogue", batch_key)},
        "throughput": throughput,
    }
    if s.engine is not None:
        calls = engine_calls(s.engine, inputs, config.calls)
        row["breakdown"] = {
            m: breakdown(s.engine, calls[m]) for m in ("recommend@history", "recommend@request")
        }
    return row


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """``vs_reference`` on every row: speed-ups of p50 latencies, throughput and size ratios."""
    base = rows[0]
    for row in rows:
        ratios: dict[str, Any] = {}
        for m, v in row["latency_ms"].items():
            ref = base["latency_ms"].get(m)
            ratios[f"speedup_{m}"] = _ratio(ref["p50"] if ref else None, v["p50"])
        for m, v in row["throughput"].items():
            ratios[m] = _ratio(v, base["throughput"].get(m))
        ratios["size"] = _ratio(row["size_mb"], base["size_mb"])
        row["vs_reference"] = ratios


def _hnsw(subjects: list[Subject], inputs: Inputs, config: BenchConfig) -> dict[str, Any]:
    """The ef sweep once per distinct set of item vectors (compressing the user side keeps them)."""
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for s in subjects:
        if s.kind != "bundle" or s.engine is None or s.engine.manifest is None:
            continue
        digest = s.engine.manifest.files[s.engine.manifest.index.vectors_file].sha256
        if digest not in seen:
            seen.add(digest)
            out[s.name] = hnsw_sweep(s.engine, inputs, config)
    return out


def _run(
    bundles: Sequence[Path],
    data: str | Path | Dataset,
    ref_path: Path | None,
    config: BenchConfig,
    say: Callable[[str], None],
    started: float,
    work: Path,
) -> dict[str, Any]:
    loaded = _load(bundles, data, ref_path, config, say, work)
    inputs, subjects = loaded.inputs, loaded.subjects
    if config.memory:
        probe = [{"history": h} for h in inputs.histories[:20]] + [{"text": t} for t in inputs.requests[:20]]
        for s in subjects:
            if s.kind == "bundle":
                say(f"memory of {s.name} (fresh interpreter)")
                s.memory = measure_memory(Path(s.path), config.threads, probe, config.device, config.spin)
    say(f"timing {len(subjects)} subjects, {config.rounds} interleaved rounds")
    samples = interleaved(
        {s.name: latency_plan(s, inputs, config) for s in subjects},
        rounds=config.rounds,
        warmup=config.warmup,
    )
    quality = _quality(loaded, config, say)
    rows = []
    for s in subjects:
        row = _row(s, samples[s.name], inputs, config)
        row["quality"] = quality[s.name]
        row["extra"] = s.extra
        rows.append(row)
    _add_ratios(rows)
    say("HNSW: build time and the ef sweep")
    hnsw = _hnsw(subjects, inputs, config)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "seconds": round(time.perf_counter() - started, 1),
        "environment": environment(config.threads),
        "settings": {
            "threads": config.threads,
            "rounds": config.rounds,
            "calls": config.calls,
            "batch_size": config.batch_size,
            "quick": config.quick,
            "interleaved": True,
            "blas_threads": 1,
            "timer": "time.perf_counter_ns, warm-up first",
            "warmup_calls_per_block": config.warmup,
            "onnxruntime_spinning": str(config.spin),
        },
        "data": {
            "path": loaded.dataset.name if isinstance(data, Dataset) else str(data),
            "fingerprint": loaded.dataset.fingerprint,
            "test_users": len(inputs.examples),
            "overlap_users": min(config.overlap_users, len(inputs.histories)),
            "requests": min(config.overlap_users, len(inputs.requests)),
        },
        "inputs": inputs.lengths,
        "reference": {"name": subjects[0].name, "path": subjects[0].path, "kind": subjects[0].kind},
        "subjects": rows,
        "hnsw": hnsw,
    }
