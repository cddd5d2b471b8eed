"""What the command line prints for scripts: ``--json -`` leaves exactly one JSON document on
standard output, and a missing optional package is one line naming the extra that brings it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from recsys_infer.cli import app

ROOT = Path(__file__).resolve().parents[2]
#: The slice of the sample catalogue the tiny bundles are trained on (tests.fixtures.small_sample).
SAMPLE = "sample:items=300,users=120,seed=3"


def _stdout_json(result: Result) -> dict[str, object]:
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # fails unless stdout is one JSON document
    assert isinstance(document, dict)
    return document


def test_json_dash_leaves_one_document_on_stdout(
    tiny_bundle: Path, tiny_checkpoint: Path, tiny_encoder: Path, tmp_path: Path
) -> None:
    """Every command that takes --json, its summary sent to stderr and its report to stdout."""
    runner = CliRunner()
    b, ck = str(tiny_bundle), str(tiny_checkpoint)
    commands = {
        "sample-data": ["sample-data", "--out", str(tmp_path / "data")],
        "info": ["info", b],
        "recommend": ["recommend", b, "--text", "tent", "-k", "3"],
        "evaluate": ["evaluate", b, "--data", SAMPLE, "--users", "20"],
        "optimize": ["optimize", b, "--out", str(tmp_path / "opt")],
        "quantize": ["quantize", b, "--out", str(tmp_path / "int8"), "--mode", "dynamic"],
        "index": ["index", b, "--out", str(tmp_path / "reindexed")],
        "export": ["export", ck, "--out", str(tmp_path / "exported")],
        "train": [
            "train",
            "--data",
            "sample:items=300,users=120,seed=3",
            "--out",
            str(tmp_path / "ck2"),
            "--encoder",
            str(tiny_encoder),
            "--user-tower",
            "text",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
        ],
        "prune": ["prune", ck, "--out", str(tmp_path / "pruned"), "--ratio", "0.25"],
        "convert": ["convert", b, "--out", str(tmp_path / "st")],
        "build": [
            "build",
            "int8",
            "--checkpoint",
            ck,
            "--out",
            str(tmp_path / "built"),
        ],
        "quickstart": [
            "quickstart",
            "--out",
            str(tmp_path / "qs"),
            "--encoder",
            str(tiny_encoder),
            "--max-steps",
            "2",
        ],
        "bench": ["bench", b, "--data", SAMPLE, "--quick", "--no-peers", "--threads", "1"],
    }
    for name, args in commands.items():
        report = _stdout_json(runner.invoke(app, [*args, "--json", "-"]))
        assert report, name
        assert not (Path.cwd() / "-").exists(), f"{name} wrote a file named -"


_MISSING = """
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
from typer.testing import CliRunner
from recsys_infer.cli import app
result = CliRunner().invoke(app, {args!r})
print(result.exit_code)
print(result.output, end="")
"""


@pytest.mark.parametrize(
    ("module", "extra", "args"),
    [
        ("torch", "train", ["train", "--data", "sample", "--out", "{tmp}/ck", "--max-steps", "0"]),
        ("fastapi", "serve", ["serve", "{bundle}"]),
        ("sentence_transformers", "bench", ["bench", "{bundle}", "--json", "{tmp}/b.json", "--quick"]),
        ("huggingface_hub", "hub", ["recommend", "hf://acme/recs", "--text", "lamp"]),
        ("huggingface_hub", "hub", ["push", "{bundle}", "acme/recs"]),
        ("ray", "scale", ["index", "{bundle}", "--out", "{tmp}/new", "--ray", "local"]),
        ("pymilvus", "scale", ["index", "{bundle}", "--out", "{tmp}/new", "--milvus", "{tmp}/m.db"]),
        (
            "implicit",
            "eval",
            ["evaluate", "{bundle}", "--data", SAMPLE, "--baseline", "als", "--users", "5"],
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    module: str, extra: str, args: list[str], tiny_bundle: Path, tmp_path: Path
) -> None:
    args = [a.format(tmp=tmp_path, bundle=tiny_bundle) for a in args]
    done = subprocess.run(
        [sys.executable, "-c", _MISSING.format(module=module, args=args)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    code, *lines = done.stdout.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert code == "1", done.stdout
    assert len(errors) == 1 and f"pip install 'recsys-infer[{extra}]'" in errors[0], done.stdout
    assert "Traceback" not in done.stdout


def test_quiet_leaves_out_the_progress_bars(tiny_bundle: Path, tmp_path: Path) -> None:
    """In a process of its own, as a user runs it (tqdm reads TQDM_DISABLE when it is imported)."""

    def run(*flags: str, out: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "recsys_infer.cli", *flags, "index", str(tiny_bundle), "--out", out]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)

    loud, quiet = run(out=str(tmp_path / "a")), run("--quiet", out=str(tmp_path / "b"))
    assert loud.returncode == 0 and quiet.returncode == 0, (loud.stderr, quiet.stderr)
    assert "item/s" in loud.stderr and "item/s" not in quiet.stderr
    assert "wrote" in quiet.stdout  # the result still prints
