"""The typed bundle manifest: one definition of ``manifest.json``, read and written by every
module through :func:`parse_manifest` and :func:`manifest_json`.

Layout of a bundle (schema version 1); the names are the constants below::

    manifest.json        what is here, how it was made, and a sha256 of every other file
    user_tower.onnx      user tower graph (text kind); pooling and L2 normalisation inside
    item_tower.onnx      item tower graph; same contract (a head, if trained, inside too)
    tower.onnx           the one graph of a model whose two text towers share weights
    user_sequence.onnx   user tower graph (sequence kind): history item vectors in, user out
    request_tower.onnx   a sequence model's own request tower (else requests read the item graph)
    tokenizer.json       the encoder's tokenizer (Hugging Face ``tokenizers`` format)
    item_index.hnsw      hnswlib graph over the item vectors; label i is item_ids[i] (absent
                         when the index is a Milvus collection: see ``IndexSpec``)
    item_vectors.npy     float32 (n, dim) item vectors, the exact reference (no pickle)
    item_offsets.npy     optional: learned per-item offsets already inside item_vectors.npy
    item_ids.json        the item-id map: a JSON list, position = index label (null: a free slot)
    catalog.jsonl        one item a line: item_id, text, attributes
    probe.json           optional: validation histories and request texts for later checks

Every file name in a manifest is a plain name inside the bundle: no separators, no ``..``, not
absolute. Readers ignore fields they do not know (kept in ``extra`` and written back), and
refuse a schema version they do not know.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recsys_infer.enums import Consistency, Pooling, Precision, Space, VectorStorage
from recsys_infer.errors import BundleError, SchemaVersionError

from .schema import SchemaError, decode, encode
from .userinput import UserInputFormat

if TYPE_CHECKING:
    from .types import Query

SCHEMA_VERSION = 3
#: Version 2 adds ``fusion`` (two spaces in one vector), version 3 ``seen`` (a penalty on
#: history items that may be returned). A bundle is written with the lowest version that holds
#: what it has (:func:`schema_version_of`), so older readers still load what they can score
#: and refuse the rest instead of scoring it wrongly.
SCHEMA_VERSIONS = (1, 2, 3)

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
SHARED_TOWER = "tower.onnx"
USER_SEQUENCE = "user_sequence.onnx"
REQUEST_TOWER = "request_tower.onnx"
ITEM_INDEX = "item_index.hnsw"
ITEM_VECTORS = "item_vectors.npy"
ITEM_OFFSETS = "item_offsets.npy"
ITEM_IDS = "item_ids.json"
CATALOG = "catalog.jsonl"
PROBE = "probe.json"

MAKE_BUNDLE = "recsys-infer export CHECKPOINT --out BUNDLE"

#: ``text``: token ids in, unit vector out. ``sequence``: history item vectors in (``max_length``
#: is then the number of history items), unit vector out.
TOWER_KINDS = ("text", "sequence")


def check_file_name(name: str, where: str) -> str:
    """``name`` if it is a plain file name inside the bundle; a :class:`SchemaError` otherwise."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith("~")
        or (len(name) > 1 and name[1] == ":")
    )
    if bad:
        raise SchemaError(
            f"{where}: {name!r:.80} is not a plain file name; a bundle only names files inside itself"
        )
    return name


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


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
    head: bool | None = None
    hidden: int | None = None
    layers: int | None = None
    heads: int | None = None
    steps: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_file_name(self.file, "file")
        if self.max_length < 2 or self.dim < 1:
            raise ValueError(f"tower {self.file}: max_length and dim must be positive")
        if self.kind not in TOWER_KINDS:
            raise ValueError(
                f"tower {self.file} is of kind {self.kind!r}, which this version cannot run; "
                "upgrade recsys-infer"
            )


#: ``hnsw``: an hnswlib graph in the bundle (``file``). ``milvus``: a Milvus collection
#: (``uri``, ``collection``) that holds the items, their vectors and the index; the bundle's
#: catalogue, vectors and item-id map are then the snapshot the collection was built from.
INDEX_KINDS = ("hnsw", "milvus")


@dataclass(frozen=True)
class IndexSpec:
    """The item index and the vectors it was built from."""

    vectors_file: str
    item_ids_file: str
    space: Space
    dim: int
    count: int
    M: int
    ef_construction: int
    ef_search: int
    file: str | None = None
    kind: str = "hnsw"
    capacity: int | None = None
    build_threads: int | None = None
    built_with: str | None = None
    offsets_file: str | None = None
    uri: str | None = None
    collection: str | None = None
    #: A Milvus index's read consistency (absent: :attr:`Consistency.SESSION`).
    consistency: Consistency | None = None
    #: How a Milvus index holds the vectors (absent: :attr:`VectorStorage.FP32`).
    storage: VectorStorage | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("file", "vectors_file", "item_ids_file", "offsets_file"):
            if getattr(self, name) is not None:
                check_file_name(getattr(self, name), name)
        if self.kind not in INDEX_KINDS:
            raise ValueError(
                f"index kind {self.kind!r} is not supported by this version (it reads {INDEX_KINDS})"
            )
        if self.kind == "hnsw" and self.file is None:
            raise ValueError("an hnsw index needs its file")
        if self.kind == "milvus" and not (self.uri and self.collection):
            raise ValueError("a milvus index needs its uri and collection")

    @property
    def hnsw_file(self) -> str:
        """The hnswlib graph's file name (an ``hnsw`` index only)."""
        if self.file is None:
            raise BundleError(f"this bundle's index is {self.kind!r}; it has no HNSW file")
        return self.file
        for name in ("dim", "M", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.count < 0:
            raise ValueError(f"count must not be negative, got {self.count}")


@dataclass(frozen=True)
class SeenSpec:
    """What a user's own history items lose when they may be returned (``exclude_seen=False``).

    A user vector is built from the history, so the history's items, the newest above all, score
    high, whether or not the catalogue is one people come back to. A penalty is taken off each
    history item's score before ranking: ``penalty`` for a history alone, ``with_request`` for a
    history sent with a request (which may name an item bought before). 0 ranks them as scored,
    and :data:`MAX_SEEN_PENALTY` (the widest gap two cosines can have) puts them below every
    other item. ``export`` chooses each on the validation probe, with history items left in the
    ranking (``chosen_on`` keeps the measurements). With ``exclude_seen=True``, the default,
    history items are never returned and the penalty plays no part.
    """

    penalty: float = 0.0
    with_request: float = 0.0
    chosen_on: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("penalty", "with_request"):
            if not 0 <= getattr(self, name) <= MAX_SEEN_PENALTY:
                raise ValueError(f"{name}: must be in [0, {MAX_SEEN_PENALTY}], got {getattr(self, name)}")

    def of(self, query: Query) -> float:
        """The penalty for this query's history items."""
        return self.with_request if query.text else self.penalty


#: A seen-item penalty that ranks every history item below every other item.
MAX_SEEN_PENALTY = 2.0


@dataclass(frozen=True)
class FusionSpec:
    """How a two-space bundle scores (a sequence model exported with its text space).

    Each item vector is ``[trained ; text] / sqrt(2)``: the item head's unit vector beside the
    pretrained encoder's unit vector of the same text. A query is built block by block and
    scaled to unit length, so a score is a weighted sum of the two spaces' cosines:

    - history: ``[user ; text view]`` weighted by ``history``, where the user vector is the
      sequence tower's and the text view is the recency-weighted mean (``decay`` per step
      back) of the history items' text vectors;
    - request: the request tower's ``[trained ; text]`` weighted by ``request``; ``(0, 1)``
      reads a request exactly as the untrained encoder would;
    - both: ``mix`` times the unit history query plus ``1 - mix`` times the unit request query.

    The weights are chosen on the validation probe by ``export`` (``chosen_on`` keeps the
    measurements).
    """

    dims: tuple[int, ...]
    history: tuple[float, ...] = (1.0, 0.0)
    decay: float = 1.0
    request: tuple[float, ...] = (0.0, 1.0)
    mix: float = 0.5
    chosen_on: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.dims) != 2 or min(self.dims) < 1:
            raise ValueError(f"fusion.dims must be two positive widths, got {list(self.dims)}")
        for name in ("history", "request"):
            weights = getattr(self, name)
            if len(weights) != 2 or min(weights) < 0 or max(weights) <= 0:
                raise ValueError(f"fusion.{name} must be two weights >= 0, not both 0; got {list(weights)}")
        if not 0 < self.decay <= 1 or not 0 <= self.mix <= 1:
            raise ValueError(
                f"fusion.decay must be in (0, 1] and fusion.mix in [0, 1]; got {self.decay}, {self.mix}"
            )

    @property
    def width(self) -> int:
        return sum(self.dims)


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    pad_token: str

    def __post_init__(self) -> None:
        check_file_name(self.file, "file")


@dataclass(frozen=True)
class CatalogSpec:
    file: str
    count: int | None = None

    def __post_init__(self) -> None:
        check_file_name(self.file, "file")


@dataclass(frozen=True)
class ProbeSpec:
    """Validation histories and requests kept for measuring later compression steps."""

    file: str
    split: str = "validation"
    histories: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        check_file_name(self.file, "file")


@dataclass(frozen=True)
class ReferenceSpec:
    """The uncompressed bundle a compressed one was measured against."""

    bundle: str
    manifest_sha256: str


@dataclass(frozen=True)
class CompressionStep:
    """One compression step (``optimize``, ``quantize``, ``prune``) and its measured fidelity;
    the step's own settings (mode, towers, ratio, graphs, ...) are in ``extra``."""

    step: str
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CatalogEdit:
    """Live edits saved into the bundle by ``Engine.save``."""

    saved_at: str
    added: int
    updated: int
    removed: int
    items: int
    removed_slots: int
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Where the bundle came from: checkpoint, encoder, data, training settings, versions."""

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    encoder: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``.

    ``parity`` (export's ONNX-versus-PyTorch check) and ``fidelity`` (the latest measurement
    against the reference) are measurement records whose keys depend on the bundle's towers.
    """

    schema_version: int
    towers: Mapping[str, TowerSpec]
    tokenizer: TokenizerSpec
    user_input: UserInputFormat
    index: IndexSpec
    catalog: CatalogSpec
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    created_at: str | None = None
    opset: int | None = None
    user_tower: str | None = None
    shared_towers: bool | None = None
    probe: ProbeSpec | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    compression: tuple[CompressionStep, ...] = ()
    reference: ReferenceSpec | None = None
    provenance: Provenance = field(default_factory=Provenance)
    catalogue_edits: tuple[CatalogEdit, ...] = ()
    reindexed: Mapping[str, Any] | None = None
    fusion: FusionSpec | None = None
    seen: SeenSpec | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schema_version < schema_version_of(self):
            raise ValueError(f"this manifest needs schema version {schema_version_of(self)}")
        for name in ("user", "item"):
            if name not in self.towers:
                raise ValueError(f"towers.{name} is missing")
        if self.towers["item"].kind != "text":
            raise ValueError("the item tower must be a text tower")
        if self.towers["user"].kind == "sequence" and "request" not in self.towers:
            raise ValueError("towers.request is missing (a sequence user tower needs a text request tower)")
        for name in self.files:
            check_file_name(name, "files")
        if self.fusion is not None:
            if self.towers["user"].kind != "sequence":
                raise ValueError("fusion applies to a sequence user tower only")
            item, user = self.towers["item"].dim, self.towers["user"].dim
            if self.fusion.width != item or self.fusion.dims[0] != user:
                raise ValueError(
                    f"fusion.dims {list(self.fusion.dims)} do not match the item tower's {item}-d "
                    f"and the user tower's {user}-d vectors"
                )
        if self.index.dim != self.towers["item"].dim:
            raise ValueError(
                f"index.dim {self.index.dim} differs from the item tower's {self.towers['item'].dim}"
            )

    @property
    def user(self) -> TowerSpec:
        return self.towers["user"]

    @property
    def item(self) -> TowerSpec:
        return self.towers["item"]

    def needed_files(self) -> set[str]:
        """The files the runtime reads (each must be listed, with its checksum, in ``files``)."""
        names = {spec.file for spec in self.towers.values()}
        names |= {self.tokenizer.file, self.index.vectors_file, self.index.item_ids_file}
        if self.index.file is not None:
            names.add(self.index.file)
        names.add(self.catalog.file)
        if self.index.offsets_file:
            names.add(self.index.offsets_file)
        if self.probe is not None:
            names.add(self.probe.file)
        return names


def parse_manifest(data: object, *, source: str = MANIFEST) -> Manifest:
    """A :class:`Manifest` from parsed JSON; :class:`BundleError` names the first bad field."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        raise SchemaVersionError(
            f"{source}: schema version {version!r:.40} is not supported by this recsys-infer (it "
            f"reads versions {' and '.join(map(str, SCHEMA_VERSIONS))}). Upgrade recsys-infer, "
            f"or rebuild the bundle with this version: {MAKE_BUNDLE}"
        )
    try:
        return decode(Manifest, data, "manifest")
    except SchemaError as e:
        raise BundleError(f"{source} is malformed: {e}. Rebuild the bundle: {MAKE_BUNDLE}") from e


def schema_version_of(manifest: Manifest) -> int:
    """The lowest schema version that holds what ``manifest`` has (see :data:`SCHEMA_VERSIONS`)."""
    if manifest.seen is not None and max(manifest.seen.penalty, manifest.seen.with_request) > 0:
        return 3
    return 2 if manifest.fusion is not None else 1


#: The field of ``manifest.json`` that holds the digest of the rest of it, so that an edit made
#: after it was written (a fusion weight, ``ef_search``, a token budget: values the file
#: checksums cannot cover, as they live in the manifest) is refused at load.
DIGEST = "digest"


def manifest_digest(data: Mapping[str, Any]) -> str:
    """``sha256:`` and the hex digest of ``data`` without its :data:`DIGEST`, in a canonical
    form (sorted keys, no spaces), so that reformatting the file changes nothing."""
    body = {k: v for k, v in data.items() if k != DIGEST}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_json(manifest: Manifest) -> str:
    """The manifest as the text of ``manifest.json``, its :data:`DIGEST` last."""
    data = json.loads(json.dumps(encode(manifest), ensure_ascii=False))  # as a reader will see it
    data.pop(DIGEST, None)
    data[DIGEST] = manifest_digest(data)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
