"""The README's promises that can be checked without running them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command() -> None:
    test_commands = [c for c in readme_commands() if c.endswith("pytest")]
    assert len(test_commands) == 1, test_commands
    assert test_commands[0] in (REPO / ".ci" / "run").read_text()


def test_readme_quickstart_command_installs_and_runs() -> None:
    quick = [c for c in readme_commands() if c.endswith("recsys-infer quickstart")]
    assert len(quick) == 1
    assert "pip install torch==2.13.0 -e '.[train]'" in quick[0]
