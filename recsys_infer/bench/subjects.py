"""What the harness measures: a *subject* is one way of serving the model.

Bundles are served by :class:`~recsys_infer.Engine` as a service would. The PyTorch reference
(and its bf16 cast) are the same engine composition with PyTorch modules in place of the ONNX
sessions and exact search in place of HNSW (``reference.py``). The sentence-transformers peers
are encoders only: they stand beside the text graph a request runs, not beside a whole engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.enums import Spin
from recsys_infer.errors import BundleError
from recsys_infer.runtime.bundle import MANIFEST, read_manifest, sha256_file
from recsys_infer.runtime.encoder import Encoder
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.schema import encode


@dataclass
class Subject:
    """One thing measured. ``engine`` is None for encoder-only peers."""

    name: str
    kind: str  # "pytorch" | "bundle" | "peer"
    description: str
    text_encoder: Encoder  # the graph a free-text request runs
    item_encoder: Encoder  # the graph that encodes catalogue texts
    engine: Engine | None
    size_bytes: int
    load_s: float
    path: str
    text_max_length: int
    manifest_sha256: str | None = None
    precision: str = "fp32"
    memory: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def text_side(engine: Engine) -> Encoder:
    """The text encoder a free-text request goes through in ``engine``."""
    encoder = engine.request_encoder
    if encoder is None:
        raise BundleError(f"cannot find the text encoder of a {type(engine.user_encoder).__name__}")
    return encoder


def _describe(manifest: Any) -> str:
    steps = [encode(step) for step in manifest.compression]
    if not steps:
        return "fp32 ONNX"
    names = []
    for step in steps:
        what = str(step.get("step", "?"))
        if what == "prune":
            what = f"prune {step.get('config', {}).get('ratio', '?')}"
        mode, towers = step.get("mode"), step.get("towers")
        names.append(
            what + (f" {mode}" if mode else "") + (f" ({towers})" if isinstance(towers, str) else "")
        )
    return " → ".join(names)


def bundle_subject(
    path: Path,
    *,
    threads: int,
    name: str | None = None,
    device: str = "cpu",
    spin: Spin | bool = True,
    backend: str = "onnxruntime",
) -> Subject:
    path = Path(path)
    t0 = time.perf_counter()
    engine = Engine.load(path, device=device, threads=threads, spin=spin, backend=backend)
    load_s = time.perf_counter() - t0
    manifest = read_manifest(path)
    side = "request" if "request" in manifest.towers else "user"
    precisions = sorted({str(t.precision) for t in manifest.towers.values()})
    return Subject(
        name=name or path.name,
        kind="bundle",
        description=_describe(manifest),
        text_encoder=text_side(engine),
        item_encoder=engine.item_encoder,
        engine=engine,
        size_bytes=folder_bytes(path),
        load_s=load_s,
        path=str(path),
        text_max_length=manifest.towers[side].max_length,
        manifest_sha256=sha256_file(path / MANIFEST),
        precision="/".join(precisions),
        extra={
            "towers": {
                k: {"file": v.file, "precision": str(v.precision)} for k, v in manifest.towers.items()
            },
            "fidelity_at_build": manifest.fidelity.get("queries"),
            "backends": {n: t.to_json() for n, t in engine.backends.items()},
        },
    )


# A fresh interpreter loads the bundle and serves a few requests, so its memory is the engine's
# alone: nothing the harness itself imported (torch) is counted.
_MEMORY_PROBE = r"""
import json, sys, time
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0
from recsys_infer import Engine
base = status("VmRSS:")
t0 = time.perf_counter()
engine = Engine.load(sys.argv[1], device=sys.argv[4], threads=int(sys.argv[2]), spin=sys.argv[5])
load_s = time.perf_counter() - t0
loaded = status("VmRSS:")
queries = json.loads(sys.argv[3])
for q in queries:
    engine.recommend(history=q.get("history"), text=q.get("text"), k=10)
print(json.dumps({"load_s": load_s, "rss_before_mb": base / 1e6, "rss_loaded_mb": loaded / 1e6,
                  "rss_serving_mb": status("VmRSS:") / 1e6, "peak_mb": status("VmHWM:") / 1e6}))
"""


def measure_memory(
    path: Path, threads: int, queries: list[dict[str, Any]], device: str = "cpu", spin: Spin | bool = True
) -> dict[str, float] | None:
    """Resident memory of a freshly loaded engine serving ``queries`` (host memory, also on a
    GPU); None where /proc is absent."""
    if not Path("/proc/self/status").is_file():
        return None
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_PROBE,
            str(path),
            str(threads),
            json.dumps(queries),
            device,
            str(Spin.of(spin)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BundleError(f"the memory probe could not serve {path}: {done.stderr.strip()[-500:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: round(float(v), 3) for k, v in raw.items()}


def item_vectors(engine: Engine) -> np.ndarray:
    """The item vectors the engine's index was built from."""
    if engine.manifest is None or engine.path is None:
        raise BundleError("item vectors need a bundle loaded from disk")
    return np.asarray(np.load(engine.path / engine.manifest.index.vectors_file, allow_pickle=False))
