"""A stand-in for the Hugging Face Hub in a local folder, so that tests never reach the network:
model repositories of commits (each commit a folder of files) and branches pointing at commits,
behind the parts of huggingface_hub the project calls (``HfApi.create_repo``, ``create_branch``,
``upload_folder`` and ``snapshot_download``). :func:`install` puts it in huggingface_hub's place."""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


class RepositoryNotFound(Exception):
    """As huggingface_hub's RepositoryNotFoundError (an HTTP 404 there)."""


class LocalHub:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.branches: dict[tuple[str, str], str | None] = {}
        self.private: dict[str, bool] = {}
        self.downloads: list[tuple[str, str | None]] = []

    # -- HfApi ------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False, **_: Any) -> None:
        assert repo_type == "model"
        if (repo_id, "main") not in self.branches:
            self.branches[(repo_id, "main")] = None
            self.private[repo_id] = private

    def create_branch(self, repo_id: str, *, branch: str, repo_type: str = "model", **_: Any) -> None:
        self._known(repo_id)
        self.branches.setdefault((repo_id, branch), self.branches[(repo_id, "main")])

    def upload_folder(
        self,
        *,
        folder_path: str,
        repo_id: str,
        repo_type: str = "model",
        revision: str | None = None,
        allow_patterns: list[str] | None = None,
        commit_message: str = "",
        **_: Any,
    ) -> Any:
        branch = revision or "main"
        if (repo_id, branch) not in self.branches:
            raise RepositoryNotFound(f"{repo_id}@{branch}")
        parent = self.branches[(repo_id, branch)]
        files = {} if parent is None else self._files(repo_id, parent)
        for path in sorted(Path(folder_path).iterdir()):
            if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in allow_patterns or ["*"]):
                files[path.name] = path.read_bytes()
        digest = hashlib.sha1(commit_message.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha1(files[name]).digest())
        commit = digest.hexdigest()
        folder = self._commit_folder(repo_id, commit)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        self.branches[(repo_id, branch)] = commit
        return SimpleNamespace(oid=commit, commit_url=f"https://hub.invalid/{repo_id}/commit/{commit}")

    # -- snapshot_download ------------------------------------------------------------------
    def snapshot_download(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        repo_type: str = "model",
        local_dir: Any = None,
        **_: Any,
    ) -> str:
        self.downloads.append((repo_id, revision))
        self._known(repo_id)
        commit = self.branches.get((repo_id, revision or "main"), revision)
        if commit is None or not self._commit_folder(repo_id, commit).is_dir():
            raise RepositoryNotFound(f"revision {revision!r} of {repo_id} not found")
        target = Path(local_dir)
        target.mkdir(parents=True, exist_ok=True)
        for path in self._commit_folder(repo_id, commit).iterdir():
            shutil.copyfile(path, target / path.name)
        return str(target)

    def stored(self, repo_id: str, commit: str) -> Path:
        """The folder holding a commit's files (for a test to damage)."""
        return self._commit_folder(repo_id, commit)

    def _known(self, repo_id: str) -> None:
        if (repo_id, "main") not in self.branches:
            raise RepositoryNotFound(f"repository {repo_id} not found")

    def _commit_folder(self, repo_id: str, commit: str) -> Path:
        return self.root / repo_id.replace("/", "--") / commit

    def _files(self, repo_id: str, commit: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self._commit_folder(repo_id, commit).iterdir()}


def install(monkeypatch: pytest.MonkeyPatch, root: Path) -> LocalHub:
    """A :class:`LocalHub` in ``root``, in huggingface_hub's place, and downloads cached under
    ``root/cache``."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    hub = LocalHub(root / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setenv("RECSYS_INFER_CACHE", str(root / "cache"))
    return hub
