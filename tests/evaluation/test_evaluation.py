"""Metrics by hand, bootstrap and paired intervals, baselines, and the evaluate job."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recsys_infer.data import leave_one_out, load_dataset
from recsys_infer.data.split import Example, Split
from recsys_infer.evaluation import bootstrap_ci, paired_difference, sample_examples, score_ranked
from recsys_infer.evaluation.recommenders import (
    ALSParams,
    ALSRecommender,
    PopularityRecommender,
    evaluate_requests,
    tune_als,
)
from recsys_infer.evaluation.run import EvalConfig, run_evaluation
from recsys_infer.runtime.catalog import Catalog, Item
from tests.conftest import small_sample


def test_metrics_by_hand() -> None:
    examples = [Example("u1", ("x",), "a"), Example("u2", ("x",), "b"), Example("u3", ("x",), "c")]
    ranked = [["a", "z"], ["z", "y", "b"], ["z", "y"]]  # ranks 1, 3, absent
    result = score_ranked("m", examples, ranked, ks=(1, 3))
    assert result.per_user["recall@1"].tolist() == [1, 0, 0]
    assert result.per_user["recall@3"].tolist() == [1, 1, 0]
    assert result.per_user["ndcg@3"].tolist() == pytest.approx([1.0, 1 / np.log2(4), 0.0])
    assert result.per_user["mrr"].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    summary = result.summary()
    assert summary["recall@3"]["mean"] == pytest.approx(2 / 3)
    lo, hi = summary["recall@3"]["ci95"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1


def test_bootstrap_and_paired_intervals() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(500)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.1
    assert bootstrap_ci(np.ones(50)) == (1.0, 1.0)
    examples = [Example(f"u{i}", ("x",), "t") for i in range(400)]
    good = score_ranked("good", examples, [["t"] if i % 2 else ["n"] for i in range(400)], ks=(10,))
    bad = score_ranked("bad", examples, [["t"] if i % 10 == 0 else ["n"] for i in range(400)], ks=(10,))
    diff = paired_difference(good, bad, "recall@10")
    assert diff.mean == pytest.approx(0.5 - 0.1) and diff.significant and diff.ci95[0] > 0.3
    same = paired_difference(good, good, "recall@10")
    assert same.mean == 0 and not same.significant
    other = score_ranked("other", examples[:10], [["t"]] * 10, ks=(10,))
    with pytest.raises(ValueError, match="same users"):
        paired_difference(good, other, "recall@10")


def tiny_split() -> tuple[Split, Catalog]:
    catalog = Catalog([Item(i, f"item {i}") for i in "abcdef"])
    train = {"u1": ("a", "b", "a"), "u2": ("a", "c"), "u3": ("b",)}
    return Split(train=train, validation=(), test=()), catalog


def test_popularity_ranks_by_training_counts() -> None:
    split, catalog = tiny_split()
    pop = PopularityRecommender(split.train, catalog)
    assert pop.ranking[:3] == ["a", "b", "c"]  # 3, 2, 1 occurrences; then catalogue order
    assert pop.top_k([["a"]], 3, exclude_seen=True) == [["b", "c", "d"]]
    assert pop.top_k([["a"]], 2, exclude_seen=False) == [["a", "b"]]


def test_als_fits_and_answers() -> None:
    pytest.importorskip("implicit")
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(40)]
    catalog = Catalog([Item(i, i) for i in items])
    # Two tastes: users of the first half never touch the second half, and the other way round.
    train = {
        f"u{u}": tuple(rng.choice(items[:20] if u % 2 else items[20:], 8, replace=False)) for u in range(200)
    }
    als = ALSRecommender(train, catalog, ALSParams(factors=8, iterations=10))
    recs = als.top_k([["i1", "i2", "i3"], ["i25", "i30"]], 5, exclude_seen=True)
    assert all(len(r) == 5 for r in recs)
    assert not {"i1", "i2", "i3"} & set(recs[0])
    # Mostly from the user's own half (chance would be 2.5 of 5).
    assert sum(int(i[1:]) < 20 for i in recs[0]) >= 4 and sum(int(i[1:]) >= 20 for i in recs[1]) >= 4
    assert ALSRecommender(train, catalog, ALSParams(factors=8, iterations=10)).top_k(
        [["i1"]], 5, exclude_seen=True
    ) == (als.top_k([["i1"]], 5, exclude_seen=True))


def test_als_tuning_picks_the_best_validation_trial() -> None:
    pytest.importorskip("implicit")
    ds = load_dataset("sample")
    split = leave_one_out(ds)
    validation = sample_examples(list(split.validation), 200)
    grid = {"factors": (4, 32), "regularization": (0.1,), "alpha": (1.0,)}
    best, trials = tune_als(split, ds.catalog, validation, grid=grid)
    assert len(trials) == 2
    winner = max(trials, key=lambda t: t["ndcg@10"])
    assert (best.factors, best.regularization, best.alpha) == (winner["factors"], 0.1, 1.0)


def test_evaluate_job_pairs_models_on_the_same_users(tiny_bundle: Path) -> None:
    pytest.importorskip("implicit")
    config = EvalConfig(ks=(10, 50), users=60, exclude_seen=True, exact=True, requests=True, tune_als=False)
    report = run_evaluation(small_sample(), [tiny_bundle], ["popularity", "als"], config, progress=False)
    doc = report.to_json()
    assert doc["schema"] == "recsys-infer/evaluate/1"
    assert doc["protocol"]["users"] == 60 and doc["protocol"]["exclude_seen"] is True
    assert doc["data"]["fingerprint"] == small_sample().fingerprint
    names = [m["name"] for m in doc["models"]]
    assert names == ["bundle", "popularity", "als"]
    assert len(doc["models"][0]["manifest_sha256"]) == 64
    assert doc["models"][0]["text_requests"]["users"] > 0
    # two others × (recall, ndcg)@(10, 50) + mrr, then the history + request queries against
    # each of their parts (history alone, request alone) × the same five metrics
    against = Counter(p["b"] for p in doc["paired"])
    assert against == {"popularity": 5, "als": 5, "bundle (history alone)": 5, "bundle (text requests)": 5}
    mixed = {p["a"] for p in doc["paired"] if p["b"].startswith("bundle")}
    assert mixed == {"bundle (history + text request)"}
    first = report.models[0].result
    assert all(m.result.user_ids == first.user_ids for m in report.models)
    # Evaluating again gives the same numbers (seeded sample, exact search, seeded bootstrap).
    again = run_evaluation(small_sample(), [tiny_bundle], ["popularity"], config, progress=False).to_json()
    assert again["models"][0]["metrics"] == doc["models"][0]["metrics"]


def test_evaluate_pairs_the_request_path_of_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two bundles with --requests: their request results are paired too, by the same rule."""
    from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle

    int8 = tmp_path / "int8"
    quantize_bundle(tiny_bundle, int8, QuantizeConfig(towers="user"), progress=False)
    config = EvalConfig(ks=(10,), users=60, exclude_seen=True, exact=True, requests=True, tune_als=False)
    doc = run_evaluation(small_sample(), [tiny_bundle, int8], [], config, progress=False).to_json()
    pairs = {(p["a"], p["b"], p["metric"]): p for p in doc["paired"]}
    # (history, requests, history + request) between the bundles, then each bundle's history +
    # request against its two parts; each × (recall@10, ndcg@10, mrr)
    assert len(pairs) == 3 * 3 + 2 * 2 * 3
    assert ("bundle (history + text request)", "int8 (history + text request)", "ndcg@10") in pairs
    request_pair = pairs[("bundle (text requests)", "int8 (text requests)", "recall@10")]
    means = [m["text_requests"]["metrics"]["recall@10"]["mean"] for m in doc["models"]]
    assert request_pair["mean_difference"] == pytest.approx(means[0] - means[1])


def test_requests_are_ranked_one_per_call(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a lone request is served: dynamic int8 would give a request among others another vector."""
    from recsys_infer import Engine

    ds = small_sample()
    split = leave_one_out(ds)
    engine = Engine.load(tiny_bundle, exact=True)
    calls: list[int] = []
    batch = engine.recommend_batch

    def spy(queries, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(queries))
        return batch(queries, **kwargs)

    monkeypatch.setattr(engine, "recommend_batch", spy)
    examples = list(split.test)[:40]
    result = evaluate_requests(engine, "bundle", examples, ds.catalog, (10,))
    assert len(result.user_ids) == len(calls) > 0
    assert set(calls) == {1}


def test_evaluate_refuses_a_bundle_of_other_data(tiny_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title\nzz,Something else\nyy,Other\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu,zz\nu,yy\nu,zz\n")
    from recsys_infer.errors import DataError

    with pytest.raises(DataError, match="not in the catalogue"):
        run_evaluation(tmp_path, [tiny_bundle], [], EvalConfig(), progress=False)
    with pytest.raises(ValueError, match="unknown baseline"):
        run_evaluation("sample", [], ["magic"], EvalConfig(), progress=False)


def test_evaluate_cli(tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsys_infer.cli import app
    from recsys_infer.data import write_generic

    data = tmp_path / "data"
    data.mkdir()
    write_generic(small_sample(), data)
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tiny_bundle),
            "--data",
            str(data),
            "--baseline",
            "popularity",
            "--users",
            "50",
            "--k",
            "10",
            "--exclude-seen",
            "--exact",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "paired differences" in result.output and "popularity" in result.output
    doc = json.loads(out.read_text())
    assert list(doc["models"][0]["metrics"]) == ["recall@10", "ndcg@10", "mrr"]
    bad = CliRunner().invoke(app, ["evaluate", str(tiny_bundle)])
    assert bad.exit_code == 2 and "Missing option '--data'" in bad.output  # a required option
