"""The runtime half never imports torch, transformers, optimum or onnx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOLCHAIN_MODULES = ("torch", "transformers", "optimum", "onnx", "safetensors", "sentence_transformers")


def run_isolated(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, which is returned."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_engine_serves_without_toolchain_modules(tiny_bundle: Path) -> None:
    code = f"""
import json, sys
import recsys_infer
from recsys_infer import Engine
engine = Engine.load({str(tiny_bundle)!r}, device="cpu")
recs = engine.recommend(history=[engine.item_ids[0]], text="tent", k=3)
vectors = engine.encode_items(["a red tent"])
loaded = [m for m in {TOOLCHAIN_MODULES!r} if m in sys.modules]
print(json.dumps({{"loaded": loaded, "recs": len(recs), "shape": list(vectors.shape)}}))
"""
    result = run_isolated(code)
    assert result == {"loaded": [], "recs": 3, "shape": [1, 32]}


def test_runtime_cli_commands_stay_torch_free(tiny_bundle: Path) -> None:
    code = f"""
import json, sys
from typer.testing import CliRunner
from recsys_infer.cli import app
runner = CliRunner()
a = runner.invoke(app, ["recommend", {str(tiny_bundle)!r}, "--text", "tent", "-k", "2", "--json", "-"])
b = runner.invoke(app, ["info", {str(tiny_bundle)!r}])
c = runner.invoke(app, ["--help"])
loaded = [m for m in {TOOLCHAIN_MODULES!r} if m in sys.modules]
print(json.dumps({{"codes": [a.exit_code, b.exit_code, c.exit_code], "loaded": loaded}}))
"""
    assert run_isolated(code) == {"codes": [0, 0, 0], "loaded": []}


_BLOCKER = f"""
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TOOLCHAIN_MODULES!r}:
            raise ImportError(f"{{name}} is blocked: the runtime must not import it")
        return None
sys.meta_path.insert(0, _Blocked())
"""


def test_serve_reindex_and_the_index_command_run_with_torch_blocked(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"item_id": f"n{i}", "text": f"a red tent number {i}"}) + "\n" for i in range(30))
    )
    code = (
        _BLOCKER
        + f"""
import json, sys
from typer.testing import CliRunner
from fastapi.testclient import TestClient
from recsys_infer.cli import app
from recsys_infer.indexing.reindex import reindex_bundle
from recsys_infer.serve import create_app
out = {str(tmp_path / "new")!r}
a = CliRunner().invoke(app, ["index", {str(tiny_bundle)!r}, "--items", {str(items)!r}, "--out", out])
with TestClient(create_app(out, threads=1)) as client:
    served = client.post("/recommend", json={{"text": "tent", "k": 3}}).json()["items"]
    info = client.get("/info").status_code
summary = reindex_bundle(out, None, {str(tmp_path / "again")!r}, progress=False)
loaded = [m for m in {TOOLCHAIN_MODULES!r} if m in sys.modules]
print(json.dumps({{"code": a.exit_code, "served": [r["item_id"][0] for r in served], "info": info,
                   "items": summary["items"], "loaded": loaded}}))
"""
    )
    assert run_isolated(code) == {
        "code": 0,
        "served": ["n", "n", "n"],
        "info": 200,
        "items": 30,
        "loaded": [],
    }
