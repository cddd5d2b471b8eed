"""The main job, end to end on the built-in sample catalogue: train, export, index, serve."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_infer.data import leave_one_out, load_dataset
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.types import Recommendation

SAMPLE_REQUEST = "cozy mystery novel set in Scotland"


@dataclass
class ShowcaseUser:
    user_id: str
    history: list[tuple[str, str]]  # (item id, text), oldest first
    target: tuple[str, str]
    recommendations: list[Recommendation]
    # The same history sent with a short request: the held-out item's category.
    request: str = ""
    mixed_recommendations: list[Recommendation] = field(default_factory=list)


@dataclass
class QuickstartReport:
    out: Path
    checkpoint: Path
    bundle: Path
    stages: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    users: list[ShowcaseUser] = field(default_factory=list)
    request: str = SAMPLE_REQUEST
    request_recommendations: list[Recommendation] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "checkpoint": str(self.checkpoint),
            "bundle": str(self.bundle),
            "stages_seconds": {k: round(v, 2) for k, v in self.stages.items()},
            "train": self.train,
            "export": self.export,
            "users": [
                {
                    "user_id": u.user_id,
                    "history": [i for i, _ in u.history],
                    "held_out_next_item": u.target[0],
                    "recommendations": [r.to_json() for r in u.recommendations],
                    "with_request": {
                        "text": u.request,
                        "recommendations": [r.to_json() for r in u.mixed_recommendations],
                    },
                }
                for u in self.users
            ],
            "request": {
                "text": self.request,
                "recommendations": [r.to_json() for r in self.request_recommendations],
            },
        }


def run_quickstart(
    out: Path,
    *,
    steps: int | None = None,
    minutes: float = 2.0,
    encoder: str | None = None,
    data: str = "sample",
    num_users: int = 3,
    k: int = 5,
    progress: bool = True,
) -> QuickstartReport:
    """Train with ``train``'s defaults, export with the parity check, build the index, load the
    engine, recommend from histories, a request, and both together.

    Training is ``recsys-infer train``'s default model with a budget of ``minutes`` (it keeps the
    best validation epoch reached by then), or exactly ``steps`` steps when given (a smoke
    test). Re-running replaces the checkpoint and bundle inside ``out`` (each is replaced whole).
    """
    from recsys_infer.toolchain.export import ExportConfig, export_bundle
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    out = Path(out)
    report = QuickstartReport(out=out, checkpoint=out / "checkpoint", bundle=out / "bundle")

    t0 = time.perf_counter()
    dataset = load_dataset(data)
    split = leave_one_out(dataset)
    report.stages["load data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = train(
        dataset,
        report.checkpoint,
        encoder=encoder,
        config=TrainConfig(max_steps=steps, max_minutes=None if steps is not None else minutes),
        overwrite=True,
        progress=progress,
    )
    report.stages["train"] = time.perf_counter() - t0
    report.train = result.to_json()

    t0 = time.perf_counter()
    exported = export_bundle(
        report.checkpoint, report.bundle, config=ExportConfig(), overwrite=True, progress=progress
    )
    report.stages["export + parity + index"] = time.perf_counter() - t0
    report.export = exported.to_json()

    t0 = time.perf_counter()
    engine = Engine.load(report.bundle, device="auto")
    report.stages["load engine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    showcase = [e for e in split.test if len(e.history) >= 5][:num_users]
    batch = engine.recommend_batch([{"history": list(e.history)} for e in showcase], k=k)
    for example, recs in zip(showcase, batch, strict=True):
        history = [(i, dataset.catalog.get(i).text) for i in example.history]
        target = dataset.catalog.get(example.target)
        request = target.attributes.get("category", "").split(" > ")[-1]
        user = ShowcaseUser(example.user_id, history, (example.target, target.text), recs, request)
        if request:
            user.mixed_recommendations = engine.recommend(history=list(example.history), text=request, k=k)
        report.users.append(user)
    report.request_recommendations = engine.recommend(text=report.request, k=k)
    report.stages["recommend"] = time.perf_counter() - t0
    return report
