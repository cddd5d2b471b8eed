"""Reading data folders: MovieLens (latest-small, 100k, 1m) and a generic items/interactions pair.

Every problem is a :class:`~recsys_infer.errors.DataError` that names the file and line.
Interactions are ordered per user by timestamp (or position) with a stable sort, so equal
timestamps keep the file's row order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recsys_infer.errors import DataError
from recsys_infer.runtime.catalog import Catalog, Item

from .dataset import Dataset
from .text import TEXT_FIELDS, compose_text

logger = logging.getLogger(__name__)

_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
_MAX_TAGS = 5
_ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


# -- low-level file reading ------------------------------------------------------------------


@dataclass
class _File:
    path: Path
    text: str
    sha256: str


def _read_text(path: Path, encoding: str = "utf-8") -> _File:
    if not path.is_file():
        raise DataError("file not found", path=path)
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"not valid {encoding} (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            f"re-save the file as {encoding.upper()}",
            path=path,
            line=line,
        ) from e
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError("the file is empty", path=path)
    return _File(path, text, digest)


def _rows(file: _File, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for a .csv/.tsv (header row) or .jsonl (one object a line) file."""
    if file.path.suffix == ".jsonl":
        yield from _jsonl_rows(file, required)
        return
    delimiter = "\t" if file.path.suffix == ".tsv" else ","
    reader = csv.reader(io.StringIO(file.text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:  # pragma: no cover - empty files are caught in _read_text
        raise DataError("the file is empty", path=file.path) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; the header has {header}",
            path=file.path,
            line=1,
        )
    count = 0
    line_no = reader.line_num
    try:
        for values in reader:
            row_line = line_no + 1
            line_no = reader.line_num
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(
                    f"expected {len(header)} fields like the header, found {len(values)}",
                    path=file.path,
                    line=row_line,
                )
            count += 1
            yield row_line, {h: v.strip() for h, v in zip(header, values, strict=True)}
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path=file.path, line=reader.line_num) from e
    if count == 0:
        raise DataError("the file has a header but no rows", path=file.path)


def _jsonl_rows(file: _File, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    count = 0
    for line_no, line in enumerate(file.text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", path=file.path, line=line_no) from e
        if not isinstance(row, dict):
            raise DataError("each line must be a JSON object", path=file.path, line=line_no)
        missing = [c for c in required if c not in row]
        if missing:
            raise DataError(f"missing field(s) {missing}; found {sorted(row)}", path=file.path, line=line_no)
        count += 1
        yield line_no, row
    if count == 0:  # pragma: no cover - an all-blank file is caught in _read_text
        raise DataError("the file has no rows", path=file.path)


def _find_table(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{s}" for s in _TABLE_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise DataError(f"found {[p.name for p in found]}; keep exactly one {stem} file", path=folder)
    return found[0] if found else None


def _order_key(value: Any, *, path: Path, line: int, column: str) -> float:
    if isinstance(value, bool):
        raise DataError(f"{column} {value!r} is not a number or a date", path=path, line=line)
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            try:
                number = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise DataError(
                    f"{column} {text!r} is neither a number nor an ISO 8601 date",
                    path=path,
                    line=line,
                ) from None
    if not math.isfinite(number):
        raise DataError(f"{column} {value!r} is not finite", path=path, line=line)
    return number


def _sequences(events: Mapping[str, list[tuple[float, str]]]) -> dict[str, tuple[str, ...]]:
    # sorted() is stable: equal keys keep the order the rows were read in.
    return {u: tuple(i for _, i in sorted(ev, key=lambda e: e[0])) for u, ev in events.items()}


# -- item text ----------------------------------------------------------------------------------


# -- generic folders ---------------------------------------------------------------------------


#: What ``read_items`` reads: one table, or a folder of them (shards, read in name order).
ITEM_SUFFIXES = (*_TABLE_SUFFIXES, ".parquet")


def read_items(items_path: Path) -> tuple[Catalog, str]:
    """An items table (``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet``: ``item_id`` plus ``text``
    or text columns), or a folder of such tables (shards, read in name order), as a catalogue,
    and a sha256 of the input (the file's, or over the shards' names and hashes)."""
    items_path = Path(items_path)
    if items_path.is_dir():
        shards = sorted(p for p in items_path.iterdir() if p.suffix in ITEM_SUFFIXES and p.is_file())
        if not shards:
            raise DataError(f"the folder holds no item tables ({', '.join(ITEM_SUFFIXES)})", path=items_path)
    else:
        shards = [items_path]
    items: list[Item] = []
    seen: dict[str, tuple[Path, int]] = {}
    digest = hashlib.sha256()
    for shard in shards:
        rows, sha = _item_rows(shard)
        digest.update(f"{shard.name}\0{sha}\n".encode())
        _collect_items(rows, shard, items, seen)
    if not items:
        raise DataError("the items file has no rows", path=items_path)
    return Catalog(items), sha if len(shards) == 1 and not items_path.is_dir() else digest.hexdigest()


def _item_rows(path: Path) -> tuple[Iterator[tuple[int, dict[str, Any]]], str]:
    """(line or row number, row) of one items table, and its sha256."""
    if path.suffix == ".parquet":
        if not path.is_file():
            raise DataError("file not found", path=path)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                "reading Parquet needs pyarrow: pip install pyarrow (it comes with the 'scale' extra)",
                path=path,
            ) from None
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises its own error types for malformed files
            raise DataError(f"not a readable Parquet file ({e})", path=path) from e
        if "item_id" not in table.column_names:
            raise DataError(f"missing column(s) ['item_id']; the columns are {table.column_names}", path=path)
        return ((n + 1, row) for n, row in enumerate(table.to_pylist())), sha
    file = _read_text(path)
    return _rows(file, ("item_id",)), file.sha256


def _collect_items(
    rows: Iterator[tuple[int, dict[str, Any]]],
    path: Path,
    items: list[Item],
    seen: dict[str, tuple[Path, int]],
) -> None:
    first = True
    for line, row in rows:
        if first and "text" not in row and not any(f in row for f in TEXT_FIELDS):
            # A CSV/TSV row has the header's columns, so this is the header's problem (line 1).
            raise DataError(
                f"no text column: give 'text' or any of {list(TEXT_FIELDS)}; found {sorted(row)}",
                path=path,
                line=line if path.suffix in (".jsonl", ".parquet") else 1,
            )
        first = False
        item_id = str(row["item_id"]).strip() if row.get("item_id") is not None else ""
        if not item_id:
            raise DataError("empty item_id", path=path, line=line)
        if item_id in seen:
            where = seen[item_id]
            before = f"line {where[1]}" if where[0] == path else f"{where[0].name}, row {where[1]}"
            raise DataError(f"item_id {item_id!r} appears again (first on {before})", path=path, line=line)
        seen[item_id] = (path, line)
        text = str(row.get("text") or "").strip() or compose_text(row)
        if not text:
            raise DataError(
                f"item {item_id!r} has no text: 'text' and {list(TEXT_FIELDS)} are all empty",
                path=path,
                line=line,
            )
        attributes = {
            k: v for k, v in row.items() if k not in ("item_id", "text") and v not in ("", None, [])
        }
        items.append(Item(item_id, text, attributes))


def _read_generic(folder: Path) -> Dataset:
    items_path = _find_table(folder, "items")
    inter_path = _find_table(folder, "interactions")
    if items_path is None or inter_path is None:
        raise DataError(_unrecognised(folder), path=folder)
    catalog, items_sha = read_items(items_path)
    seen = set(catalog.ids)

    inter_file = _read_text(inter_path)
    events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    order_column: str | None = None
    for line, row in _rows(inter_file, ("user_id", "item_id")):
        if order_column is None:
            order_column = next((c for c in ("timestamp", "position") if c in row), "")
            if not order_column:
                logger.info("%s has no timestamp or position column: using file order", inter_path)
        item_id = str(row["item_id"]).strip()
        if item_id not in seen:
            raise DataError(f"item_id {item_id!r} is not in {items_path.name}", path=inter_path, line=line)
        user_id = str(row["user_id"]).strip()
        if not user_id:
            raise DataError("empty user_id", path=inter_path, line=line)
        if order_column:
            if order_column not in row:
                raise DataError(f"missing {order_column!r}", path=inter_path, line=line)
            key = _order_key(row[order_column], path=inter_path, line=line, column=order_column)
        else:
            key = float(line)
        events[user_id].append((key, item_id))
    return Dataset(
        name=folder.name or "generic",
        source=str(folder),
        catalog=catalog,
        sequences=_sequences(events),
        files={items_path.name: items_sha, inter_path.name: inter_file.sha256},
    )


# -- MovieLens -----------------------------------------------------------------------------------


def _movie(item_id: str, raw_title: str, genres: list[str], tags: list[str]) -> Item:
    title = raw_title.strip()
    match = _YEAR.search(title)
    attributes: dict[str, Any] = {"title": _YEAR.sub("", title) if match else title}
    if match:
        attributes["year"] = int(match.group(1))
    genres = [g for g in genres if g and g not in ("(no genres listed)", "unknown")]
    if genres:
        attributes["genres"] = genres
    if tags:
        attributes["tags"] = tags
    return Item(item_id, compose_text({"title": title, "genres": genres, "tags": tags}), attributes)


def _top_tags(tag_rows: list[str]) -> list[str]:
    counts = Counter(t.strip().lower() for t in tag_rows if t.strip())
    return [t for t, _ in counts.most_common(_MAX_TAGS)]


def _read_ml_latest(folder: Path) -> Dataset:
    movies = _read_text(folder / "movies.csv")
    ratings = _read_text(folder / "ratings.csv")
    files = {"movies.csv": movies.sha256, "ratings.csv": ratings.sha256}
    tags: dict[str, list[str]] = defaultdict(list)
    if (folder / "tags.csv").is_file():
        tag_file = _read_text(folder / "tags.csv")
        files["tags.csv"] = tag_file.sha256
        for _, row in _rows(tag_file, ("movieId", "tag")):
            tags[row["movieId"]].append(row["tag"])
    items = [
        _movie(row["movieId"], row["title"], row["genres"].split("|"), _top_tags(tags[row["movieId"]]))
        for _, row in _rows(movies, ("movieId", "title", "genres"))
    ]
    known = {i.item_id for i in items}
    events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line, row in _rows(ratings, ("userId", "movieId", "timestamp")):
        if row["movieId"] not in known:
            raise DataError(f"movieId {row['movieId']!r} is not in movies.csv", path=ratings.path, line=line)
        ts = _order_key(row["timestamp"], path=ratings.path, line=line, column="timestamp")
        events[row["userId"]].append((ts, row["movieId"]))
    return Dataset(folder.name, str(folder), Catalog(items), _sequences(events), files)


def _split_lines(file: _File, sep: str, fields: int) -> Iterator[tuple[int, list[str]]]:
    for line_no, line in enumerate(file.text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < fields:
            raise DataError(
                f"expected {fields} {sep!r}-separated fields, found {len(parts)}",
                path=file.path,
                line=line_no,
            )
        yield line_no, parts


def _events(
    file: _File,
    sep: str,
    known: set[str],
    items_name: str,
    parse: Callable[[list[str]], tuple[str, str, str]],
) -> dict[str, list[tuple[float, str]]]:
    events: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line, parts in _split_lines(file, sep, 4):
        user, item, ts = parse(parts)
        if item not in known:
            raise DataError(f"item id {item!r} is not in {items_name}", path=file.path, line=line)
        events[user].append((_order_key(ts, path=file.path, line=line, column="timestamp"), item))
    return events


def _read_ml_100k(folder: Path) -> Dataset:
    item_file = _read_text(folder / "u.item", encoding="latin-1")
    data_file = _read_text(folder / "u.data")
    genres: tuple[str, ...] = _ML100K_GENRES
    if (folder / "u.genre").is_file():
        names = [
            ln.split("|")[0] for ln in (folder / "u.genre").read_text("latin-1").splitlines() if ln.strip()
        ]
        genres = tuple(names) if len(names) == len(_ML100K_GENRES) else genres
    items = []
    for _, parts in _split_lines(item_file, "|", 5 + len(genres)):
        flags = parts[5 : 5 + len(genres)]
        items.append(
            _movie(parts[0], parts[1], [g for g, f in zip(genres, flags, strict=True) if f == "1"], [])
        )
    known = {i.item_id for i in items}
    events = _events(data_file, "\t", known, "u.item", lambda p: (p[0], p[1], p[3]))
    files = {"u.item": item_file.sha256, "u.data": data_file.sha256}
    return Dataset(folder.name, str(folder), Catalog(items), _sequences(events), files)


def _read_ml_1m(folder: Path) -> Dataset:
    movie_file = _read_text(folder / "movies.dat", encoding="latin-1")
    rating_file = _read_text(folder / "ratings.dat")
    items = [_movie(p[0], p[1], p[2].split("|"), []) for _, p in _split_lines(movie_file, "::", 3)]
    known = {i.item_id for i in items}
    events = _events(rating_file, "::", known, "movies.dat", lambda p: (p[0], p[1], p[3]))
    files = {"movies.dat": movie_file.sha256, "ratings.dat": rating_file.sha256}
    return Dataset(folder.name, str(folder), Catalog(items), _sequences(events), files)


# -- entry point -------------------------------------------------------------------------------


def _unrecognised(folder: Path) -> str:
    present = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
    return (
        "not a recognised data folder. Expected one of: MovieLens latest-small (movies.csv, "
        "ratings.csv), MovieLens 100k (u.item, u.data), MovieLens 1m (movies.dat, ratings.dat), or "
        "a generic folder with items.{csv,tsv,jsonl} and interactions.{csv,tsv,jsonl}. "
        f"Found: {present}"
    )


def _sample_size(spec: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for part in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = part.partition("=")
        if (
            key not in ("items", "users", "seed")
            or not value.isdigit()
            or (key != "seed" and int(value) < 30)
        ):
            raise DataError(
                f"bad sample size {part!r}: write sample:items=N,users=M (each at least 30; seed=S optional)",
                path=spec,
            )
        sizes[key] = int(value)
    return {{"items": "num_items", "users": "num_users"}.get(k, k): v for k, v in sizes.items()}


def data_spec(source: str) -> str:
    """What to pass to :func:`load_dataset` for a data set's recorded ``source`` (a bundle's
    ``provenance.data.source``): the folder, or ``sample:...`` for the built-in generator."""
    if source.startswith("builtin:sample"):
        query = dict(part.partition("=")[::2] for part in source.partition("?")[2].split("&") if part)
        sizes = [f"{k}={query[k]}" for k in ("items", "users", "seed") if k in query]
        return "sample:" + ",".join(sizes) if sizes else "sample"
    return source


def load_dataset(path: str | Path) -> Dataset:
    """Load a data folder, detected by its files, or the built-in sample: ``"sample"``, or
    ``"sample:items=50000,users=20000"`` for the same generator at another size."""
    if str(path) == "sample" or str(path).startswith("sample:"):
        from .sample import sample_dataset

        return sample_dataset(**_sample_size(str(path)))
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(
            "no such folder; pass a data folder, or 'sample' for the built-in catalogue", path=folder
        )

    def has(*names: str) -> bool:
        return all((folder / n).is_file() for n in names)

    if has("movies.csv", "ratings.csv"):
        dataset = _read_ml_latest(folder)
    elif has("u.item", "u.data"):
        dataset = _read_ml_100k(folder)
    elif has("movies.dat", "ratings.dat"):
        dataset = _read_ml_1m(folder)
    else:
        dataset = _read_generic(folder)
    logger.info("loaded %s", dataset.describe())
    return dataset


def write_generic(dataset: Dataset, folder: Path) -> None:
    """Write ``dataset`` into ``folder`` as ``items.jsonl`` and ``interactions.csv`` (the generic
    format; the order of each user's interactions goes into a ``position`` column)."""
    with (folder / "items.jsonl").open("w", encoding="utf-8") as f:
        for item in dataset.catalog:
            f.write(json.dumps({"item_id": item.item_id, "text": item.text, **item.attributes}) + "\n")
    with (folder / "interactions.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "position"])
        for user, seq in dataset.sequences.items():
            writer.writerows((user, item, position) for position, item in enumerate(seq))
