"""Shared fixtures: a tiny random BERT encoder, and the checkpoints and bundles built from it
(:mod:`tests.fixtures` builds them).

Where ``RECSYS_INFER_TEST_BUNDLES`` names a folder that ``python -m tests.fixtures`` wrote, the
bundle fixtures read it instead of building: that is how the runtime and service tests run in
an environment without torch. A test that needs the toolchain skips there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from .fixtures import BUNDLES, small_sample, write_pooling_modules

__all__ = [
    "MILVUS_BACKENDS",
    "SHARED_DATA",
    "milvus_place",
    "request_graph",
    "small_sample",
    "text_feeds",
    "write_pooling_modules",
]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: A folder of prebuilt bundles (``python -m tests.fixtures DIR``), for torch-free runs.
PREBUILT = os.environ.get("RECSYS_INFER_TEST_BUNDLES")


def _prebuilt(name: str) -> Path | None:
    if not PREBUILT:
        return None
    path = Path(PREBUILT) / BUNDLES[name]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: run python -m tests.fixtures {PREBUILT}")
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from .fixtures import build_encoder

    return build_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .fixtures import build_checkpoint

    return build_checkpoint(tiny_encoder, tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = _prebuilt("tiny_bundle")
    if prebuilt is not None:
        return prebuilt
    from .fixtures import build_bundle

    checkpoint = request.getfixturevalue("tiny_checkpoint")
    return build_bundle(checkpoint, tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    import shutil

    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def seq_bundle_for_compress(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sequence bundle: a history graph plus a request tower, for compression tests."""
    prebuilt = _prebuilt("seq_bundle_for_compress")
    if prebuilt is not None:
        return prebuilt
    from .fixtures import build_sequence_bundle

    return build_sequence_bundle(request.getfixturevalue("tiny_encoder"), tmp_path_factory.mktemp("seqc"))


@pytest.fixture(scope="session")
def seq_optimized(seq_bundle_for_compress: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sequence bundle with its request graph fused (``optimize --tower user``); tests
    only read it."""
    from recsys_infer.toolchain.compress.steps import optimize_bundle

    out = tmp_path_factory.mktemp("seq-opt") / "bundle"
    optimize_bundle(seq_bundle_for_compress, out, towers="user", progress=False)
    return out


def request_graph(bundle: Path) -> Path:
    """The graph file a bundle's request tower reads."""
    from recsys_infer.runtime.bundle import read_manifest

    return bundle / read_manifest(bundle).towers["request"].file


def text_feeds(graph: Path, lengths: list[int], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One unpadded feed per length, random ids from ``graph``'s vocabulary, as a text graph's
    calibration reads them."""
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    words = next(t for t in onnx.load(str(graph)).graph.initializer if "word_embeddings" in t.name)
    vocab = numpy_helper.to_array(words).shape[0]
    feeds = []
    for n in lengths:
        ids = rng.integers(1, vocab, size=(1, n), dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Milvus standalone server for the session (tests take collections of their own)."""
    pytest.importorskip("milvus", reason="the Milvus server is PyPI's milvus package (the dev extra)")
    from .loopback import milvus_standalone as standalone

    with standalone(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri


#: The Milvus tests run on Milvus Lite, and (cluster-marked, as .ci/run runs them) on a server.
MILVUS_BACKENDS = ["lite", pytest.param("server", marks=pytest.mark.cluster)]


@contextmanager
def milvus_place(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Where a test's collection lives, as (URI, collection): for ``lite``, a Milvus Lite file
    of its own; for ``server``, a new collection on the session's Milvus server, dropped after."""
    pytest.importorskip("pymilvus")
    if backend == "lite":
        pytest.importorskip("milvus_lite")
        yield str(tmp_path / "milvus.db"), "items"
        return
    uri = request.getfixturevalue("milvus_standalone")
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield uri, name
    finally:
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
        for collection in client.list_collections():
            if collection.startswith(name):  # and what a failed build staged beside it
                client.drop_collection(collection)
        client.close()


@pytest.fixture(params=MILVUS_BACKENDS)
def milvus_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A collection's place on each Milvus backend in turn (see :func:`milvus_place`)."""
    with milvus_place(request.param, request, tmp_path) as place:
        yield place
