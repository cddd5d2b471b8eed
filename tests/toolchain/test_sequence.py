"""The sequence user tower: its numerics, training, resume, export, and serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from recsys_infer import Engine, Query
from recsys_infer.data import leave_one_out
from recsys_infer.errors import CheckpointError, QueryError
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.manifest import SeenSpec
from recsys_infer.runtime.schema import encode
from recsys_infer.runtime.users import weigh_blocks
from recsys_infer.toolchain.train.loop import TrainConfig, hold_out_items, train
from recsys_infer.toolchain.train.model import ItemHead, SequenceConfig, SequenceTower
from tests.conftest import small_sample

SEQ = {"user_tower": "sequence", "user_max_length": 32, "item_max_length": 32, "hidden": 32, "heads": 2,
       "item_head_hidden": 64, "batch_size": 32}  # fmt: skip


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_item_head_starts_as_the_identity() -> None:
    e = unit(torch.randn(5, 16))
    torch.testing.assert_close(ItemHead(16, 32)(e), e)


def test_sequence_tower_padding_and_causality() -> None:
    torch.manual_seed(0)
    tower = SequenceTower(16, SequenceConfig(max_history=8, hidden=16, heads=2, dropout=0.0)).eval()
    items = unit(torch.randn(3, 16))
    one = tower(items.unsqueeze(0), torch.ones(1, 3, dtype=torch.long))
    # The same history left-padded to 6, with garbage in the padding: the same user.
    padded = torch.cat([torch.randn(1, 3, 16) * 100, items.unsqueeze(0)], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    torch.testing.assert_close(tower(padded, mask), one, atol=1e-5, rtol=1e-5)
    # Causal: the outputs at earlier positions do not depend on later items.
    ones = torch.ones(1, 3, dtype=torch.long)
    full = tower.encode_positions(items.unsqueeze(0), ones)
    changed = tower.encode_positions(torch.cat([items[:2], unit(torch.randn(1, 16))]).unsqueeze(0), ones)
    torch.testing.assert_close(full[:, :2], changed[:, :2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[:, 2], changed[:, 2], atol=1e-3)
    assert torch.allclose(one.norm(dim=-1), torch.ones(1))
    # Order matters: the newest item is not just one of a bag.
    flipped = tower(items.flip(0).unsqueeze(0), torch.ones(1, 3, dtype=torch.long))
    assert not torch.allclose(flipped, one, atol=1e-3)


def test_hold_out_items() -> None:
    split = leave_one_out(small_sample())
    held, cold = hold_out_items(split, 10, seed=1)
    assert len(cold) == 10 and set(cold) <= {e.target for e in split.test}
    assert not any(set(cold) & set(seq) for seq in held.train.values())
    assert held.test == split.test and held.validation == split.validation
    assert hold_out_items(split, 10, seed=1)[1] == cold


@pytest.fixture(scope="module")
def seq_checkpoint(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq") / "checkpoint"
    config = TrainConfig(**SEQ, epochs=6, eval_every=2, cold_items=5)  # type: ignore[arg-type]
    train(small_sample(), out, encoder=str(tiny_encoder), config=config, progress=False)
    return out


@pytest.fixture(scope="module")
def seq_bundle(seq_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recsys_infer.toolchain.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("seqb") / "bundle"
    export_bundle(seq_checkpoint, out, progress=False)
    return out


def test_sequence_training_selects_on_validation(seq_checkpoint: Path) -> None:
    doc = json.loads((seq_checkpoint / "recsys_checkpoint.json").read_text())
    extra = doc["training"]["extra"]
    assert [v["epoch"] for v in extra["validation"]] == [2, 4, 6]
    best = max(extra["validation"], key=lambda v: v["ndcg@10"])
    assert extra["best_epoch"] == best["epoch"] and extra["best_validation_ndcg@10"] == best["ndcg@10"]
    assert len(doc["data"]["cold_items"]) == 5
    assert not (seq_checkpoint.parent / "checkpoint.partial").exists()  # removed once finished


def test_sequence_bundle_parity_and_serving(seq_bundle: Path) -> None:
    manifest = read_manifest(seq_bundle)
    assert manifest.user.kind == "sequence" and manifest.user.max_length == 50
    assert manifest.towers["request"].file == manifest.item.file == "item_tower.onnx"
    parity = encode(manifest)["parity"]
    for tower in ("user", "item", "request"):
        assert parity[tower]["max_abs_diff"] < 1e-4, tower
    assert parity["user"]["history_lengths"]["min"] == 1

    engine = Engine.load(seq_bundle, device="cpu", exact=True)
    vectors = np.load(seq_bundle / "item_vectors.npy")
    probe = json.loads((seq_bundle / "probe.json").read_text())
    for history in probe["histories"][:10]:
        user = engine.encode_users([Query(history=tuple(history))])[0]
        scores = vectors @ user
        expected = [
            engine.item_ids[i]
            for i in np.argsort(-scores, kind="stable")
            if engine.item_ids[i] not in history
        ]
        assert [r.item_id for r in engine.recommend(history=history, k=5)] == expected[:5]
    # Two spaces: a request is the request (item) tower's vector weighed block by block as the
    # export chose; with a history too, the two unit queries are mixed by the chosen share.
    fusion = manifest.fusion
    assert fusion is not None and fusion.width == manifest.item.dim == vectors.shape[1]
    assert set(fusion.chosen_on) >= {"history", "request", "mixed"}
    text_only = engine.encode_users([{"text": "camping tent"}])[0]
    raw = engine.encode_items(["camping tent"])
    np.testing.assert_allclose(text_only, weigh_blocks(raw, fusion.request, fusion)[0], atol=1e-5)
    both = engine.encode_users([{"history": probe["histories"][0], "text": "camping tent"}])[0]
    hist = engine.encode_users([{"history": probe["histories"][0]}])[0]
    mixed = fusion.mix * hist + (1 - fusion.mix) * text_only
    np.testing.assert_allclose(both, mixed / np.linalg.norm(mixed), atol=1e-5)
    with pytest.raises(Exception, match="item vectors, not text"):
        engine.user_text({"history": probe["histories"][0]})
    engine.user_encoder.io_binding = True  # type: ignore[attr-defined]  # the CUDA path, on the CPU
    np.testing.assert_array_equal(engine.encode_users([{"history": probe["histories"][0]}])[0], hist)


def test_the_seen_penalty_is_the_best_on_validation_with_history_items_left_in(seq_bundle: Path) -> None:
    from recsys_infer.toolchain.export.fusion import SEEN_PENALTIES

    seen = read_manifest(seq_bundle).seen
    assert seen is not None and seen.chosen_on["split"] == "validation"
    for kind, penalty in (("history", seen.penalty), ("history + request", seen.with_request)):
        scores = {c["penalty"]: c["ndcg@10"] for c in seen.chosen_on[kind]["candidates"]}
        assert list(scores) == list(SEEN_PENALTIES) and scores[penalty] == max(scores.values())
        assert penalty == min(p for p, v in scores.items() if v == max(scores.values()))
    record = seen.chosen_on["history"]
    # The engine, asked to leave history items in, scores the validation users as recorded.
    engine = Engine.load(seq_bundle, device="cpu", exact=True)
    probe = json.loads((seq_bundle / "probe.json").read_text())
    pairs = list(zip(probe["histories"], probe["targets"], strict=True))
    assert record["users"] == len(pairs) > 0
    recs = engine.recommend_batch([{"history": h} for h, _ in pairs], k=10, exclude_seen=False)
    ranks = [[r.item_id for r in row].index(t) + 1 if t in [r.item_id for r in row] else 0
             for row, (_, t) in zip(recs, pairs, strict=True)]  # fmt: skip
    ndcg = sum(1 / np.log2(r + 1) for r in ranks if r) / len(pairs)
    assert ndcg == pytest.approx(record["chosen"]["ndcg@10"], abs=2e-3)


def test_single_space_export_keeps_the_trained_space_alone(
    seq_checkpoint: Path, seq_bundle: Path, tmp_path: Path
) -> None:
    from recsys_infer.toolchain.export import ExportConfig, export_bundle

    export_bundle(seq_checkpoint, tmp_path / "one", config=ExportConfig(text_space=False), progress=False)
    manifest = read_manifest(tmp_path / "one")
    assert manifest.seen is not None  # a one-space bundle chooses its seen penalty too
    config = ExportConfig(text_space=False, seen_penalty=False)
    export_bundle(seq_checkpoint, tmp_path / "raw", config=config, progress=False)
    assert read_manifest(tmp_path / "raw").seen is None  # as bundles were before
    assert Engine.load(tmp_path / "raw", device="cpu").seen == SeenSpec()

    # Older readers still load a bundle without fusion (version 1) or without a seen penalty (2).
    def penalised(m: Any) -> bool:
        return m.seen is not None and max(m.seen.penalty, m.seen.with_request) > 0

    assert manifest.fusion is None and manifest.schema_version == (3 if penalised(manifest) else 1)
    two_spaces = read_manifest(seq_bundle)
    assert two_spaces.schema_version == (3 if penalised(two_spaces) else 2)
    one = Engine.load(tmp_path / "one", device="cpu", exact=True)
    two = Engine.load(seq_bundle, device="cpu", exact=True)
    assert one.dim * 2 == two.dim
    # One space: a request is the item tower's vector, and a history plus a request is half of each.
    text_only = one.encode_users([{"text": "camping tent"}])[0]
    np.testing.assert_allclose(text_only, one.encode_items(["camping tent"])[0], atol=1e-5)
    history = json.loads((seq_bundle / "probe.json").read_text())["histories"][0]
    hist = one.encode_users([{"history": history}])[0]
    both = one.encode_users([{"history": history, "text": "camping tent"}])[0]
    np.testing.assert_allclose(both, (hist + text_only) / np.linalg.norm(hist + text_only), atol=1e-5)
    # The two-space bundle's trained block is the single-space bundle's vector, and its tower
    # reads the same user from it.
    split = two.user_encoder.fusion.dims[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        two.encode_items(["camping tent"])[0, :split] * np.sqrt(2),
        one.encode_items(["camping tent"])[0],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        two.user_encoder.tower_vectors([history]), one.user_encoder.tower_vectors([history]), atol=1e-5
    )  # type: ignore[attr-defined]


def test_the_text_block_is_the_untrained_encoder(
    seq_bundle: Path, tiny_encoder: Path, tmp_path: Path
) -> None:
    """A request weighed (0, 1) reads a text exactly as the untrained encoder does (zero-shot)."""
    from recsys_infer.toolchain.export.bundle import export_bundle

    config = TrainConfig(max_steps=0, user_max_length=32, item_max_length=32, user_tower="text")  # type: ignore[arg-type]
    train(small_sample(), tmp_path / "zero", encoder=str(tiny_encoder), config=config, progress=False)
    export_bundle(tmp_path / "zero", tmp_path / "zb", progress=False)
    zero = Engine.load(tmp_path / "zb", device="cpu", exact=True)
    two = Engine.load(seq_bundle, device="cpu", exact=True)
    fusion = two.user_encoder.fusion  # type: ignore[attr-defined]
    texts = ["camping tent", "a blue kettle for the stove"]
    pretrained = weigh_blocks(two.encode_items(texts), (0.0, 1.0), fusion)[:, fusion.dims[0] :]
    np.testing.assert_allclose(pretrained, zero.encode_items(texts), atol=1e-5)


def _probe_case(rng: np.random.Generator, informative: str) -> tuple:
    """Items whose trained block (or text block) holds the answer; the other is noise."""
    from recsys_infer.runtime.users import unit_rows
    from recsys_infer.toolchain.export.fusion import ProbeQueries

    n, d, users = 300, 16, 120
    trained, text = unit_rows(rng.normal(size=(n, d))), unit_rows(rng.normal(size=(n, d)))
    items = np.concatenate([trained, text], axis=1).astype(np.float32) / np.sqrt(2)
    targets = rng.integers(0, n, size=users)
    histories = [list(rng.choice(np.setdiff1d(np.arange(n), [t]), size=3, replace=False)) for t in targets]
    noise = unit_rows(rng.normal(size=(users, d)))
    good = trained if informative == "trained" else text
    user_vectors = unit_rows(good[targets] + 0.3 * noise) if informative == "trained" else noise
    if informative == "text":  # the history's text view points at the target
        for h, t in zip(histories, targets, strict=True):
            h[-1] = int(np.argmax(text @ text[t] - 10 * (np.arange(n) == t)))
    requests = np.concatenate([unit_rows(rng.normal(size=(users, d))), text[targets]], axis=1) / np.sqrt(2)
    queries = ProbeQueries(histories=histories, targets=list(targets), requests=["r"] * users)
    return queries, items, user_vectors.astype(np.float32), requests.astype(np.float32)


@pytest.mark.parametrize("informative", ["trained", "text"])
def test_choose_fusion_weighs_the_space_that_finds_the_targets(informative: str) -> None:
    from recsys_infer.toolchain.export.fusion import choose_fusion

    queries, items, users, requests = _probe_case(np.random.default_rng(3), informative)
    fusion = choose_fusion(queries, items, users, requests, trained_dim=16, max_history=50)
    record = fusion.chosen_on
    history = record["history"]
    chosen = history["chosen"]["ndcg@10"]
    assert chosen >= max(history["trained_only"], history["text_only"])
    if informative == "trained":
        assert history["trained_only"] > history["text_only"] and fusion.history[1] < fusion.history[0]
    else:
        assert history["text_only"] > history["trained_only"] and fusion.history[1] > fusion.history[0]
    # Requests: the trained block of these requests is noise, the text block the target itself.
    assert (
        fusion.request == (0.0, 1.0)
        and record["request"]["chosen"]["ndcg@10"] == record["request"]["text_only"]
    )
    mixed = record["mixed"]
    assert mixed["chosen"]["ndcg@10"] >= max(mixed["history_alone"], mixed["request_alone"])
    assert fusion.mix in [c["mix"] for c in mixed["candidates"]]


def test_micro_batcher_batches_requests_and_answers_histories_directly(seq_bundle: Path) -> None:
    import asyncio

    from recsys_infer import MicroBatcher

    engine = Engine.load(seq_bundle, device="cpu", threads=1)
    history = json.loads((seq_bundle / "probe.json").read_text())["histories"][0]
    sizes: list[int] = []
    with MicroBatcher(engine, on_batch=sizes.append) as batcher:
        direct = batcher.recommend(history=history, k=5)
        assert direct == engine.recommend(history=history, k=5) and sizes == []  # no batch ran
        assert asyncio.run(batcher.arecommend(history=history, k=5)) == direct and sizes == []
        texted = batcher.recommend(history=history, text="camping tent", k=5)
        assert texted == engine.recommend(history=history, text="camping tent", k=5) and sizes == [1]
        with pytest.raises(QueryError, match="unknown option"):
            batcher.recommend(history=history, kk=5)


def test_sequence_bundle_is_served_torch_free(seq_bundle: Path) -> None:
    from tests.package.test_torch_free import TOOLCHAIN_MODULES, run_isolated

    code = f"""
import json, sys
from recsys_infer import Engine
engine = Engine.load({str(seq_bundle)!r}, device="cpu")
a = engine.recommend(history=list(engine.item_ids[:3]), k=3)
b = engine.recommend(text="tent", k=3)
print(json.dumps({{"n": [len(a), len(b)], "loaded": [m for m in {TOOLCHAIN_MODULES!r} if m in sys.modules]}}))
"""
    assert run_isolated(code) == {"n": [3, 3], "loaded": []}


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, module: object, name: str, calls: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt right after its ``calls``-th call."""
    real = getattr(module, name)
    seen = {"n": 0}

    def wrapper(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize(
    ("kind", "settings", "hook"),
    [
        # 8 epochs: both whitening trials take 5, and the winner saves as it carries on.
        ("sequence", {**SEQ, "epochs": 8, "eval_every": 1, "trial_epochs": 5}, "save_state"),
        (
            "text",
            {
                "user_tower": "text",
                "max_steps": 6,
                "batch_size": 8,
                "user_max_length": 32,
                "item_max_length": 24,
                "save_every": 2,
            },
            "save_state",
        ),
    ],
)
def test_interrupted_training_resumes_to_the_same_model(
    tiny_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, settings: dict, hook: str
) -> None:
    import recsys_infer.toolchain.train.loop as train_module

    config = TrainConfig(**settings)
    data = small_sample()
    whole = train(data, tmp_path / "whole", encoder=str(tiny_encoder), config=config, progress=False)
    _interrupt_after(monkeypatch, train_module, hook, 2)
    with pytest.raises(KeyboardInterrupt):
        train(data, tmp_path / "cut", encoder=str(tiny_encoder), config=config, progress=False)
    assert (tmp_path / "cut.partial").is_dir() and not (tmp_path / "cut").exists()
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="other settings"):
        train(data, tmp_path / "cut", encoder=str(tiny_encoder), config=config.with_overrides(seed=9),
              progress=False, resume=True)  # fmt: skip
    resumed = train(
        data, tmp_path / "cut", encoder=str(tiny_encoder), config=config, progress=False, resume=True
    )
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    from safetensors.torch import load_file

    for name in ("sequence_tower.safetensors", "item_head.safetensors") if kind == "sequence" else ():
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "cut" / name))
        drift = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert drift <= 1e-6, (name, drift)
    assert not (tmp_path / "cut.partial").exists()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(data, tmp_path / "fresh", encoder=str(tiny_encoder), config=config, progress=False, resume=True)


def test_cold_start_evaluation_fits_baselines_without_the_held_out_items(seq_bundle: Path) -> None:
    from recsys_infer.evaluation.run import EvalConfig, run_evaluation

    report = run_evaluation(
        small_sample(), [seq_bundle], ["popularity"], EvalConfig(exclude_seen=True), progress=False
    )
    cold = set(report.cold_items)
    assert len(cold) == 5
    bundle, popularity = report.models
    expected = sum(1 for t in bundle.result.targets if t in cold)
    assert bundle.cold is not None and popularity.cold is not None
    assert bundle.cold.users == popularity.cold.users == expected > 0
    assert set(bundle.cold.targets) <= cold
    # Popularity never saw the held-out items, so it never ranks them in its top 10.
    assert popularity.cold.per_user["recall@10"].sum() == 0
    assert report.to_json()["models"][0]["held_out_items"] == 5


def test_item_offsets_train_export_and_stay_zero_for_cold_items(
    tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tokenizers import Tokenizer

    from recsys_infer.runtime.tokenizer import TextTokenizer
    from recsys_infer.runtime.users import add_offsets
    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.train.checkpoint import load_checkpoint
    from recsys_infer.toolchain.train.sequence import embed_items

    root = tmp_path_factory.mktemp("offsets")
    config = TrainConfig(**SEQ, epochs=2, eval_every=1, cold_items=5, item_offsets=True)  # type: ignore[arg-type]
    train(small_sample(), root / "ckpt", encoder=str(tiny_encoder), config=config, progress=False)
    ckpt = load_checkpoint(root / "ckpt")
    offsets = ckpt.model.offset_matrix()
    assert offsets is not None and offsets.shape == (
        len(ckpt.catalog),
        ckpt.model.item.encoder.config.hidden_size,
    )
    cold = json.loads((root / "ckpt" / "recsys_checkpoint.json").read_text())["data"]["cold_items"]
    rows = [ckpt.catalog.ids.index(i) for i in cold]
    assert float(offsets[rows].abs().sum()) == 0.0  # never trained, so ranked by text alone
    assert float(offsets.abs().sum()) > 0.0  # the seen items moved
    export_bundle(root / "ckpt", root / "bundle", progress=False)
    stored = np.load(root / "bundle" / "item_vectors.npy")
    engine = Engine.load(root / "bundle", device="cpu")
    text_only = engine.encode_items(list(ckpt.catalog.texts))
    np.testing.assert_allclose(stored, add_offsets(text_only, offsets.numpy()), atol=1e-5)
    np.testing.assert_allclose(stored[rows], text_only[rows], atol=1e-5)
    manifest = encode(engine.manifest)
    assert manifest["index"]["offsets_file"] == "item_offsets.npy"
    # The bundle keeps both spaces: the offsets moved the trained block (as PyTorch's catalogue
    # vectors have it) and left the pretrained text block alone.
    dim = offsets.shape[1]
    assert manifest["fusion"] is not None and stored.shape[1] == 2 * dim
    tokenizer = TextTokenizer(
        Tokenizer.from_str(ckpt.tokenizer_json),
        max_length=ckpt.config.item_max_length,
        pad_token=ckpt.config.pad_token,
    )
    embeddings = embed_items(ckpt.model.item, tokenizer, list(ckpt.catalog.texts), progress=False)
    with torch.no_grad():
        trained = ckpt.model.catalog_vectors(embeddings).numpy()
    np.testing.assert_allclose(stored[:, :dim] * np.sqrt(2.0), trained, atol=1e-4)
    np.testing.assert_allclose(stored[:, dim:], text_only[:, dim:], atol=1e-6)


def test_items_the_training_part_never_shows_can_leave_the_softmax(
    tiny_encoder: Path, tmp_path: Path
) -> None:
    from recsys_infer.toolchain.train.sequence import seen_in_training

    dataset = small_sample()
    split, cold = hold_out_items(leave_one_out(dataset), 5, seed=0)
    position = {item_id: i for i, item_id in enumerate(dataset.catalog.ids)}
    seen = seen_in_training(split, position)
    assert not seen[[position[i] for i in cold]].any()
    trained = {i for seq in split.train.values() for i in seq}
    assert int(seen.sum()) == len(trained)
    config = TrainConfig(**SEQ, epochs=1, eval_every=1, cold_items=5)  # type: ignore[arg-type]  # default: left out
    train(dataset, tmp_path / "ckpt", encoder=str(tiny_encoder), config=config, progress=False)
    doc = json.loads((tmp_path / "ckpt" / "recsys_checkpoint.json").read_text())
    assert doc["training"]["config"]["unseen_negatives"] is False


def test_pruning_the_user_side_gives_requests_a_tower_of_their_own(
    seq_checkpoint: Path, seq_bundle: Path, tmp_path: Path
) -> None:
    """--tower user on a sequence model prunes a copy of the item tower for requests alone: the
    item encoder, the item vectors and the history users stay exactly as they were."""
    import numpy as np
    import torch

    from recsys_infer.toolchain.export.bundle import export_bundle
    from recsys_infer.toolchain.prune.pruning import PruneConfig, prune_checkpoint
    from recsys_infer.toolchain.train.checkpoint import load_checkpoint

    out = tmp_path / "pruned"
    config = PruneConfig(ratio=0.5, towers="user", distill_steps=3, batch_size=8)  # type: ignore[arg-type]
    result = prune_checkpoint(seq_checkpoint, out, config, data="sample", progress=False)
    assert [t.name for t in result.towers] == ["request"]
    assert len(result.towers[0].distill_losses) == 3

    before, after = load_checkpoint(seq_checkpoint).model, load_checkpoint(out).model
    assert before.request is None and after.request is not None
    request = after.request.encoder
    assert [layer.attention.self.num_attention_heads for layer in request.encoder.layer] == [1, 1]
    assert request.config.intermediate_size == before.item.encoder.config.intermediate_size // 2
    for (name, old), (_, new) in zip(
        before.item.state_dict().items(), after.item.state_dict().items(), strict=True
    ):
        assert torch.equal(old, new), name  # the item tower is untouched

    bundle = tmp_path / "bundle"
    fidelity = export_bundle(out, bundle, reference=seq_bundle, progress=False).fidelity
    manifest = read_manifest(bundle)
    assert manifest.item.file == "item_tower.onnx"
    assert manifest.towers["request"].file == "request_tower.onnx"
    assert (bundle / "request_tower.onnx").stat().st_size < (bundle / "item_tower.onnx").stat().st_size
    np.testing.assert_allclose(
        np.load(bundle / "item_vectors.npy"), np.load(seq_bundle / "item_vectors.npy"), atol=1e-5
    )
    assert fidelity is not None
    assert fidelity["queries"]["user"]["overlap@10"] == 1.0  # history users did not move
    assert 0 <= fidelity["queries"]["request"]["overlap@10"] < 1  # the pruned requests did
    engine = Engine.load(bundle, device="cpu")
    assert engine.recommend(text="something funny", k=3)


def test_quant_aware_request_distillation(seq_checkpoint: Path, tmp_path: Path) -> None:
    """prune --ratio 0 --quant-aware: a request tower of its own, distilled through fake int8
    in the encoder's space, its head frozen, and agreement measured both ways."""
    from recsys_infer.toolchain.prune.pruning import PruneConfig, prune_checkpoint
    from recsys_infer.toolchain.train.checkpoint import load_checkpoint

    out = tmp_path / "qat"
    config = PruneConfig(ratio=0.0, towers="user", distill_steps=3, batch_size=8, quant_aware=True)  # type: ignore[arg-type]
    (report,) = prune_checkpoint(seq_checkpoint, out, config, data="sample", progress=False).towers
    assert report.name == "request" and len(report.distill_losses) == 3
    for agree in (report.agreement_before_distill, report.agreement_after_distill):
        assert {"overlap@10", "int8_overlap@10", "mean_cosine", "int8_mean_cosine"} <= agree.keys()
        assert 0 <= agree["int8_overlap@10"] <= 1
    # Before distillation the request tower is the item tower's copy: identical in fp32.
    assert report.agreement_before_distill["overlap@10"] == 1.0
    model = load_checkpoint(out).model
    assert model.request is not None
    assert model.request.encoder.config.intermediate_size == model.item.encoder.config.intermediate_size
    before = load_checkpoint(seq_checkpoint).model
    for (name, old), (_, new) in zip(
        before.item.head.state_dict().items(), model.request.head.state_dict().items(), strict=True
    ):
        assert torch.equal(old, new), name  # the head is frozen: requests are distilled before it


def test_a_pruned_request_tower_distils_further_from_its_teacher(
    seq_checkpoint: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """prune --teacher: a checkpoint whose request tower lost a layer goes on distilling that
    tower (not a fresh copy of the item tower) towards the checkpoint it came from."""
    from recsys_infer.errors import CheckpointError
    from recsys_infer.toolchain.prune.pruning import PruneConfig, prune_checkpoint
    from recsys_infer.toolchain.train.checkpoint import load_checkpoint

    def config(layers: int) -> PruneConfig:
        return PruneConfig(ratio=0.0, layers=layers, towers="user", distill_steps=2, batch_size=8)  # type: ignore[arg-type]

    first = tmp_path / "first"
    (dropped,) = prune_checkpoint(seq_checkpoint, first, config(1), data="sample", progress=False).towers
    second = tmp_path / "second"
    result = prune_checkpoint(first, second, config(0), data="sample", teacher=seq_checkpoint, progress=False)
    (further,) = result.towers
    assert further.layers_before == further.layers_after == dropped.layers_after == 1
    model = load_checkpoint(second).model
    assert model.request is not None and len(model.request.encoder.encoder.layer) == 1
    assert len(model.item.encoder.encoder.layer) == 2  # the items' tower stays whole
    # Measured against the same teacher on the same held-out requests, where the first run ended.
    for key in ("overlap@10", "mean_cosine"):
        assert further.agreement_before_distill[key] == pytest.approx(
            dropped.agreement_after_distill[key], abs=1e-4
        )
    meta = json.loads((second / "recsys_checkpoint.json").read_text())["pruning"]
    assert meta["teacher"] == str(seq_checkpoint.resolve())
    with pytest.raises(CheckpointError, match="another user tower kind"):
        prune_checkpoint(
            first, tmp_path / "x", config(0), data="sample", teacher=tiny_checkpoint, progress=False
        )
    assert not (tmp_path / "x").exists()


def test_negative_sampler_draws_allowed_items_by_frequency_to_the_075() -> None:
    from recsys_infer.toolchain.train.sequence import NegativeSampler

    counts = torch.tensor([0.0, 1.0, 16.0, 81.0, 5.0])
    allowed = torch.tensor([True, True, True, True, False])
    sampler = NegativeSampler(counts, 200_000, allowed=allowed)
    sampler.reseed(1)
    drawn = torch.bincount(sampler.sample(), minlength=5).double() / 200_000
    expected = torch.tensor([0.0, 1.0, 8.0, 27.0, 0.0], dtype=torch.float64)
    expected /= expected.sum()
    torch.testing.assert_close(drawn, expected, atol=0.005, rtol=0)
    assert torch.isinf(sampler.log_expected[[0, 4]]).all()
    sampler.reseed(1)
    first = sampler.sample()
    sampler.reseed(1)
    assert torch.equal(first, sampler.sample())  # reseeded per epoch: a resumed run draws the same


def test_sampled_softmax_with_logq_estimates_the_full_softmax(tiny_encoder: Path) -> None:
    """With many samples, the logQ-corrected loss approaches the full softmax's; without the
    correction it would be off by about log(k)."""
    from transformers import AutoModel

    from recsys_infer.toolchain.train.model import ModelConfig, TwoTower
    from recsys_infer.toolchain.train.sequence import (
        NegativeSampler,
        _full_softmax_logits,
        sampled_softmax_logits,
    )

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(str(tiny_encoder))
    config = ModelConfig(str(tiny_encoder), user_tower="sequence",  # type: ignore[arg-type]
                         sequence=SequenceConfig(max_history=4, hidden=16, heads=2, dropout=0.0))  # fmt: skip
    model = TwoTower(None, encoder, config).eval()
    n, dim = 60, int(encoder.config.hidden_size)
    embeddings = unit(torch.randn(n, dim))
    rows, targets = torch.randint(0, n, (8, 4)), torch.randint(0, n, (8, 4))
    mask = torch.ones(8, 4, dtype=torch.long)
    sampler = NegativeSampler(torch.randint(1, 50, (n,)).double(), 50_000)
    sampler.reseed(0)
    cross_entropy = torch.nn.functional.cross_entropy
    with torch.no_grad():
        full = cross_entropy(*_full_softmax_logits(model, embeddings, rows, targets, mask, 0.1, None))
        sampled = cross_entropy(*sampled_softmax_logits(model, embeddings, rows, targets, mask, sampler, 0.1))
    assert abs(float(sampled) - float(full)) < 0.05, (float(sampled), float(full))


def test_sampled_softmax_training_learns_and_resumes(tiny_encoder: Path, tmp_path: Path) -> None:
    config = TrainConfig(**SEQ, epochs=4, eval_every=2, softmax="sampled", negatives=256)  # type: ignore[arg-type]
    data = small_sample()
    result = train(data, tmp_path / "a", encoder=str(tiny_encoder), config=config, progress=False)
    extra = json.loads((tmp_path / "a" / "recsys_checkpoint.json").read_text())["training"]["extra"]
    assert extra["softmax"] == "sampled" and len(extra["epoch_seconds"]) == 4
    assert result.losses[-1] < result.losses[0]
    again = train(data, tmp_path / "b", encoder=str(tiny_encoder), config=config, progress=False)
    # Seeded, the negatives included; the scatter-add behind the shared-item gather may sum in
    # another order, so equal up to float rounding.
    assert again.losses == pytest.approx(result.losses, rel=1e-5)
    full = json.loads((tmp_path / "a" / "recsys_checkpoint.json").read_text())
    assert full["training"]["extra"]["best_validation_ndcg@10"] > 0


def test_max_steps_stops_the_sequence_kind_mid_epoch(tiny_encoder: Path, tmp_path: Path) -> None:
    """The smoke-test budget (`train --max-steps N`, used by CI and the quickstart) holds for the
    default kind too: it stops inside the first epoch and still validates what it keeps."""
    config = TrainConfig(**SEQ, epochs=50, max_steps=3)  # type: ignore[arg-type]
    result = train(small_sample(), tmp_path / "a", encoder=str(tiny_encoder), config=config, progress=False)
    assert result.steps == 3 and result.stopped_by == "max_steps"
    assert result.extra["epochs"] == 0 and len(result.extra["validation"]) == 1


def test_batches_are_only_as_wide_as_their_longest_window(tiny_encoder: Path) -> None:
    """Trimming leading padding is exact: positions count from the right, padding is masked."""
    from transformers import AutoModel

    from recsys_infer.toolchain.train.model import ModelConfig, TwoTower
    from recsys_infer.toolchain.train.sequence import _full_softmax_logits, _window_batch

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(str(tiny_encoder))
    shape = SequenceConfig(max_history=12, hidden=16, heads=2, dropout=0.0)
    config = ModelConfig(str(tiny_encoder), user_tower="sequence", sequence=shape)  # type: ignore[arg-type]
    model = TwoTower(None, encoder, config).eval()
    embeddings = unit(torch.randn(30, int(encoder.config.hidden_size)))
    windows = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]]
    rows, targets, mask = _window_batch(windows, 12)
    assert rows.shape == (3, 4) and int(mask.sum()) == 2 + 4 + 1
    wide = [torch.nn.functional.pad(t, (8, 0), value=v) for t, v in ((rows, 0), (targets, -1), (mask, 0))]
    with torch.no_grad():
        narrow_logits, narrow_labels = _full_softmax_logits(model, embeddings, rows, targets, mask, 0.1, None)
        wide_logits, wide_labels = _full_softmax_logits(model, embeddings, *wide, 0.1, None)
    assert torch.equal(narrow_labels, wide_labels)
    torch.testing.assert_close(narrow_logits, wide_logits, atol=1e-5, rtol=1e-5)


def test_two_space_export_widens_the_search_until_every_query_kind_finds_its_neighbours(
    seq_bundle: Path,
) -> None:
    from recsys_infer.runtime.index import HnswIndex
    from recsys_infer.toolchain.export.search_width import EF_MAX, EF_TARGET_RECALL

    manifest = read_manifest(seq_bundle)
    assert manifest.fusion is not None
    by_kind = manifest.fidelity["index_recall_at_10_by_query"]
    assert set(by_kind) == {"history", "request", "history + request"}
    ef = manifest.index.ef_search
    assert ef >= 64 and (min(by_kind.values()) >= EF_TARGET_RECALL or ef * 2 > EF_MAX)
    index = Engine.load(seq_bundle, device="cpu").store.index  # what serving searches with
    assert isinstance(index, HnswIndex) and index.params.ef_search == ef


def test_request_variants_add_requests_but_never_a_held_out_one() -> None:
    """prune --request-variants: more requests per item, each a choice of its attributes in
    their order; none with the attributes of a request fidelity is measured on, in any order."""
    from types import SimpleNamespace

    from recsys_infer.runtime.catalog import Catalog, Item
    from recsys_infer.toolchain.prune.pruning import _catalog_requests

    items = [
        Item("held", "a held-out target", {"genres": ["Comedy", "Drama"]}),
        Item("other", "another film", {"genres": ["Drama", "Comedy", "Horror"], "tags": ["dark"]}),
        Item("plain", "a film with no attributes"),
    ]
    ckpt = SimpleNamespace(catalog=Catalog(items), probe={"requests": ["Comedy, Drama"], "targets": ["held"]})
    base = _catalog_requests(ckpt)  # type: ignore[arg-type]
    assert base == ["Drama, Comedy, Horror, dark", "a film with no"]
    varied = _catalog_requests(ckpt, variants=40, seed=0)  # type: ignore[arg-type]
    assert set(base) < set(varied) and varied == _catalog_requests(ckpt, variants=40, seed=0)  # type: ignore[arg-type]
    new = set(varied) - set(base)
    parts = ["Drama", "Comedy", "Horror", "dark"]
    for request in new:  # the other film's attributes, in their order
        picked = request.split(", ")
        assert [p for p in parts if p in picked] == picked, request
    assert {"Drama", "Horror", "Drama, Horror, dark"} <= new
    # Its Drama and Comedy are the held-out request's attributes, in another order.
    assert "Drama, Comedy" not in varied and "Comedy, Drama" not in varied
