"""Every error recsys-infer raises on purpose.

One tree, so a service can catch what it can handle and let the rest through::

    RecsysError
    ├── ConfigError (ValueError)   a setting is out of range or inconsistent with another
    ├── DataError                  a data file is missing, malformed or inconsistent
    ├── BundleError                a bundle cannot be used
    │   ├── MissingBundleFileError     a file the manifest needs is not there
    │   ├── BundleIntegrityError       a file's sha256 differs from the manifest's
    │   └── SchemaVersionError         the manifest's schema is not one this version reads
    ├── CheckpointError            a training checkpoint cannot be used
    ├── QueryError (ValueError)    a request to the engine is malformed
    │   └── UnknownItemError           a history names an item the catalogue lacks
    ├── OverloadedError            too much work is waiting; retry later (HTTP 429)
    ├── BackendUnavailableError    a server it relies on (Milvus, a Ray cluster) does not answer (HTTP 503)
    ├── DeviceUnavailableError     the requested device cannot run this bundle
    ├── ExportError                an export failed
    │   └── ParityError                ONNX Runtime disagrees with PyTorch beyond tolerance
    ├── FidelityError              a compressed bundle strays further from its reference than allowed
    ├── TrainingError              training cannot go on (e.g. the loss diverged)
    ├── OutputExistsError (FileExistsError)  an output path is taken and overwriting was not asked
    └── MissingDependencyError     an optional dependency (the ``train`` extra) is absent

Every message says what failed, what was expected, what was found and how to fix it.
"""

from __future__ import annotations

from pathlib import Path


class RecsysError(Exception):
    """Base class of every error raised on purpose by recsys-infer."""


class ConfigError(RecsysError, ValueError):
    """A setting (an option, a recipe field, a constructor argument) is out of range or
    inconsistent with another."""


class DataError(RecsysError):
    """A data file is missing, malformed or inconsistent.

    ``path`` and ``line`` (1-based, the header is line 1) locate the problem when known.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}" + (f", line {line}" if line is not None else "") + ": "
        super().__init__(where + message)


class BundleError(RecsysError):
    """A bundle directory cannot be used."""


class MissingBundleFileError(BundleError):
    """A file the manifest needs is not in the bundle."""


class BundleIntegrityError(BundleError):
    """A bundle file's content differs from the checksum recorded in its manifest."""


class SchemaVersionError(BundleError):
    """The manifest's schema version is not one this version of recsys-infer reads."""


class CheckpointError(RecsysError):
    """A training checkpoint directory cannot be used."""


class QueryError(RecsysError, ValueError):
    """A request to the engine is malformed (empty, bad ``k``, wrong types)."""


class UnknownItemError(QueryError):
    """A history names item ids that the bundle's catalogue does not hold."""

    def __init__(self, unknown: list[str], catalog_size: int, *, what: str = "history item"):
        self.unknown = unknown
        shown = ", ".join(ascii(u)[:60] for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        fix = (
            "Remove them from the history, or add the items to the catalogue first."
            if what == "history item"
            else "Check the ids; only items in the catalogue can be changed or removed."
        )
        super().__init__(
            f"{len(unknown)} {what} id(s) are not in the catalogue ({catalog_size} items): {shown}. {fix}"
        )


class ConflictError(QueryError):
    """A request that clashes with the current state: an id already in the catalogue, or a
    swap while catalogue edits are unsaved (HTTP 409)."""


class OverloadedError(RecsysError):
    """More requests are waiting than the service or micro-batcher accepts; retry shortly."""


class BackendUnavailableError(RecsysError):
    """A server recsys-infer relies on did not answer: the Milvus holding the item index
    (unreachable at start, or gone mid-request) or a Ray cluster. Never answered by falling
    back to something else (another index, a local cluster)."""


class DeviceUnavailableError(RecsysError):
    """The requested device cannot run this bundle."""


class ExportError(RecsysError):
    """Exporting a checkpoint to a bundle failed; no bundle was written."""


class ParityError(ExportError):
    """The exported ONNX graph's outputs differ from PyTorch's beyond the tolerance."""


class FidelityError(RecsysError):
    """A compression step changed the recommendations more than its budget allows."""


class TrainingError(RecsysError):
    """Training cannot go on (for example, the loss became NaN)."""


class OutputExistsError(RecsysError, FileExistsError):
    """An output path already exists and the caller did not ask to overwrite it."""


class OutputWriteError(RecsysError, OSError):
    """The machine refused a write (a full disk, a quota, a file-size limit, a read-only file
    system); whatever was at the output path was left as it was."""


class MissingDependencyError(RecsysError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str = "train", *, message: str | None = None):
        self.package = package
        if message is not None:
            super().__init__(message)
            return
        torch_note = (
            " (CPU-only machines: install torch's CPU build first, see the README)"
            if extra == "train"
            else ""
        )
        super().__init__(
            f"this needs {package!r}, which is not installed. It comes with the {extra!r} extra: "
            f"pip install 'recsys-infer[{extra}]'{torch_note}."
        )
