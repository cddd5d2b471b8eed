"""Crash-safe directory writes: a path holds the old directory or the new one, never a mix.

:func:`atomic_directory` yields a fresh temporary directory beside the target. When the block
ends without an error its files are flushed to disk (``fsync``), then it takes the target's
place in one step:

- a new target: ``rename(tmp, target)``;
- an existing target: ``renameat2(tmp, target, RENAME_EXCHANGE)`` (Linux 3.15 and newer, on
  ext4, xfs, btrfs and tmpfs) swaps the two directories atomically, and the old one, now at the
  temporary name, is deleted. Where the exchange is not available, two renames are used, and
  the window between them is repaired by the next write of the same target.

A crash at any moment leaves the target whole (old or new) plus, at worst, a hidden
``.NAME.tmp-PID-*`` folder beside it; the next write of the same target deletes such folders
once the process that made them is gone. ``overwrite`` only ever replaces a directory that
holds ``marker`` (a bundle's ``manifest.json``, a checkpoint's own file), and for a bundle, only
one whose every file its manifest lists: anything else at the target is refused, never deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from recsys_infer.errors import OutputExistsError, OutputWriteError

logger = logging.getLogger(__name__)

#: Called with the name of each step of a write as it completes. Only the crash-injection tests
#: set it (to kill the writer between two steps); ``None`` otherwise.
on_step: Callable[[str], None] | None = None


def step(name: str) -> None:
    if on_step is not None:
        on_step(name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path) -> Iterator[tuple[Path, str]]:
    """Hidden siblings of ``target`` left by writes whose process is gone, with their role."""
    prefix = f".{target.name}."
    for path in target.parent.glob(f"{prefix}*"):
        role, _, rest = path.name[len(prefix) :].partition("-")
        pid = rest.partition("-")[0]
        if role in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            yield path, role


def clean_leftovers(target: Path) -> None:
    """Delete what crashed writes of ``target`` left; put back an old copy if the crash fell
    between the two renames of the fallback path (only then is ``target`` missing)."""
    for path, role in sorted(_leftovers(target), key=lambda p: p[1] != "old"):
        if role == "old" and not os.path.lexists(target):
            logger.warning("restoring %s from %s, left by an interrupted write", target, path)
            os.rename(path, target)
        else:
            logger.info("removing %s, left by an interrupted write", path)
            shutil.rmtree(path, ignore_errors=True)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the directories themselves to disk."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(directory: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def check_replaceable(target: Path, marker: str) -> None:
    """Refuse to replace anything but a directory that holds ``marker``."""
    if target.is_symlink() or not target.is_dir():
        raise OutputExistsError(
            f"{target} exists and is not a directory; choose another output path (it was left as it was)"
        )
    if not (target / marker).is_file():
        raise OutputExistsError(
            f"{target} exists and has no {marker}, so it is not what this command writes; --overwrite "
            "only replaces an earlier output. Choose another path, or move that folder away yourself."
        )
    if marker == "manifest.json":  # a bundle: only the files its manifest lists may go
        strangers = _unlisted(target, marker)
        if strangers:
            raise OutputExistsError(
                f"{target} holds {', '.join(repr(s) for s in strangers[:3])}"
                f"{' and more' if len(strangers) > 3 else ''}, which its {marker} does not list as a "
                "bundle file, so --overwrite will not delete it. Choose another path, or move that "
                "folder away yourself."
            )


def _unlisted(target: Path, marker: str) -> list[str]:
    """The entries of ``target`` that its bundle manifest does not list (all of them, when the
    manifest is not a bundle's)."""
    try:
        listed = json.loads((target / marker).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, dict):
        return [marker]  # not a bundle's manifest: the folder is someone else's
    return sorted(p.name for p in target.iterdir() if p.name != marker and p.name not in listed)


@contextlib.contextmanager
def atomic_directory(
    target: Path, *, overwrite: bool = False, marker: str = "manifest.json"
) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it becomes ``target``.

    On an exception the temporary directory is removed and ``target`` is left as it was.
    ``overwrite`` replaces an existing ``target`` only if it is a directory holding ``marker``.
    """
    target = Path(target)
    exists = os.path.lexists(target)
    if exists and not overwrite:
        raise OutputExistsError(
            f"{target} already exists; choose another --out, or pass --overwrite to replace it"
        )
    if exists:
        check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    exists = os.path.lexists(target)  # a restored leftover counts
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        try:
            yield tmp
            step("written")
            fsync_tree(tmp)
            step("synced")
            if exists:
                _replace(tmp, target)
            else:
                os.rename(tmp, target)
                step("renamed")
            fsync_dir(target.parent)
            step("visible")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the old directory after a swap, or a failed write
    except OSError as e:
        if e.errno not in _CANNOT_WRITE:
            raise
        kept = "left as it was" if exists else "not written"
        raise OutputWriteError(
            f"could not write {target}: {e.strerror} ({errno.errorcode.get(e.errno or 0, e.errno)}); "
            f"{target} was {kept}, and nothing half-written remains. Free space (or lift the limit) "
            "and run it again."
        ) from e
    step("done")


#: The errors of a write the machine refuses: a full disk or quota, a file-size limit, a
#: read-only file system, too many files.
_CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EMFILE, errno.ENFILE}


def _replace(tmp: Path, target: Path) -> None:
    if exchange(tmp, target):
        step("exchanged")
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    step("moved-old")
    os.rename(tmp, target)
    step("renamed")
    shutil.rmtree(old, ignore_errors=True)
