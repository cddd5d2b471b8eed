"""Reading, checking and writing bundle directories (the manifest's model is in
:mod:`recsys_infer.runtime.manifest`).

Loading reads local files only, checks the schema version first and the checksums next, and
names the command that produces a missing piece. Writing goes through
:func:`~recsys_infer.runtime.atomic.atomic_directory`, so a bundle path always holds a whole
bundle, and the manifest written is read back before the bundle becomes visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys_infer.errors import BundleError, BundleIntegrityError, MissingBundleFileError

from .atomic import atomic_directory, step
from .card import CARD, model_card
from .manifest import (
    DIGEST,
    MAKE_BUNDLE,
    MANIFEST,
    SCHEMA_VERSION,
    FileEntry,
    Manifest,
    manifest_digest,
    manifest_json,
    parse_manifest,
    schema_version_of,
)

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "Manifest",
    "atomic_directory",
    "file_entries",
    "read_item_ids",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_catalog_bundle",
    "write_manifest",
]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: Path) -> Manifest:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise MissingBundleFileError(f"no bundle directory at {bundle}. Build one with: {MAKE_BUNDLE}")
    if not path.is_file():
        raise MissingBundleFileError(
            f"{bundle} is not a bundle: it has no {MANIFEST}. Build one with: {MAKE_BUNDLE}"
        )
    _inside(bundle, MANIFEST)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleIntegrityError(f"{path} is not valid JSON ({e}); rebuild: {MAKE_BUNDLE}") from e
    if not isinstance(data, dict):
        raise BundleIntegrityError(f"{path} does not hold a JSON object; rebuild: {MAKE_BUNDLE}")
    recorded = data.pop(DIGEST, None)  # absent from manifests written before it was recorded
    if recorded is not None and recorded != manifest_digest(data):
        raise BundleIntegrityError(
            f"{path} was changed after it was written (its {DIGEST} no longer matches its contents): a "
            f"hand edit of a weight or limit would change results unseen. Rebuild: {MAKE_BUNDLE}"
        )
    return parse_manifest(data, source=str(path))


def _inside(bundle: Path, name: str) -> Path:
    """``bundle / name``, refused when it is a link that leads out of the bundle."""
    path = bundle / name
    try:
        outside = path.is_symlink() and path.resolve().parent != bundle.resolve()
    except (RuntimeError, OSError) as e:  # a loop of links, or one too deep to follow
        raise BundleIntegrityError(
            f"{path} is a symbolic link that cannot be followed ({e}); a bundle holds its own files. "
            f"Rebuild: {MAKE_BUNDLE}"
        ) from e
    if outside:
        raise BundleIntegrityError(
            f"{path} is a symbolic link to {path.resolve()}, outside the bundle; a bundle holds its "
            f"own files. Rebuild: {MAKE_BUNDLE}"
        )
    return path


def read_item_ids(path: Path) -> list[str | None]:
    """The item-id map: position = index label, ``None`` for a free slot."""
    try:
        item_ids = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(item_ids, list) or not all(i is None or isinstance(i, str) for i in item_ids):
        raise BundleError(f"{path} must hold a JSON list of item id strings (null for a free slot)")
    return item_ids


def verify_files(bundle: Path, manifest: Manifest, *, checksums: bool = True) -> None:
    """Every file the manifest lists is inside the bundle, exists and (optionally) has its
    recorded sha256."""
    unlisted = manifest.needed_files() - set(manifest.files)
    if unlisted:
        raise BundleIntegrityError(
            f"{bundle / MANIFEST} lists no checksum for {sorted(unlisted)}; rebuild: {MAKE_BUNDLE}"
        )
    for name, entry in manifest.files.items():
        path = _inside(bundle, name)
        if not path.is_file():
            raise MissingBundleFileError(
                f"{path} is missing from the bundle. Rebuild the bundle: {MAKE_BUNDLE}"
            )
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleIntegrityError(
                f"{path} has {size} bytes, the manifest says {entry.bytes}: the file is truncated or "
                f"was changed after the build. Rebuild: {MAKE_BUNDLE}"
            )
        if checksums and sha256_file(path) != entry.sha256:
            raise BundleIntegrityError(
                f"{path} does not match the sha256 in the manifest: it was changed or corrupted "
                f"after the build. Rebuild: {MAKE_BUNDLE}"
            )


def file_entries(directory: Path) -> dict[str, FileEntry]:
    """sha256 and size of every regular file in ``directory`` except the manifest."""
    entries = {}
    for p in sorted(directory.iterdir()):
        if p.name == MANIFEST:
            continue
        if p.is_symlink() or not p.is_file():
            raise BundleError(f"{p} is not a regular file; a bundle holds plain files only")
        entries[p.name] = FileEntry(sha256_file(p), p.stat().st_size)
    return entries


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Write ``manifest.json`` with the checksums of the directory's files, after checking that
    this version reads it back; returns what was written."""
    version = schema_version_of(manifest)
    # The model card first, from this manifest, so that it is among the checksummed files.
    card = model_card(replace(manifest, schema_version=version))
    (directory / CARD).write_text(card, encoding="utf-8")
    full = replace(manifest, schema_version=version, files=file_entries(directory))
    text = manifest_json(full)
    parse_manifest(json.loads(text))  # never write a manifest this version could not read back
    missing = full.needed_files() - set(full.files)
    if missing:
        raise BundleError(f"the manifest names files that were not written: {sorted(missing)}")
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
    return full


#: Writes one file of a bundle into the directory it is given.
FileWriter = Callable[[Path], object]


def write_catalog_bundle(
    src: Path,
    manifest: Manifest,
    target: Path,
    *,
    index: Any | None,
    vectors: np.ndarray,
    item_ids: list[str | None],
    catalog: Any,
    overwrite: bool = False,
    amend: Callable[[Manifest], Manifest] = lambda m: m,
    files: Mapping[str, FileWriter] | None = None,
) -> Manifest:
    """Write ``target`` atomically as ``src`` with a new catalogue: the graphs and tokenizer
    copied, the index, item vectors, item-id map and catalogue written from the arguments (and
    any ``files`` by their writers); ``amend`` edits the manifest before it is written.

    ``index`` None: no HNSW file (the index lives elsewhere, as ``amend`` records).
    ``target`` may be ``src`` itself: the new bundle is written beside it and swapped in."""
    spec = manifest.index
    dropped = {spec.file} if index is None else set()
    written: dict[str, FileWriter] = {
        spec.vectors_file: lambda p: np.save(p / spec.vectors_file, vectors, allow_pickle=False),
        spec.item_ids_file: lambda p: (p / spec.item_ids_file).write_text(
            json.dumps(item_ids, ensure_ascii=False), encoding="utf-8"
        ),
        manifest.catalog.file: lambda p: catalog.write_jsonl(p / manifest.catalog.file),
        **(files or {}),
    }
    if index is not None:
        name = spec.hnsw_file
        written[name] = lambda p: index.save(p / name)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for name in manifest.files:
            if name not in written and name not in dropped:
                shutil.copy2(_inside(Path(src), name), tmp / name)
        for name, write in written.items():
            write(tmp)
            step(f"wrote {name}")
        counted = replace(
            manifest,
            index=replace(spec, count=len(catalog), capacity=getattr(index, "capacity", spec.capacity)),
            catalog=replace(manifest.catalog, count=len(catalog)),
        )
        result = write_manifest(tmp, amend(counted))
    return result
