"""The house rules a reader relies on, checked: small functions, a pinned public API, a typed
package. (The layers and the absence of import cycles are import-linter's contracts in
pyproject.toml, run by .ci/run.)"""

from __future__ import annotations

import ast
from pathlib import Path

import recsys_infer

PACKAGE = Path(recsys_infer.__file__).resolve().parent
#: No function or method in the package is longer than this many lines, signature included.
MAX_FUNCTION_LINES = 80


def _long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    found.append(f"{where} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_a_screen() -> None:
    assert _long_functions(PACKAGE, MAX_FUNCTION_LINES) == []


def test_the_length_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert _long_functions(tmp_path / "pkg", MAX_FUNCTION_LINES) == ["pkg/m.py:5 long (81 lines)"]


def test_public_api_is_pinned() -> None:
    assert recsys_infer.__all__ == [
        "Catalog",
        "Device",
        "Engine",
        "Item",
        "MicroBatcher",
        "Pooling",
        "Precision",
        "Query",
        "Reason",
        "RecommendOptions",
        "Recommendation",
        "Space",
        "__version__",
        "errors",
    ]
    assert all(hasattr(recsys_infer, name) for name in recsys_infer.__all__)


def test_the_package_declares_its_types() -> None:
    assert (PACKAGE / "py.typed").is_file()
