"""The `evaluate` job: bundles and baselines on one data set, same users, paired comparisons."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.data import Dataset, leave_one_out, load_dataset
from recsys_infer.data.probe import request_from_item
from recsys_infer.data.split import Example, Split
from recsys_infer.enums import UserTowerKind
from recsys_infer.errors import ConfigError, DataError
from recsys_infer.runtime.bundle import MANIFEST
from recsys_infer.runtime.engine import Engine

from .metrics import (
    EvalResult,
    PairedDifference,
    eval_examples,
    evaluate,
    metric_names,
    paired_difference,
    sample_examples,
)
from .recommenders import (
    ALSParams,
    ALSRecommender,
    EngineRecommender,
    PopularityRecommender,
    evaluate_requests,
    tune_als,
)

logger = logging.getLogger(__name__)

REPORT_SCHEMA = "recsys-infer/evaluate/1"
BASELINES = ("popularity", "als", "zero-shot")


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    ks: tuple[int, ...] = (10, 50)
    users: int | None = None
    # As the engine serves: the input history is masked from the ranking (False: the protocol of
    # the published sequential-recommendation results, which leave it in).
    exclude_seen: bool = True
    exact: bool = False
    requests: bool = False
    tune_als: bool = True
    seed: int = 0
    device: str = "auto"  # where the bundles' graphs run (the baselines run on the CPU)

    def __post_init__(self) -> None:
        if self.split not in ("test", "validation"):
            raise ConfigError(f"split must be 'test' or 'validation', got {self.split!r}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"--k must be positive, got {list(self.ks)}")
        if self.users is not None and self.users < 1:
            raise ConfigError(f"--users must be positive, got {self.users}")


@dataclass
class ModelReport:
    name: str
    kind: str
    result: EvalResult
    cold: EvalResult | None = None
    requests: EvalResult | None = None
    mixed: EvalResult | None = None  # the history and a text request together
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, **self.source, **self.result.to_json()}
        if self.cold is not None:
            out["cold_start_items"] = self.cold.to_json()
        if self.requests is not None:
            out["text_requests"] = self.requests.to_json()
        if self.mixed is not None:
            out["history_and_requests"] = self.mixed.to_json()
        return out


@dataclass
class EvalReport:
    config: EvalConfig
    dataset: Dataset
    data_path: str
    models: list[ModelReport]
    paired: list[PairedDifference]
    als_tuning: list[dict[str, Any]] = field(default_factory=list)
    cold_items: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        first = self.models[0].result if self.models else None
        return {
            "schema": REPORT_SCHEMA,
            "data": {
                "path": self.data_path,
                "name": self.dataset.name,
                "fingerprint": self.dataset.fingerprint,
                "files_sha256": dict(self.dataset.files),
            },
            "protocol": {
                **asdict(self.config),
                "history_limit": 50,
                "users": first.users if first else 0,
                "metric_note": "recall@K = hit rate (one target); mrr counts ranks up to 100",
            },
            "models": [m.to_json() for m in self.models],
            "paired": [p.to_json() for p in self.paired],
            "als_tuning": self.als_tuning,
            "cold_items": len(self.cold_items),
        }


def _manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()


def _held_out(engine: Engine) -> list[str]:
    if engine.manifest is None:
        return []
    return list(engine.manifest.provenance.data.get("cold_items") or [])


def _cold_items(engines: Sequence[Engine], names: Sequence[str]) -> list[str]:
    """The items the bundles held out of training; bundles that held out different sets cannot
    be compared on cold-start targets."""
    sets = {name: _held_out(e) for name, e in zip(names, engines, strict=True)}
    distinct = {tuple(sorted(v)) for v in sets.values() if v}
    if len(distinct) > 1:
        raise ConfigError(
            "the bundles held out different items during training "
            f"({', '.join(n for n, v in sets.items() if v)}); evaluate bundles trained with the same "
            "--cold-items and --seed together"
        )
    return list(distinct.pop()) if distinct else []


def _check_catalog(engine: Engine, dataset: Dataset, name: str) -> None:
    known = set(engine.item_ids)
    missing = [i for i in dataset.catalog.ids if i not in known]
    if missing:
        raise DataError(
            f"{len(missing)} items of {dataset.name} are not in the catalogue of {name} (e.g. "
            f"{missing[0]!r}): evaluate a bundle on the data it was built from"
        )


def _zero_shot_bundle(dataset: Dataset, like: Engine | None, work: Path) -> Path:
    """The pretrained encoder, untrained, as text towers with the token budgets of ``like``."""
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.loop import TrainConfig, train

    config, encoder = TrainConfig(user_tower=UserTowerKind.TEXT, max_steps=0), None
    if like is not None and like.manifest is not None:
        towers = like.manifest.towers
        text_user = towers.get("request", towers["user"]) if towers["user"].kind != "text" else towers["user"]
        config = config.with_overrides(
            user_max_length=text_user.max_length, item_max_length=towers["item"].max_length
        )
        encoder = like.manifest.provenance.encoder.get("name")
    train(dataset, work / "checkpoint", encoder=encoder, config=config, progress=False)
    export_bundle(work / "checkpoint", work / "bundle", progress=False)
    return work / "bundle"


def run_evaluation(
    data: str | Path | Dataset,
    bundles: Sequence[Path],
    baselines: Sequence[str],
    config: EvalConfig,
    *,
    progress: bool = True,
) -> EvalReport:
    """Evaluate every bundle and baseline on the same users of ``data``; pair each against the first."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    if not bundles and not baselines:
        raise ConfigError("give at least one bundle or --baseline")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    split: Split = leave_one_out(dataset)
    examples = sample_examples(eval_examples(split, config.split), config.users, config.seed)
    if not examples:
        raise DataError(f"{dataset.name} has no {config.split} users (users need at least 3 interactions)")

    engines = [Engine.load(b, device=config.device, exact=config.exact) for b in bundles]
    for engine, bundle in zip(engines, bundles, strict=True):
        _check_catalog(engine, dataset, str(bundle))
    names = _unique_names([b.name for b in bundles])
    cold = set(_cold_items(engines, names))
    cold_mask = np.array([e.target in cold for e in examples]) if cold else None
    if cold:
        # Baselines learn from the same training part the bundles did: without the held-out items.
        train = {u: tuple(i for i in seq if i not in cold) for u, seq in split.train.items()}
        split = Split(train=train, validation=split.validation, test=split.test)

    ks = tuple(sorted(set(config.ks)))
    run = _Evaluation(dataset, examples, ks, config, cold_mask, progress)
    for name, engine, bundle in zip(names, engines, bundles, strict=True):
        source = {
            "bundle": str(bundle),
            "manifest_sha256": _manifest_sha(bundle),
            "held_out_items": len(_held_out(engine)),
        }
        run.add(name, "bundle", EngineRecommender(engine, name), engine, source)
    tuning: list[dict[str, Any]] = []
    for baseline in baselines:
        if baseline == "zero-shot":
            with tempfile.TemporaryDirectory(prefix="recsys-zero-shot-") as tmp:
                path = _zero_shot_bundle(dataset, engines[0] if engines else None, Path(tmp))
                engine = Engine.load(path, device=config.device, exact=config.exact)
                encoder = dict(engine.manifest.provenance.encoder) if engine.manifest else None
                run.add(
                    "zero-shot",
                    "baseline",
                    EngineRecommender(engine, "zero-shot"),
                    engine,
                    {"encoder": encoder},
                )
        else:
            tuning = _fitted_baseline(run, baseline, split) or tuning
    paired = _pairs(run.models, examples, dataset, ks)
    data_source = dataset.source if isinstance(data, Dataset) else str(data)
    return EvalReport(config, dataset, data_source, run.models, paired, tuning, sorted(cold))


class _Evaluation:
    """The users every model is scored on, and the reports gathered so far."""

    def __init__(
        self,
        dataset: Dataset,
        examples: list[Example],
        ks: tuple[int, ...],
        config: EvalConfig,
        cold_mask: np.ndarray | None,
        progress: bool,
    ) -> None:
        self.dataset, self.examples, self.ks, self.config = dataset, examples, ks, config
        self.cold_mask, self.progress = cold_mask, progress
        self.models: list[ModelReport] = []

    def add(
        self, name: str, kind: str, recommender: Any, engine: Engine | None, source: dict[str, Any]
    ) -> None:
        """Score ``recommender`` on the users (and, for an engine, on their text requests)."""
        config, examples, ks = self.config, self.examples, self.ks
        result = evaluate(
            recommender, examples, ks=ks, exclude_seen=config.exclude_seen, progress=self.progress
        )
        result.name = name
        report = ModelReport(name, kind, result, source=source)
        if self.cold_mask is not None and self.cold_mask.any():
            report.cold = result.subset(self.cold_mask, f"{name} (cold-start targets)")
        if config.requests and engine is not None:
            catalog = self.dataset.catalog
            report.requests = evaluate_requests(engine, name, examples, catalog, ks)
            report.mixed = evaluate_requests(
                engine, name, examples, catalog, ks, with_history=True, exclude_seen=config.exclude_seen
            )
        self.models.append(report)


def _fitted_baseline(run: _Evaluation, baseline: str, split: Split) -> list[dict[str, Any]] | None:
    """Fit and score a baseline that learns from the training split; ALS's tuning record."""
    config, catalog = run.config, run.dataset.catalog
    if baseline == "popularity":
        run.add("popularity", "baseline", PopularityRecommender(split.train, catalog), None, {})
        return None
    params, tuning = ALSParams(), None
    if config.tune_als:
        validation = sample_examples(eval_examples(split, "validation"), config.users, config.seed)
        params, tuning = tune_als(
            split, catalog, validation, exclude_seen=config.exclude_seen, seed=config.seed
        )
    als = ALSRecommender(split.train, catalog, params, seed=config.seed)
    run.add(
        "als",
        "baseline",
        als,
        None,
        {"params": asdict(params), "tuned_on": "validation" if config.tune_als else None},
    )
    return tuning


def _pairs(
    models: list[ModelReport], examples: list[Example], dataset: Dataset, ks: tuple[int, ...]
) -> list[PairedDifference]:
    """Every model against the first on the same users: histories, requests and both together."""
    paired = [
        paired_difference(models[0].result, other.result, metric)
        for other in models[1:]
        for metric in metric_names(ks)
    ]
    first = models[0] if models else None
    if first is not None and first.requests is not None:  # the request paths compared too: same users
        paired += [
            paired_difference(mine, theirs, metric)
            for other in models[1:]
            for mine, theirs in ((first.requests, other.requests), (first.mixed, other.mixed))
            if mine is not None and theirs is not None
            for metric in metric_names(ks)
        ]
        paired += [p for m in models for p in _mixed_against_parts(m, examples, dataset, ks)]
    return paired


def _mixed_against_parts(
    model: ModelReport, examples: Sequence[Example], dataset: Dataset, ks: Sequence[int]
) -> list[PairedDifference]:
    """A model's history + request queries against its history alone and its request alone, on
    the same users: does each part add to the other?"""
    if model.mixed is None or model.requests is None:
        return []
    with_request = np.array([request_from_item(dataset.catalog.get(e.target)) is not None for e in examples])
    history = model.result.subset(with_request, f"{model.name} (history alone)")
    return [
        paired_difference(model.mixed, part, metric)
        for part in (history, model.requests)
        for metric in metric_names(ks)
    ]


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out
