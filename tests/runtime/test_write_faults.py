"""A save the machine refuses half-way, with a real process and the kernel's own refusal: the
process's file-size limit (``RLIMIT_FSIZE``) fails a write with EFBIG exactly as a full disk
fails it with ENOSPC, part-way through the bundle's files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from recsys_infer import Engine

_SAVE_UNDER_A_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write then fails instead of killing us
from recsys_infer import Engine
from recsys_infer.errors import OutputWriteError
engine = Engine.load(sys.argv[1], device="cpu", threads=1)
engine.add_items(["written-later"], ["a lamp added before the failed save"])
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # bytes: smaller than the graphs
try:
    engine.save(sys.argv[2], overwrite=True)
except OutputWriteError as e:
    print("REFUSED:", e)
    sys.exit(0)
print("SAVED")
sys.exit(1)
"""


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_disk_that_refuses_a_save_leaves_the_old_bundle_whole(bundle_copy: Path, tmp_path: Path) -> None:
    target = tmp_path / "saved"
    Engine.load(bundle_copy, device="cpu", threads=1).save(target)
    before = _digests(target)
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_UNDER_A_LIMIT, str(bundle_copy), str(target)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REFUSED: could not write" in done.stdout and "File too large" in done.stdout, done.stdout
    assert "left as it was" in done.stdout and "Traceback" not in done.stderr
    assert _digests(target) == before  # byte for byte the bundle it was
    assert not [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".saved")
    ]  # nothing half-written beside it
    engine = Engine.load(target, device="cpu", threads=1)  # and it loads, verified
    assert "written-later" not in engine.item_ids
