"""The install paths: ONNX Runtime from exactly one extra, and the GPU check's refusal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_onnxruntime_comes_from_the_cpu_or_the_gpu_extra_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert [_name(r) for r in extras["cpu"]] == ["onnxruntime"]
    assert [_name(r) for r in extras["gpu"]] == ["onnxruntime-gpu"]
    for where, requirements in [("dependencies", project["dependencies"])] + [
        (f"[{k}]", v) for k, v in extras.items() if k not in ("cpu", "gpu")
    ]:
        named = {_name(r) for r in requirements}
        assert not named & {"onnxruntime", "onnxruntime-gpu"}, f"{where} names an ONNX Runtime build"


def test_version_names_the_runtime_build() -> None:
    from recsys_infer import __version__
    from recsys_infer.cli import app

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0
    assert out.output.startswith(f"recsys-infer {__version__} (onnxruntime ")


@pytest.mark.skipif(sys.platform != "linux", reason="a bash script")
def test_the_gpu_check_stops_at_once_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no nvidia-smi on this path
    if any((Path(p) / "nvidia-smi").exists() for p in env["PATH"].split(":")):
        pytest.skip("this machine has nvidia-smi")
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path / "bundle"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.startswith("no GPU: nvidia-smi is not on PATH"), done
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_package_imports_before_an_onnxruntime_build_is_chosen() -> None:
    """`pip install recsys-infer` without [cpu] or [gpu] imports; loading a bundle then names the
    install (tests/test_engine.py checks that message)."""
    code = "import sys\nsys.modules['onnxruntime'] = None\nimport recsys_infer\n"
    code += "print(recsys_infer.Engine.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "Engine", done.stderr
