"""Catalogue encoding in shards: the same vectors in-process and on Ray, and a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.scale.encoding import encode_catalogue


def _texts(bundle: Path) -> list[str]:
    rows = [json.loads(line) for line in (bundle / "catalog.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows]


def test_shards_give_the_engines_own_vectors(tiny_bundle: Path, tmp_path: Path) -> None:
    texts = _texts(tiny_bundle)
    vectors, report = encode_catalogue(tiny_bundle, texts, tmp_path / "work", items_sha256="x", shard_size=64)
    engine = Engine.load(tiny_bundle, device="cpu", threads=1)
    np.testing.assert_allclose(vectors, engine.encode_items(texts), atol=1e-5)
    assert report.shards == 5 and report.reused_shards == 0 and report.items == len(texts) == 300
    assert sorted(p.name for p in (tmp_path / "work").glob("shard-*.npy")) == [
        f"shard-0000{i}.npy" for i in range(5)
    ]


def test_a_killed_run_resumes_without_redoing_finished_shards(tiny_bundle: Path, tmp_path: Path) -> None:
    texts = _texts(tiny_bundle)
    work = tmp_path / "work"
    seen: list[int] = []

    def die_after_two(shard: int) -> None:
        seen.append(shard)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what a killed run leaves: two shards written, the rest not

    with pytest.raises(KeyboardInterrupt):
        encode_catalogue(tiny_bundle, texts, work, items_sha256="x", shard_size=64, on_shard=die_after_two)
    redone: list[int] = []
    vectors, report = encode_catalogue(
        tiny_bundle, texts, work, items_sha256="x", shard_size=64, on_shard=redone.append
    )
    assert redone == [2, 3, 4] and report.reused_shards == 2 and report.items == 300 - 128
    whole, _ = encode_catalogue(tiny_bundle, texts, tmp_path / "fresh", items_sha256="x", shard_size=64)
    np.testing.assert_array_equal(vectors, whole)
    # Other items (another hash) are a new plan: the old shards are not reused.
    again: list[int] = []
    encode_catalogue(tiny_bundle, texts, work, items_sha256="y", shard_size=64, on_shard=again.append)
    assert again == [0, 1, 2, 3, 4]


def test_an_unreachable_ray_address_is_a_clear_error_at_once(tiny_bundle: Path, tmp_path: Path) -> None:
    import time

    pytest.importorskip("ray")
    from recsys_infer.errors import BackendUnavailableError, ConfigError

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="nothing answers at the Ray address '127.0.0.1:1'"):
        encode_catalogue(tiny_bundle, ["a", "b"], tmp_path / "w", items_sha256="x", use_ray=True,
                         ray_address="127.0.0.1:1")  # fmt: skip
    assert time.monotonic() - started < 20
    with pytest.raises(ConfigError, match="HOST:PORT"):
        encode_catalogue(tiny_bundle, ["a"], tmp_path / "w", items_sha256="x", use_ray=True, ray_address="nowhere")
