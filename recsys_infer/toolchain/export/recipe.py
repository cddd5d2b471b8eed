"""How export runs (:class:`ExportConfig`), and reading it from a recipe's TOML tables."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from recsys_infer.errors import ConfigError, ExportError
from recsys_infer.runtime.index import HnswParams

OPSET = 17


@dataclass(frozen=True)
class ExportConfig:
    """How to export and verify a checkpoint and index its catalogue (the ``[export]`` and
    ``[index]`` tables of a recipe)."""

    opset: int = OPSET
    max_abs_diff: float = 1e-4
    min_cosine: float = 0.9999
    parity_texts: int = 48
    hnsw: HnswParams = field(default_factory=HnswParams)
    index_threads: int = 1
    include_probe: bool = True
    # A sequence model's item vectors carry the pretrained text space beside the trained one,
    # weighed per query kind on the validation probe (runtime.manifest.FusionSpec). False: the
    # trained space alone, as bundles were before (requests then read the trained head).
    text_space: bool = True
    # A sequence bundle's penalty on history items allowed back (exclude_seen=False), chosen on
    # the validation probe (runtime.manifest.SeenSpec). False: none, as bundles were before.
    seen_penalty: bool = True

    def __post_init__(self) -> None:
        if not 14 <= self.opset <= 21:
            raise ConfigError(f"opset must be between 14 and 21, got {self.opset}")
        if self.max_abs_diff <= 0 or not 0 < self.min_cosine <= 1:
            raise ConfigError("max_abs_diff must be positive and min_cosine in (0, 1]")
        if self.parity_texts < 4:
            raise ConfigError(f"parity_texts must be at least 4, got {self.parity_texts}")
        if self.index_threads < 1:
            raise ConfigError(f"index_threads must be positive, got {self.index_threads}")


#: The tables a recipe may hold (see :mod:`recsys_infer.toolchain.build`).
TABLES = ("encoder", "train", "export", "index", "prune", "steps", "gate")
_ENCODER_KEYS = ("name", "revision")
_GATE_KEYS = ("max_overlap_drop",)


def packaged_recipes() -> dict[str, Path]:
    """The recipes that ship inside the package (``recsys_infer/recipes``), by name."""
    folder = resources.files("recsys_infer") / "recipes"
    return {p.name.removesuffix(".toml"): Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe file: ``recipe`` itself when it is a file, else the packaged recipe of that name
    (``default``, ``int8``, ...)."""
    path = Path(recipe)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    if str(recipe) in packaged:
        return packaged[str(recipe)]
    raise ExportError(
        f"recipe {str(recipe)!r} is neither a file nor a packaged recipe; the packaged ones are "
        f"{sorted(packaged)} (or give a TOML file's path)"
    )


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """A recipe (a TOML file's path, or a packaged recipe's name) as a dict; a clear error for a
    bad file, and for a table or an ``[encoder]``/``[gate]`` key it does not know."""
    path = resolve_recipe(recipe)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ExportError(f"recipe {path} is not valid TOML: {e}") from e
    doc = {name: _flag_names(table) for name, table in doc.items()}
    for table, keys in (("", TABLES), ("encoder", _ENCODER_KEYS), ("gate", _GATE_KEYS)):
        given = doc if not table else doc.get(table, {})
        unknown = sorted(set(given) - set(keys))
        if unknown:
            where = f"[{table}] keys" if table else "tables"
            raise ExportError(f"recipe {path}: unknown {where} {unknown}; it takes {list(keys)}")
    return doc


def _flag_names(table: Any) -> Any:
    """A table's keys as the fields they set: a key may be spelt as the command's flag is
    (``batch-size``, for ``--batch-size``) or with underscores (``batch_size``)."""
    if isinstance(table, list):
        return [_flag_names(t) for t in table]
    if isinstance(table, dict):
        return {key.replace("-", "_"): value for key, value in table.items()}
    return table


def encoder_from_recipe(recipe: dict[str, Any]) -> tuple[str | None, str | None]:
    """The recipe's ``[encoder]``: its name (id or local path) and revision, each None when unset."""
    table = recipe.get("encoder", {})
    return table.get("name"), table.get("revision")


def train_config_from_recipe(recipe: dict[str, Any], *, source: str = "recipe") -> Any:
    """The recipe's ``[train]`` table as a ``TrainConfig``; an unknown key names the valid ones."""
    from recsys_infer.toolchain.train.loop import TrainConfig

    table = dict(recipe.get("train", {}))
    known = sorted(f.name for f in fields(TrainConfig))
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ExportError(f"{source}: unknown [train] keys {unknown}; it takes {known}")
    try:
        return TrainConfig(**table)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{source}: [train]: {e}") from e


def export_config_from_recipe(recipe: dict[str, Any], *, source: str = "recipe") -> ExportConfig:
    exp = dict(recipe.get("export", {}))
    idx = dict(recipe.get("index", {}))
    allowed = {f.name for f in fields(ExportConfig)} - {"hnsw", "index_threads"}
    unknown = set(exp) - allowed
    unknown_idx = set(idx) - {"M", "ef_construction", "ef_search", "threads"}
    if unknown or unknown_idx:
        raise ExportError(
            f"{source}: unknown keys {sorted(unknown | unknown_idx)}; [export] takes {sorted(allowed)}, "
            "[index] takes M, ef_construction, ef_search, threads"
        )
    threads = idx.pop("threads", 1)
    try:
        return ExportConfig(**exp, hnsw=HnswParams(**idx), index_threads=threads)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{source}: {e}") from e
