"""Catalogue encoding in shards: the same vectors in-process and on Ray, and a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_infer import Engine
from recsys_infer.indexing.shards import encode_catalog
from recsys_infer.runtime.catalog import Catalog


def test_shards_give_the_engines_own_vectors(tiny_bundle: Path, tmp_path: Path) -> None:
    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    vectors, report = encode_catalog(tiny_bundle, texts, tmp_path / "work", items_sha256="x", shard_size=64)
    engine = Engine.load(tiny_bundle, device="cpu", threads=1)
    np.testing.assert_allclose(vectors, engine.encode_items(texts), atol=1e-5)
    assert report.shards == 5 and report.reused_shards == 0 and report.items == len(texts) == 300
    assert sorted(p.name for p in (tmp_path / "work").glob("shard-*.npy")) == [
        f"shard-0000{i}.npy" for i in range(5)
    ]


def test_a_killed_run_resumes_without_redoing_finished_shards(tiny_bundle: Path, tmp_path: Path) -> None:
    texts = Catalog.read_jsonl(tiny_bundle / "catalog.jsonl").texts
    work = tmp_path / "work"
    seen: list[int] = []

    def die_after_two(shard: int) -> None:
        seen.append(shard)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what a killed run leaves: two shards written, the rest not

    with pytest.raises(KeyboardInterrupt):
        encode_catalog(tiny_bundle, texts, work, items_sha256="x", shard_size=64, on_shard=die_after_two)
    redone: list[int] = []
    vectors, report = encode_catalog(
        tiny_bundle, texts, work, items_sha256="x", shard_size=64, on_shard=redone.append
    )
    assert redone == [2, 3, 4] and report.reused_shards == 2 and report.items == 300 - 128
    whole, _ = encode_catalog(tiny_bundle, texts, tmp_path / "fresh", items_sha256="x", shard_size=64)
    np.testing.assert_array_equal(vectors, whole)
    # Other items (another hash) are a new plan: the old shards are not reused.
    again: list[int] = []
    encode_catalog(tiny_bundle, texts, work, items_sha256="y", shard_size=64, on_shard=again.append)
    assert again == [0, 1, 2, 3, 4]


def test_an_unreachable_ray_address_is_a_clear_error_at_once(tiny_bundle: Path, tmp_path: Path) -> None:
    import time

    pytest.importorskip("ray")
    from recsys_infer.errors import BackendUnavailableError, ConfigError
    from recsys_infer.scale.encoding import RayRunner

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"nothing answers at the Ray address '127\.0\.0\.1:1'"):
        encode_catalog(tiny_bundle, ["a", "b"], tmp_path / "w", items_sha256="x",
                         runner=RayRunner("127.0.0.1:1"))  # fmt: skip
    assert time.monotonic() - started < 20
    with pytest.raises(ConfigError, match="HOST:PORT"):
        encode_catalog(tiny_bundle, ["a"], tmp_path / "w", items_sha256="x", runner=RayRunner("nowhere"))


def test_index_killed_mid_encoding_resumes_from_its_shards(tiny_bundle: Path, tmp_path: Path) -> None:
    """A real kill (SIGKILL) of `recsys-infer index` while it encodes; the same command again
    reuses the shards written before the kill and gives the bundle a clean run gives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rows = [json.loads(line) for line in (tiny_bundle / "catalog.jsonl").read_text().splitlines()]
    items = tmp_path / "items.jsonl"
    with items.open("w") as f:
        for n in range(40_000):
            row = rows[n % len(rows)]
            f.write(json.dumps({"item_id": f"{row['item_id']}-{n}", "text": f"{row['text']} {n}"}) + "\n")
    out = tmp_path / "big"
    command = [sys.executable, "-m", "recsys_infer.cli", "index", str(tiny_bundle), "--items", str(items),
               "--out", str(out), "--shard-size", "1000", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / ".big.encoding"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(work.glob("shard-*.npy"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(work.glob("shard-*.npy")))
    assert 2 <= written < 40 and not out.exists(), written
    again = subprocess.run([*command, "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())["encoding"]
    assert report["reused_shards"] >= written and report["shards"] == 40
    assert not work.exists()  # cleared once the bundle is whole
    engine = Engine.load(out, device="cpu", threads=1)
    sample = [f"{rows[n % len(rows)]['item_id']}-{n}" for n in (0, 12_345, 39_999)]
    texts = [i.text for i in engine.items(sample)]
    np.testing.assert_allclose(engine.item_vectors(sample), engine.encode_items(texts), atol=1e-5)
