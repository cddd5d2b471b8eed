"""Data loading, every bad-data error, splitting and the built-in sample."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from recsys_infer.data import compose_text, leave_one_out, load_dataset, sample_dataset
from recsys_infer.data.probe import build_probe, request_from_item
from recsys_infer.errors import DataError
from tests.conftest import SHARED_DATA


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


# -- formats ------------------------------------------------------------------------------------


def test_movielens_latest_small_layout(tmp_path: Path) -> None:
    write(
        tmp_path,
        "movies.csv",
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Comedy\n"
        '2,"Misérables, Les (1995)",Drama|War\n3,Heat (1995),(no genres listed)\n',
    )
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n7,2,4.0,200\n7,1,5.0,100\n7,3,3.0,300\n")
    write(tmp_path, "tags.csv", "userId,movieId,tag,timestamp\n7,1,Pixar,1\n8,1,pixar,2\n7,1,fun,3\n")
    ds = load_dataset(tmp_path)
    assert ds.sequences == {"7": ("1", "2", "3")}
    toy = ds.catalog.get("1")
    assert toy.text == "Toy Story (1995). Genres: Adventure, Comedy. Tags: pixar, fun."
    assert dict(toy.attributes) == {
        "title": "Toy Story",
        "year": 1995,
        "genres": ["Adventure", "Comedy"],
        "tags": ["pixar", "fun"],
    }
    assert ds.catalog.get("2").attributes["title"] == "Misérables, Les"
    assert "genres" not in ds.catalog.get("3").attributes
    assert set(ds.files) == {"movies.csv", "ratings.csv", "tags.csv"}


def test_movielens_100k_layout_reads_latin1(tmp_path: Path) -> None:
    flags = ["0"] * 19
    flags[5] = flags[8] = "1"  # Comedy, Drama
    write(
        tmp_path,
        "u.item",
        "1|Café Society (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
        "2|Heat (1995)|01-Jan-1995||http://y|" + "|".join(["0"] * 19) + "\n",
        encoding="latin-1",
    )
    write(tmp_path, "u.data", "5\t2\t3\t900\n5\t1\t4\t800\n6\t1\t2\t10\n")
    ds = load_dataset(tmp_path)
    assert ds.catalog.get("1").text == "Café Society (1995). Genres: Comedy, Drama."
    assert ds.sequences == {"5": ("1", "2"), "6": ("1",)}


def test_movielens_1m_layout(tmp_path: Path) -> None:
    write(
        tmp_path,
        "movies.dat",
        "1::Toy Story (1995)::Animation|Comedy\n2::Jumanji (1995)::Adventure\n",
        "latin-1",
    )
    write(tmp_path, "ratings.dat", "1::2::5::20\n1::1::3::10\n")
    ds = load_dataset(tmp_path)
    assert ds.sequences == {"1": ("1", "2")}
    assert ds.catalog.get("2").attributes["genres"] == ["Adventure"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_generic_folder_in_each_format(tmp_path: Path, suffix: str) -> None:
    rows = [
        {"item_id": "a", "title": "Red Tent", "category": "Camping", "brand": "Trailhead", "price": "10"},
        {"item_id": "b", "text": "A blue kettle", "category": "Kitchen"},
    ]
    events = [("u1", "b", "2024-01-02T00:00:00Z"), ("u1", "a", "2024-01-01T00:00:00Z"), ("u2", "a", "5")]
    if suffix == ".jsonl":
        write(tmp_path, "items.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
        write(
            tmp_path,
            "interactions.jsonl",
            "\n".join(
                json.dumps({"user_id": u, "item_id": i, "timestamp": t, "rating": 5}) for u, i, t in events
            ),
        )
    else:
        sep = "," if suffix == ".csv" else "\t"
        cols = ["item_id", "text", "title", "category", "brand", "price"]
        lines = [sep.join(cols)] + [sep.join(r.get(c, "") for c in cols) for r in rows]
        write(tmp_path, f"items{suffix}", "\n".join(lines) + "\n")
        write(
            tmp_path,
            f"interactions{suffix}",
            sep.join(["user_id", "item_id", "timestamp", "extra"])
            + "\n"
            + "\n".join(sep.join([u, i, t, "x"]) for u, i, t in events)
            + "\n",
        )
    ds = load_dataset(tmp_path)
    assert ds.catalog.get("a").text == "Red Tent. Category: Camping. Brand: Trailhead."
    assert ds.catalog.get("b").text == "A blue kettle"
    assert ds.catalog.get("a").attributes["brand"] == "Trailhead"
    assert ds.catalog.get("a").attributes["category"] == "Camping"
    assert ds.sequences["u1"] == ("a", "b")  # ordered by timestamp, not file order
    assert ds.sequences["u2"] == ("a",)


def test_generic_position_column_and_stable_ties(tmp_path: Path) -> None:
    write(tmp_path, "items.csv", "item_id,title\nx,X\ny,Y\nz,Z\n")
    write(tmp_path, "interactions.csv", "user_id,item_id,position\nu,z,1\nu,y,0\nu,x,1\n")
    assert load_dataset(tmp_path).sequences["u"] == ("y", "z", "x")  # z before x: file order on a tie


def test_compose_text_order_and_lists() -> None:
    text = compose_text({"description": "Soft.", "tags": ["a", "b"], "title": "Pillow", "genres": "x|y"})
    assert text == "Pillow. Genres: x, y. Tags: a, b. Soft."


# -- bad data ------------------------------------------------------------------------------------


def _generic(tmp_path: Path, items: str, interactions: str = "user_id,item_id,timestamp\nu,a,1\n") -> Path:
    write(tmp_path, "items.csv", items)
    write(tmp_path, "interactions.csv", interactions)
    return tmp_path


@pytest.mark.parametrize(
    ("items", "interactions", "file", "line", "fragment"),
    [
        ("id,title\na,A\n", None, "items.csv", 1, "missing column(s) ['item_id']"),
        ("item_id,price\na,3\n", None, "items.csv", 1, "no text column"),
        (
            "item_id,title\na,A\n",
            "user_id,item_id,timestamp\nu,a,1\nu,zzz,2\n",
            "interactions.csv",
            3,
            "item_id 'zzz' is not in items.csv",
        ),
        (
            "item_id,title\na,A\n",
            "user_id,timestamp\nu,1\n",
            "interactions.csv",
            1,
            "missing column(s) ['item_id']",
        ),
        ("item_id,title\na,A\na,B\n", None, "items.csv", 3, "appears again (first on line 2)"),
        ("item_id,title\na,A\nb,\n", None, "items.csv", 3, "item 'b' has no text"),
        ("item_id,title\na,A,extra\n", None, "items.csv", 2, "expected 2 fields"),
        (
            "item_id,title\na,A\n",
            "user_id,item_id,timestamp\nu,a,yesterday\n",
            "interactions.csv",
            2,
            "neither a number nor an ISO 8601 date",
        ),
        ("item_id,title\n", None, "items.csv", None, "a header but no rows"),
        ("", None, "items.csv", None, "the file is empty"),
    ],
)
def test_bad_data_errors_name_file_and_line(
    tmp_path: Path, items: str, interactions: str | None, file: str, line: int | None, fragment: str
) -> None:
    folder = _generic(tmp_path, items, interactions or "user_id,item_id,timestamp\nu,a,1\n")
    with pytest.raises(DataError) as info:
        load_dataset(folder)
    assert info.value.path is not None and info.value.path.name == file
    assert info.value.line == line
    assert fragment in str(info.value)


def test_bad_encoding_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "items.csv", "item_id,title\na,Fine\n")
    (tmp_path / "items.csv").write_bytes(b"item_id,title\na,Fine\nb,Caf\xe9\n")
    write(tmp_path, "interactions.csv", "user_id,item_id\nu,a\n")
    with pytest.raises(DataError, match=r"items.csv, line 3: not valid utf-8.*re-save the file as UTF-8"):
        load_dataset(tmp_path)


def test_bad_jsonl_line(tmp_path: Path) -> None:
    write(tmp_path, "items.jsonl", '{"item_id": "a", "text": "A"}\n{"item_id": "b", "text": \n')
    write(tmp_path, "interactions.csv", "user_id,item_id\nu,a\n")
    with pytest.raises(DataError, match=r"items.jsonl, line 2: not valid JSON"):
        load_dataset(tmp_path)


def test_unknown_movie_in_ratings(tmp_path: Path) -> None:
    write(tmp_path, "movies.csv", "movieId,title,genres\n1,A (2000),Drama\n")
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,1\n1,99,4,2\n")
    with pytest.raises(DataError, match=r"ratings.csv, line 3: movieId '99' is not in movies.csv"):
        load_dataset(tmp_path)


def test_unrecognised_and_missing_folders(tmp_path: Path) -> None:
    write(tmp_path, "notes.txt", "hello")
    with pytest.raises(DataError, match=r"not a recognised data folder.*notes.txt"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(tmp_path / "absent")


def test_two_item_files_is_ambiguous(tmp_path: Path) -> None:
    write(tmp_path, "items.csv", "item_id,title\na,A\n")
    write(tmp_path, "items.jsonl", '{"item_id": "a", "text": "A"}\n')
    write(tmp_path, "interactions.csv", "user_id,item_id\nu,a\n")
    with pytest.raises(DataError, match="keep exactly one items file"):
        load_dataset(tmp_path)


# -- split -------------------------------------------------------------------------------------------


def test_leave_one_out(tmp_path: Path) -> None:
    write(tmp_path, "items.csv", "item_id,title\n" + "".join(f"{c},{c.upper()}\n" for c in "abcdef"))
    write(
        tmp_path,
        "interactions.csv",
        "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu1,c,3\nu1,d,4\nu2,e,1\nu2,f,2\nu3,a,5\nu3,b,5\nu3,c,5\n",
    )
    split = leave_one_out(load_dataset(tmp_path))
    assert split.train == {"u1": ("a", "b"), "u2": ("e", "f"), "u3": ("a",)}
    assert [(e.user_id, e.history, e.target) for e in split.validation] == [
        ("u1", ("a", "b"), "c"),
        ("u3", ("a",), "b"),
    ]
    assert [(e.user_id, e.history, e.target) for e in split.test] == [
        ("u1", ("a", "b", "c"), "d"),
        ("u3", ("a", "b"), "c"),
    ]
    pairs = [(e.history, e.target) for e in split.train_examples()]
    assert pairs == [(("a",), "b"), (("e",), "f")]
    assert split.num_train_examples() == 2
    assert [e.history for e in split.train_examples(max_history=1)] == [("a",), ("e",)]


# -- the built-in sample -----------------------------------------------------------------------------


def test_sample_is_deterministic_and_has_signal() -> None:
    a, b = sample_dataset(), sample_dataset()
    assert a.fingerprint == b.fingerprint
    assert [i.text for i in a.catalog] == [i.text for i in b.catalog]
    assert a.sequences == b.sequences
    assert 2500 <= len(a.catalog) <= 5000 and len(a.sequences) == 1000
    assert len({i.attributes["category"] for i in a.catalog}) == 30
    # Shoppers mostly stay in one category: the most common one covers most of a history.
    shares = []
    for seq in a.sequences.values():
        cats = Counter(a.catalog.get(i).attributes["category"] for i in seq)
        shares.append(cats.most_common(1)[0][1] / len(seq))
    assert sum(shares) / len(shares) > 0.5
    assert all(len(set(s)) == len(s) for s in a.sequences.values())


def test_sample_at_another_size_keeps_titles_distinct() -> None:
    """`sample:items=N,users=M` runs the same generator; a category larger than its plain title
    space (500 book titles) gets series numbers instead of looping or repeating."""
    big = load_dataset("sample:items=16500,users=40")
    assert len(big.catalog) == 16500 and len(big.sequences) == 40
    assert len(set(big.catalog.texts)) == len(big.catalog)
    books = [i for i in big.catalog if i.attributes["category"] == "Books > Mystery"]
    assert len(books) == 550 and len({i.attributes["title"] for i in books}) == 550
    assert big.fingerprint != sample_dataset().fingerprint
    assert load_dataset("sample").fingerprint == sample_dataset().fingerprint
    for bad in ("sample:items=ten", "sample:colour=3", "sample:items=5"):
        with pytest.raises(DataError, match="sample:items=N,users=M"):
            load_dataset(bad)


def test_probe_comes_from_validation() -> None:
    ds = sample_dataset()
    split = leave_one_out(ds)
    probe = build_probe(split, ds.catalog, max_history=5, size=50)
    validation = {(e.user_id, e.target) for e in split.validation}
    assert len(probe["histories"]) == 50 and probe["split"] == "validation"
    assert all((u, t) in validation for u, t in zip(probe["user_ids"], probe["targets"], strict=True))
    assert all(len(h) <= 5 for h in probe["histories"])
    assert (
        request_from_item(ds.catalog[0])
        == f"{ds.catalog[0].attributes['category']}, {ds.catalog[0].attributes['brand']}"
    )


# -- real data (skipped when ../shared/data is absent) ------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "ml-latest-small").is_dir(), reason="../shared/data is absent")
def test_real_movielens_counts() -> None:
    small = load_dataset(SHARED_DATA / "ml-latest-small")
    assert (len(small.catalog), len(small.sequences), small.num_interactions) == (9742, 610, 100836)
    k100 = load_dataset(SHARED_DATA / "ml-100k")
    assert (len(k100.catalog), len(k100.sequences), k100.num_interactions) == (1682, 943, 100000)
    assert len(leave_one_out(k100).test) == 943
