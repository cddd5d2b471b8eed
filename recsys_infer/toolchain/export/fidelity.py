"""How far a compressed bundle strays from its reference: cosines of every tower's vectors and
the overlap of the recommendations, on the bundle's probe set (validation users and requests,
never the test split), ranked by exact search; and the gate that refuses a step past its budget.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data.probe import request_from_item
from recsys_infer.enums import Device
from recsys_infer.errors import BundleError, ExportError, FidelityError
from recsys_infer.ranking import cosines, overlap, top_k
from recsys_infer.runtime.bundle import MANIFEST, Manifest, read_manifest
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.types import Query


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {name: round(value, 6) for name, value in cosines(a, b).items()}


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
    if not requests:
        # A probe written before requests were made from item text (a text-only catalogue), or no
        # probe at all: requests for the probe's targets, else for a spread of the catalogue.
        targets = [t for t in probe.get("targets", []) if t in known] or list(engine.item_ids)[::7]
        texts = [request_from_item(item) for item in engine.items(targets[:limit])]
        requests = [Query(text=t) for t in texts if t]
    if not users:
        # No probe (e.g. exported without one): pseudo-users made of catalogue runs.
        ids = list(engine.item_ids)
        users = [Query(history=tuple(ids[i : i + 1 + i % 20])) for i in range(0, min(len(ids), 2000), 7)]
    return users, requests


def served_vectors(engine: Engine, queries: Sequence[Query]) -> np.ndarray:
    """Query vectors as lone requests get them: one query per graph run. A dynamic int8 graph
    takes each activation's scale over the whole batch it runs, so a query encoded among 63
    others gets a coarser scale than it gets alone (the ml-latest-small request tower retrained
    for dynamic int8: probe request overlap@10 0.907 batched by 64, 0.928 alone)."""
    if not queries:
        return engine.encode_users([])
    return np.concatenate([engine.encode_users([q]) for q in queries])


def stored_vectors(engine: Engine) -> np.ndarray:
    if engine.manifest is None or engine.path is None:
        raise BundleError("fidelity needs a bundle loaded from disk")
    return np.load(engine.path / engine.manifest.index.vectors_file, allow_pickle=False)


class Reference:
    """The uncompressed bundle a result is measured against, for one run: its engine (exact
    search), the probe's queries, its stored item vectors, and its vectors for each kind of probe
    query, each computed on first use and kept, so the steps of a run (the search, smoothing,
    the final measurement) share one load and one pass over the probe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._served: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None) -> Reference:
        return cls(Engine.load(path, device=Device.CPU, exact=True, verify=False, threads=threads))

    @functools.cached_property
    def queries(self) -> dict[str, list[Query]]:
        """The probe's history users (``user``) and requests (``request``)."""
        users, requests = probe_queries(self.engine)
        return {"user": users, "request": requests}

    @functools.cached_property
    def items(self) -> np.ndarray:
        return stored_vectors(self.engine)

    def served(self, kind: str) -> np.ndarray:
        """The reference's vectors of the probe's ``kind`` queries, one query per run."""
        if kind not in self._served:
            self._served[kind] = served_vectors(self.engine, self.queries[kind])
        return self._served[kind]


class StepInputs:
    """What one compression run reads besides its graphs: the input bundle's engine and the
    reference, each loaded once for the whole run (``verify=False``: the input was verified
    when the step read its manifest)."""

    def __init__(self, src: Path, reference: Path) -> None:
        self.src, self.reference_path = Path(src), Path(reference)

    @functools.cached_property
    def source(self) -> Engine:
        """The input bundle's engine: the reference's own when the input is the reference (a
        search that swaps a candidate graph into it puts the original back when it is done)."""
        if self.src.resolve() == self.reference_path.resolve():
            return self.reference.engine
        return Engine.load(self.src, device=Device.CPU, exact=True, verify=False)

    @functools.cached_property
    def reference(self) -> Reference:
        return Reference.load(self.reference_path)


def measure_fidelity(
    reference: Engine | Reference, candidate: Engine, *, item_sample: int = 1000
) -> dict[str, Any]:
    """Cosines and recommendation overlap of ``candidate`` against ``reference`` (exact search)."""
    ref = reference if isinstance(reference, Reference) else Reference(reference)
    if not ref.queries["request"]:  # every item has a text, so this means an empty catalogue
        raise FidelityError(
            f"no probe request could be built for {ref.engine.path}: the request tower is unmeasured"
        )
    ref_items, new_items = ref.items, stored_vectors(candidate)
    result: dict[str, Any] = {"reference": str(ref.engine.path), "queries": {}}
    for name, queries in ref.queries.items():
        ref_users = ref.served(name)
        new_users = served_vectors(candidate, queries)
        entry: dict[str, Any] = {"count": len(queries), **_cosines(ref_users, new_users)}
        ref_top = {k: top_k(ref_users, ref_items, k) for k in (10, 100)}
        for k, top in ref_top.items():
            entry[f"overlap@{k}"] = round(overlap(top, top_k(new_users, new_items, k)), 4)
        # The same queries encoded 64 to a run, as a micro-batching service may run them.
        batched = top_k(candidate.encode_users(queries), new_items, 10)
        entry["overlap@10_batched"] = round(overlap(ref_top[10], batched), 4)
        result["queries"][name] = entry
    texts = [i.text for i in ref.engine.items(ref.engine.item_ids)]
    step = max(1, len(texts) // item_sample)
    sample = texts[::step][:item_sample]
    result["item"] = {
        "count": len(sample),
        **_cosines(ref.engine.encode_items(sample), candidate.encode_items(sample)),
    }
    result["index_vectors"] = _cosines(ref_items, new_items) if ref_items.shape == new_items.shape else None
    result["overlap@10"] = result["queries"]["user"]["overlap@10"]
    result["overlap@100"] = result["queries"]["user"]["overlap@100"]
    return result


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


def check_answers(bundle: Path, what: str) -> None:
    """The last check of every step that writes a bundle: it loads in the runtime engine, with
    its checksums verified, and recommends for a probe user."""
    engine = Engine.load(bundle, device=Device.CPU)
    users, _ = probe_queries(engine, limit=1)
    if not engine.recommend_batch(users, k=min(10, len(engine)), exclude_seen=False)[0]:
        raise ExportError(f"{what} returned no recommendations for a probe user")
