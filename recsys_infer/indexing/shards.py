"""Catalogue encoding in shards: in this process, or by a runner that spreads them out.

The catalogue's texts are cut into shards of ``shard_size`` items. Each shard is encoded by the
bundle's own ONNX item tower and written to a work folder as ``shard-NNNNN.npy`` (written to a
temporary name, then renamed), next to ``plan.json``, which records what the shards are of (the
bundle's manifest hash, the items' hash, the shard size). A run that stops part-way leaves its
finished shards; the next run with the same plan encodes only the missing ones.

The shards still to do go to a :class:`ShardRunner`: :func:`in_process` by default, or one
that spreads them over a cluster (:class:`recsys_infer.scale.encoding.RayRunner`). Either way
the vectors come back here and this process writes the shards.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from recsys_infer.errors import ConfigError
from recsys_infer.runtime.bundle import MANIFEST, read_manifest, sha256_file
from recsys_infer.runtime.engine import load_item_tower

logger = logging.getLogger(__name__)

#: Items per shard: small enough that a lost shard costs seconds, large enough to batch well.
DEFAULT_SHARD_SIZE = 4096
PLAN = "plan.json"


@dataclass(frozen=True)
class Plan:
    """What a work folder's shards are of; a resumed run must have the same plan."""

    bundle_manifest_sha256: str
    items_sha256: str
    items: int
    shard_size: int
    dim: int

    @property
    def shards(self) -> int:
        return -(-self.items // self.shard_size)

    def rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.items)


@dataclass
class EncodeReport:
    items: int
    shards: int
    reused_shards: int
    workers: int
    threads_per_worker: int
    backend: str
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds else float("nan")


def _shard_path(work: Path, shard: int) -> Path:
    return work / f"shard-{shard:05d}.npy"


def _write_shard(work: Path, shard: int, vectors: np.ndarray) -> None:
    path = _shard_path(work, shard)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        np.save(f, np.asarray(vectors, dtype=np.float32), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _done(work: Path, plan: Plan) -> set[int]:
    """The shards already written whole (right shape; anything else is encoded again)."""
    done = set()
    for shard in range(plan.shards):
        path = _shard_path(work, shard)
        if not path.is_file():
            continue
        start, stop = plan.rows(shard)
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError):
            continue
        if shape == (stop - start, plan.dim):
            done.add(shard)
    return done


def _start_work(work: Path, plan: Plan) -> None:
    """Make ``work`` hold shards of ``plan``: kept when the plan matches, cleared when not."""
    work.mkdir(parents=True, exist_ok=True)
    plan_file = work / PLAN
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old == asdict(plan):
            return
        logger.info("%s holds shards of another bundle or catalogue; starting over", work)
    for stale in work.glob("shard-*.npy"):
        stale.unlink()
    plan_file.write_text(json.dumps(asdict(plan), indent=2), encoding="utf-8")


#: Called with each shard's number and vectors as they come back.
Finished = Callable[[int, np.ndarray], None]


@dataclass(frozen=True)
class ShardWork:
    """What a runner is handed: the shards ``todo`` of ``plan`` over ``texts``, to encode with
    ``bundle``'s item tower on ``workers`` sessions of ``threads`` cores each, each shard's
    vectors handed to ``finished``."""

    bundle: Path
    texts: Sequence[str]
    plan: Plan
    todo: list[int]
    workers: int
    threads: int
    finished: Finished
    runtime: str = "onnxruntime"  # the item tower's runtime (Backend): onnxruntime, openvino or auto

    def shard_texts(self, shard: int) -> list[str]:
        start, stop = self.plan.rows(shard)
        return list(self.texts[start:stop])


class ShardRunner(Protocol):
    """Encodes a :class:`ShardWork` somewhere: in this process, or spread over a cluster."""

    name: str

    def __call__(self, work: ShardWork) -> None: ...


class InProcess:
    """One ONNX Runtime session here; its runs take every worker's cores, a batch on each."""

    name = "in-process"

    def __call__(self, work: ShardWork) -> None:
        encoder = load_item_tower(work.bundle, threads=work.threads * work.workers, backend=work.runtime)
        for shard in work.todo:
            work.finished(shard, encoder.encode(work.shard_texts(shard)))


def encode_catalog(
    bundle: Path,
    texts: Sequence[str],
    work: Path,
    *,
    items_sha256: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    threads: int | None = None,
    runner: ShardRunner | None = None,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    runtime: str = "onnxruntime",
) -> tuple[np.ndarray, EncodeReport]:
    """The item vectors of ``texts`` (``float32 (n, dim)``, in order) by ``bundle``'s item tower.

    ``work``: the folder for the shards (kept until the caller removes it, so a failed run
    resumes). ``runner``: where the shards are encoded (:class:`InProcess` by default).
    ``threads``: cores per worker (default: the cores shared out), each running one
    batch at a time on one ONNX Runtime thread (:func:`~recsys_infer.runtime.engine.load_item_tower`).
    ``on_shard``: called with each shard number once its file is written. ``runtime``: the item
    tower's runtime, as :meth:`~recsys_infer.runtime.engine.Engine.load` takes ``backend``."""
    if shard_size < 1 or workers < 1:
        raise ConfigError(f"shard_size and workers must be positive, got {shard_size} and {workers}")
    manifest_sha = sha256_file(bundle / MANIFEST)
    plan = Plan(manifest_sha, items_sha256, len(texts), shard_size, read_manifest(bundle).item.dim)
    _start_work(work, plan)
    done = _done(work, plan)
    todo = [s for s in range(plan.shards) if s not in done]
    per_worker = threads or max(1, (os.cpu_count() or 1) // workers)
    started = time.perf_counter()
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(plan.rows(s)[1] - plan.rows(s)[0] for s in todo), desc="encoding", unit="item")

    def finished(shard: int, vectors: np.ndarray) -> None:
        _write_shard(work, shard, vectors)
        if bar is not None:
            bar.update(len(vectors))
        if on_shard is not None:
            on_shard(shard)

    runner = runner or InProcess()
    try:
        if todo:
            runner(ShardWork(bundle, texts, plan, todo, workers, per_worker, finished, runtime))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    vectors = np.concatenate([np.load(_shard_path(work, s), allow_pickle=False) for s in range(plan.shards)])
    report = EncodeReport(
        items=len(texts) - sum(plan.rows(s)[1] - plan.rows(s)[0] for s in done),
        shards=plan.shards,
        reused_shards=len(done),
        workers=workers,
        threads_per_worker=per_worker,
        backend=runner.name,
        seconds=round(seconds, 3),
    )
    return vectors, report
