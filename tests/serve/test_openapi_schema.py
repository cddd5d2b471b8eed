"""The OpenAPI schema tells the truth: Schemathesis reads the schema a real server publishes,
generates requests for every route from it (the schema's examples, the boundary values of every
constraint, random valid and broken requests, and chains of calls), and checks each answer: no
500, a status the schema declares, the content type, body and headers it declares for that
status, and every schema-breaking request refused.

Each run first replays the stored seeds (``tests/fuzz_seeds.py``): the failures found before and,
per route, the slowest requests earlier long runs found (Schemathesis is told to maximise the
response time). Then it searches with a new seed.

One check is left out, that every schema-valid request is accepted: some refusals depend on
state a schema cannot describe (an id not in the catalogue, k above the catalogue's size, a
dimension other than the bundle's, unsaved edits before a swap). Those come back as 400, 404 or
409 with the error body, which the checks above hold to the schema."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from recsys_infer.serve import API_KEY_ENV, ServeSettings, create_app
from tests.fuzz_seeds import SEEDS, budget, recording, stale_message
from tests.loopback import serving

KEY = "schemathesis-key"
#: Schemathesis's settings for this service: a body over the size limit is refused with 413
#: before it is read, a rejection like the others, which its default list does not name.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""
ROUTES = {
    "POST /recommend", "POST /recommend/batch", "POST /embed", "POST /v1/embeddings", "POST /items",
    "DELETE /items/{item_id}", "POST /admin/save", "POST /admin/swap", "GET /healthz", "GET /info",
    "GET /metrics",
}  # fmt: skip


@pytest.fixture(scope="module")
def live(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("schema") / "bundle"))
    # Small limits, so that generated requests reach them: the 413 and 422 answers are checked too.
    limits = ServeSettings(max_body_bytes=64_000, max_cost=2000, max_k=200, max_batch_requests=16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(API_KEY_ENV, KEY)
        with serving(create_app(bundle, threads=1, settings=limits)) as base:
            yield base


def test_every_route_answers_as_its_schema_says(live: str, tmp_path: Path) -> None:
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    seed = random.randrange(2**32)  # a new search each run; a failure prints the seed to replay it
    stored = SEEDS / "schema"
    # Schemathesis writes to its database as it runs: it gets a copy unless this run records.
    database = stored if recording() else Path(shutil.copytree(stored, tmp_path / "seeds"))
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{live}/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--header", f"X-API-Key: {KEY}", "--max-examples", str(budget(30)), "--seed", str(seed),
        "--generation-database", str(database), "--generation-maximize", "response_time",
        "--workers", "1",
    ]  # fmt: skip
    run = subprocess.run(
        [command[0], *command[1:3], "--config-file", str(tmp_path / "schemathesis.toml"), *command[3:]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"seed {seed}:\n{report[-8000:]}"
    assert "Tested: 11" in report and "11/11" in report, report[-3000:]  # every route was reached
    # Each route's run files its examples under a key of its own: a key the stored seeds lack
    # means they were recorded for other code (another Schemathesis, a renamed route).
    keys = {entry.name for entry in database.iterdir()}
    assert recording() or keys <= {entry.name for entry in stored.iterdir()}, stale_message(
        "schema", __file__
    )


def test_the_schema_lists_every_route(live: str) -> None:
    import httpx

    paths = httpx.get(f"{live}/openapi.json").json()["paths"]
    assert {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops} == ROUTES


def test_the_links_lead_to_operations_the_schema_has(live: str) -> None:
    import httpx

    paths = httpx.get(f"{live}/openapi.json").json()["paths"]
    operations = {op.get("operationId") for ops in paths.values() for op in ops.values()}
    links = {
        name: link
        for ops in paths.values()
        for op in ops.values()
        for response in op.get("responses", {}).values()
        for name, link in response.get("links", {}).items()
    }
    assert {"RecommendTheFirstAdded", "RemoveTheFirstAdded", "SaveTheEdit"} <= set(links)
    assert {link["operationId"] for link in links.values()} <= operations
