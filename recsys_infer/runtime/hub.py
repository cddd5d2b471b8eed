"""Bundles on the Hugging Face Hub (the ``hub`` extra: huggingface_hub).

A bundle on the Hub is named ``hf://OWNER/NAME`` (the scheme huggingface_hub's file system
uses), so that a mistyped local path is never sent to the network: only a name the user wrote
as a Hub name is downloaded, at the revision asked for (a branch, tag or commit; ``main`` by
default). It is downloaded as plain files into ``~/.cache/recsys-infer/hub`` (or
``$RECSYS_INFER_CACHE/hub``), one folder per repository and revision, and then loaded and
verified like any bundle on disk: every file against the manifest's sha256.

:func:`push` uploads a bundle, verified first, with the model card every bundle carries
(``README.md``, written from its manifest), to a model repository it creates if needed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_infer.errors import BundleError, ConfigError, MissingDependencyError

from .bundle import read_manifest, verify_files

HUB_SCHEME = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_hub_name(path: str | Path) -> bool:
    """Whether ``path`` names a bundle on the Hub (``hf://OWNER/NAME``). A ``Path`` made from one
    has lost a slash (``hf:/OWNER/NAME``), and is recognised too."""
    return str(path).startswith("hf:/")


def repo_id(path: str | Path) -> str:
    """``OWNER/NAME`` from ``hf://OWNER/NAME``, checked."""
    repo = str(path).removeprefix("hf:").lstrip("/").rstrip("/")
    if not _REPO.match(repo) or ".." in repo:
        raise ConfigError(f"{str(path)!r:.120} is not a Hub bundle name: write hf://OWNER/NAME")
    return repo


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:
        raise MissingDependencyError("huggingface_hub", "hub") from e
    return huggingface_hub


def cache_folder(repo: str, revision: str | None) -> Path:
    """Where a downloaded bundle is kept: one folder per repository and revision."""
    root = Path(os.environ.get("RECSYS_INFER_CACHE") or Path.home() / ".cache" / "recsys-infer")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", revision or "main")
    return root / "hub" / repo.replace("/", "--") / safe


def download(path: str | Path, revision: str | None = None) -> Path:
    """The bundle ``hf://OWNER/NAME`` at ``revision``, downloaded (only what changed, when it is
    there already) into :func:`cache_folder`; the local folder, not yet verified."""
    repo = repo_id(path)
    folder = cache_folder(repo, revision)
    hub = _hub()
    try:
        local = hub.snapshot_download(repo, revision=revision, repo_type="model", local_dir=folder)
    except Exception as e:  # the client's errors: not found, no access, no network, bad revision
        raise BundleError(
            f"could not download the bundle {repo} at revision {revision or 'main'} from the Hugging Face "
            f"Hub ({type(e).__name__}: {str(e)[:300]}). Check the name, the revision and your access "
            "(HF_TOKEN or `hf auth login` for a private repository)."
        ) from e
    return Path(local)


def local_bundle(path: str | Path, revision: str | None = None) -> Path:
    """The bundle folder for ``path``: the folder itself, or a Hub bundle's download."""
    if is_hub_name(path):
        return download(path, revision)
    if revision is not None:
        raise ConfigError(
            f"a revision is for bundles on the Hub (hf://OWNER/NAME); {str(path)!r:.80} is a folder"
        )
    return Path(path)


@dataclass(frozen=True)
class Pushed:
    """What :func:`push` uploaded: the repository, the revision, the commit and its address."""

    repo: str
    revision: str
    commit: str
    url: str
    files: int


def push(
    bundle: str | Path,
    name: str,
    *,
    revision: str | None = None,
    private: bool = False,
    message: str | None = None,
    token: str | None = None,
) -> Pushed:
    """Upload ``bundle``, verified first, to the model repository ``name`` (``OWNER/NAME`` or
    ``hf://OWNER/NAME``; created if needed, ``private`` then), on branch ``revision`` (created
    from ``main`` if needed; default ``main``). Returns the commit it made."""
    folder = Path(bundle)
    manifest = read_manifest(folder)
    verify_files(folder, manifest, checksums=True)
    repo = repo_id(name if is_hub_name(name) else f"hf://{name}")
    hub = _hub()
    api = hub.HfApi(token=token)
    listed = [*manifest.files, "manifest.json"]
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="model",
            revision=revision,
            allow_patterns=listed,  # the bundle's own files, nothing left beside them
            commit_message=message or f"recsys-infer bundle: {manifest.provenance.encoder.get('name', '')}",
        )
    except Exception as e:
        raise BundleError(
            f"could not push {folder} to {repo} on the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e)[:300]}). Check the name and that your token may write to it (HF_TOKEN, or "
            "`hf auth login`)."
        ) from e
    return Pushed(repo, revision or "main", str(commit.oid), str(commit.commit_url), len(listed))
