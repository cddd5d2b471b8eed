"""The bundle: one directory that holds everything a built model needs to serve.

Layout (schema version 1)::

    manifest.json        what is here, how it was made, and a sha256 of every other file
    user_tower.onnx      user tower graph (text kind); pooling and L2 normalisation inside
    item_tower.onnx      item tower graph; same contract (a head, if trained, inside too)
    user_sequence.onnx   user tower graph (sequence kind): history item vectors in, user out;
                         its ``request`` tower (free text) is the item tower's graph
    tokenizer.json       the encoder's tokenizer (Hugging Face ``tokenizers`` format)
    item_index.hnsw      hnswlib graph over the item vectors; label i is item_ids[i]
    item_vectors.npy     float32 (n, dim) item vectors, the exact reference (no pickle)
    item_offsets.npy     optional: learned per-item offsets already inside item_vectors.npy
    item_ids.json        the item-id map: a JSON list, position = index label
    catalog.jsonl        one item a line: item_id, text, attributes
    probe.json           optional: validation histories and request texts for later checks

Loading reads local files only, checks the schema version first and the checksums next, and
names the command that produces a missing piece. New steps add fields to the manifest; a reader
ignores fields it does not know, and refuses a schema version it does not know.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys_infer.enums import Pooling, Precision, Space
from recsys_infer.errors import (
    BundleError,
    BundleIntegrityError,
    MissingBundleFileError,
    OutputExistsError,
    SchemaVersionError,
)

from .userinput import UserInputFormat

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_MAKE_BUNDLE = "recsys-infer export CHECKPOINT --out BUNDLE"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: ``text``: token ids in, unit vector out. ``sequence``: history item vectors in (``max_length``
#: is then the number of history items), unit vector out.
TOWER_KINDS = ("text", "sequence")


@dataclass(frozen=True)
class TowerSpec:
    """One tower's graph and the contract of its input and output."""

    file: str
    max_length: int
    dim: int
    pooling: Pooling = Pooling.MEAN
    normalize: bool = True
    precision: Precision = Precision.FP32
    quantization: str | None = None
    kind: str = "text"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", Pooling(self.pooling))
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.max_length < 2 or self.dim < 1:
            raise BundleError(f"tower {self.file}: max_length and dim must be positive")
        if self.kind not in TOWER_KINDS:
            raise BundleError(
                f"tower {self.file} is of kind {self.kind!r}, which this version cannot run; "
                "upgrade recsys-infer"
            )


@dataclass(frozen=True)
class IndexSpec:
    """The item index and the vectors it was built from."""

    file: str
    vectors_file: str
    item_ids_file: str
    space: Space
    dim: int
    count: int
    M: int
    ef_construction: int
    ef_search: int
    kind: str = "hnsw"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "space", Space(self.space))
        if self.kind != "hnsw":
            raise BundleError(f"index kind {self.kind!r} is not supported by this version")


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``. ``raw`` keeps every field, known or not."""

    schema_version: int
    towers: Mapping[str, TowerSpec]
    tokenizer_file: str
    pad_token: str
    user_input: UserInputFormat
    index: IndexSpec
    catalog_file: str
    probe_file: str | None
    files: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any]

    @property
    def user(self) -> TowerSpec:
        return self.towers["user"]

    @property
    def item(self) -> TowerSpec:
        return self.towers["item"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = MANIFEST) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{source}: schema version {version!r} is not supported by this recsys-infer "
                f"(it reads version {SCHEMA_VERSION}). Upgrade recsys-infer, or rebuild the "
                f"bundle with this version: {_MAKE_BUNDLE}"
            )
        try:
            towers = {name: _known(TowerSpec, spec) for name, spec in data["towers"].items()}
            for name in ("user", "item"):
                if name not in towers:
                    raise KeyError(f"towers.{name}")
            if towers["item"].kind != "text":
                raise ValueError("the item tower must be a text tower")
            if towers["user"].kind == "sequence" and "request" not in towers:
                raise KeyError("towers.request (a sequence user tower needs a text request tower)")
            spec = _known(IndexSpec, data["index"])
            probe = data.get("probe")
            return cls(
                schema_version=version,
                towers=towers,
                tokenizer_file=data["tokenizer"]["file"],
                pad_token=data["tokenizer"]["pad_token"],
                user_input=UserInputFormat.from_dict(data["user_input"]),
                index=spec,
                catalog_file=data["catalog"]["file"],
                probe_file=probe["file"] if probe else None,
                files=data["files"],
                raw=data,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(
                f"{source} is incomplete or malformed ({type(e).__name__}: {e}). Rebuild the "
                f"bundle: {_MAKE_BUNDLE}"
            ) from e

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def _known(cls: Any, fields: Mapping[str, Any]) -> Any:
    """``cls`` built from the fields it knows; the others are kept in its ``extra``."""
    known = {f for f in cls.__dataclass_fields__ if f != "extra"}
    return cls(
        **{k: v for k, v in fields.items() if k in known},
        extra={k: v for k, v in fields.items() if k not in known},
    )


def read_manifest(bundle: Path) -> Manifest:
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise MissingBundleFileError(f"no bundle directory at {bundle}. Build one with: {_MAKE_BUNDLE}")
    if not path.is_file():
        raise MissingBundleFileError(
            f"{bundle} is not a bundle: it has no {MANIFEST}. Build one with: {_MAKE_BUNDLE}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleIntegrityError(f"{path} is not valid JSON ({e}); rebuild: {_MAKE_BUNDLE}") from e
    if not isinstance(data, dict):
        raise BundleIntegrityError(f"{path} does not hold a JSON object; rebuild: {_MAKE_BUNDLE}")
    return Manifest.from_dict(data, source=str(path))


def verify_files(bundle: Path, manifest: Manifest, *, checksums: bool = True) -> None:
    """Every file the manifest lists exists and (optionally) has its recorded sha256."""
    needed = {spec.file for spec in manifest.towers.values()} | {
        manifest.tokenizer_file,
        manifest.index.file,
        manifest.index.vectors_file,
        manifest.index.item_ids_file,
        manifest.catalog_file,
    }
    unlisted = needed - set(manifest.files)
    if unlisted:
        raise BundleIntegrityError(
            f"{bundle / MANIFEST} lists no checksum for {sorted(unlisted)}; rebuild: {_MAKE_BUNDLE}"
        )
    for name, entry in manifest.files.items():
        path = bundle / name
        if not path.is_file():
            raise MissingBundleFileError(
                f"{path} is missing from the bundle. Rebuild the bundle: {_MAKE_BUNDLE}"
            )
        size = path.stat().st_size
        if size != entry.get("bytes", size):
            raise BundleIntegrityError(
                f"{path} has {size} bytes, the manifest says {entry['bytes']}: the file is "
                f"truncated or was changed after the build. Rebuild: {_MAKE_BUNDLE}"
            )
        if checksums and sha256_file(path) != entry["sha256"]:
            raise BundleIntegrityError(
                f"{path} does not match the sha256 in the manifest: it was changed or corrupted "
                f"after the build. Rebuild: {_MAKE_BUNDLE}"
            )


def file_entries(directory: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in ``directory`` except the manifest."""
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(directory: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` with the checksums of the directory's files; returns what was written."""
    full = {**data, "schema_version": SCHEMA_VERSION, "files": file_entries(directory)}
    Manifest.from_dict(full)  # never write a manifest this version could not read back
    text = json.dumps(full, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    (directory / MANIFEST).write_text(text, encoding="utf-8")
    return full


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to a manifest")


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it becomes ``target``.

    On any exception the temporary directory is removed and ``target`` is left as it was, so a
    half-written bundle never stands where a whole one is expected.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target} already exists; choose another --out, or pass --overwrite to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def rewritten_catalogue(
    src: Path,
    manifest: Manifest,
    target: Path,
    *,
    index: Any,
    vectors: Any,
    item_ids: list[str | None],
    catalog: Any,
    overwrite: bool = False,
    replaced: tuple[str, ...] = (),
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Write ``target`` atomically as ``src`` with a new catalogue: the graphs and tokenizer
    copied, the index, item vectors, item-id map and catalogue written from the arguments.
    Yields the temporary directory (for ``replaced`` files the caller writes) and a copy of the
    manifest to amend; the manifest is written, with fresh checksums, when the block ends."""
    import numpy as np

    spec = manifest.index
    rewritten = {spec.file, spec.vectors_file, spec.item_ids_file, manifest.catalog_file, MANIFEST, *replaced}
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for name in manifest.files:
            if name not in rewritten:
                shutil.copy2(src / name, tmp / name)
        index.save(tmp / spec.file)
        np.save(tmp / spec.vectors_file, vectors, allow_pickle=False)
        (tmp / spec.item_ids_file).write_text(json.dumps(item_ids, ensure_ascii=False), encoding="utf-8")
        catalog.write_jsonl(tmp / manifest.catalog_file)
        raw: dict[str, Any] = json.loads(json.dumps(manifest.raw))
        raw["index"].update({"count": len(catalog), "capacity": index.capacity})
        yield tmp, raw
        write_manifest(tmp, {k: v for k, v in raw.items() if k not in ("files", "schema_version")})
