"""Catalogue encoding in shards: in this process, or on a Ray cluster with Ray Data.

The catalogue's texts are cut into shards of ``shard_size`` items. Each shard is encoded by the
bundle's own ONNX item tower and written to a work folder as ``shard-NNNNN.npy`` (written to a
temporary name, then renamed), next to ``plan.json``, which records what the shards are of (the
bundle's manifest hash, the items' hash, the shard size). A run that stops part-way leaves its
finished shards; the next run with the same plan encodes only the missing ones.

With Ray, the shards still to do go through :func:`ray.data.Dataset.map_batches` to a pool of
``workers`` actors, each holding one ONNX Runtime session with its share of the cores; vectors
come back to the driver, which writes the shards (so workers need no shared filesystem).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import BackendUnavailableError, ConfigError, MissingDependencyError
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


def encode_catalogue(
    bundle: Path,
    texts: Sequence[str],
    work: Path,
    *,
    items_sha256: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    ray_address: str | None = None,
    use_ray: bool = False,
    threads: int | None = None,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, EncodeReport]:
    """The item vectors of ``texts`` (``float32 (n, dim)``, in order) by ``bundle``'s item tower.

    ``work``: the folder for the shards (kept until the caller removes it, so a failed run
    resumes). ``use_ray``: encode on Ray (``ray_address``: an existing cluster; None starts a
    local one). ``threads``: cores per worker (default: the cores shared out), each running one
    batch at a time on one ONNX Runtime thread (:func:`~recsys_infer.runtime.engine.load_item_tower`).
    ``on_shard``: called with each shard number once its file is written."""
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

    try:
        if not todo:
            pass
        elif use_ray:
            _encode_on_ray(bundle, texts, plan, todo, workers, per_worker, ray_address, finished)
        else:
            # One session here: its runs take every worker's cores, a batch on each.
            encoder = load_item_tower(bundle, threads=per_worker * workers)
            for shard in todo:
                start, stop = plan.rows(shard)
                finished(shard, encoder.encode(list(texts[start:stop])))
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
        backend="ray" if use_ray else "in-process",
        seconds=round(seconds, 3),
    )
    return vectors, report


class _ShardEncoder:
    """A Ray Data actor: one ONNX Runtime session of the bundle's item tower."""

    def __init__(self, bundle: str, threads: int) -> None:
        self.encoder = load_item_tower(Path(bundle), threads=threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        shards, vectors = [], []
        for shard, texts in zip(batch["shard"], batch["texts"], strict=True):
            shards.append(int(shard))
            vectors.append(self.encoder.encode([str(t) for t in texts]))
        return {"shard": np.asarray(shards), "vectors": np.asarray(vectors, dtype=object)}


def start_ray(address: str | None, *, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (None: start a local one); a clear error when
    it cannot be reached."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "scale") from None
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _reachable(address)
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        raise BackendUnavailableError(
            f"cannot connect to the Ray cluster at {address!r} ({type(e).__name__}: {e}). Start it "
            "(`ray start --head`) or pass its address as --ray HOST:PORT; --ray without an address "
            "starts a local cluster"
        ) from e
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the address, when nothing listens there (``ray.init`` would retry
    for minutes)."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"a Ray address is HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise BackendUnavailableError(
            f"nothing answers at the Ray address {address!r} ({e}). Start the cluster (`ray start --head` "
            "prints its address) or check the address; --ray local starts a local cluster instead"
        ) from e


def _encode_on_ray(
    bundle: Path,
    texts: Sequence[str],
    plan: Plan,
    todo: list[int],
    workers: int,
    threads: int,
    address: str | None,
    finished: Callable[[int, np.ndarray], None],
) -> None:
    ray = start_ray(address, num_cpus=None if address else max(os.cpu_count() or 1, workers * threads))
    rows: list[dict[str, Any]] = [
        {"shard": s, "texts": list(texts[plan.rows(s)[0] : plan.rows(s)[1]])} for s in todo
    ]
    # Longest texts first, so the slowest shards do not come last.
    rows.sort(key=lambda r: -sum(len(t) for t in r["texts"]))
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ShardEncoder,
        fn_constructor_kwargs={"bundle": str(bundle.resolve()), "threads": threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        batch_format="numpy",
    )
    for batch in dataset.iter_batches(batch_size=1, batch_format="numpy"):
        for shard, vectors in zip(batch["shard"], batch["vectors"], strict=True):
            finished(int(shard), np.asarray(vectors, dtype=np.float32))
