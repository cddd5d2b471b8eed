"""Documents that state the same result must agree: QUALITY.md's table at a glance is copied
from its paired tables, and README.md's one-line summary follows from that table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _glance(quality: str) -> list[tuple[str, str, str, str]]:
    section = quality.split("## Paired differences at a glance", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (ml-[\w-]+) \| ([\w-]+) \| (.+?) \| (.+?) \|$", section, re.M)
    assert rows, "the table at a glance has no rows"
    return rows


BASELINES = {"zero-shot-bundle", "popularity", "als"}


def _paired(quality: str, data: str) -> dict[tuple[str, str], str]:
    """The default model's paired differences in the latest section's tables for ``data``."""
    section = quality.split("## The default model", 1)[1].split("\n## ", 1)[0]
    pairs: dict[tuple[str, str], str] = {}
    for table in section.split(f"#### {data}: ")[1:]:
        table = table.split("####", 1)[0]
        if "HNSW." not in table.split("\n\n", 2)[1]:  # the glance is of HNSW results only
            continue
        rows = re.findall(r"^\| default-bundle \| ([\w-]+) \| (\w+@10) \| (\S+ \[\S+, \S+\]) \|", table, re.M)
        pairs.update({(o, m): d for o, m, d in rows})
    return pairs


def test_quality_glance_matches_the_paired_tables_and_readme() -> None:
    quality = (ROOT / "benchmarks" / "QUALITY.md").read_text(encoding="utf-8")
    beats_all: dict[str, bool] = {}
    for data, other, recall, ndcg in _glance(quality):
        paired = _paired(quality, data)
        for metric, cell in (("recall@10", recall), ("ndcg@10", ndcg)):
            value = cell.strip("*")
            assert paired[(other, metric)] == value, (data, other, metric)
            low = float(value.split("[")[1].split(",")[0])
            assert cell.startswith("**") == (low > 0), (data, other, metric, "bold iff excludes zero")
            if other in BASELINES:
                beats_all[data] = beats_all.get(data, True) and low > 0
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert set(beats_all) == {"ml-100k", "ml-latest-small"}
    claim = "beats every baseline on both ml-100k and ml-latest-small" in readme
    assert claim == all(beats_all.values()), (beats_all, "README.md's summary disagrees with QUALITY.md")


def _model_rows(quality: str, data: str, table: str) -> dict[str, tuple[str, str]]:
    """Recall@10 and NDCG@10 of each model in the evaluate table ``table`` for ``data``."""
    section = quality.split(f"#### {data}: {table}\n", 1)[1].split("\n####", 1)[0]
    pattern = r"^\| ([^|]+?) \| \d+ \| (\S+ \[\S+, \S+\]) \| (\S+ \[\S+, \S+\]) \|"
    return {m[0]: (m[1], m[2]) for m in re.findall(pattern, section, re.M)}


def test_quality_absolute_glance_matches_the_evaluate_tables() -> None:
    quality = (ROOT / "benchmarks" / "QUALITY.md").read_text(encoding="utf-8")
    section = quality.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (ml-[\w-]+) \| ([^|]+?) \| [^|]+ \| (.+?) \| (.+?) \|$", section, re.M)
    assert len(rows) >= 10, "the absolute glance lost its rows"
    for data, model, recall, ndcg in rows:
        table = "evaluate-default-als" if model == "als" else "evaluate-default"
        assert _model_rows(quality, data, table)[model] == (recall, ndcg), (data, model)


def test_readme_results_are_the_result_pages_numbers() -> None:
    """The README's headline tables restate numbers from the result pages, never their own."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    sources = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8") + (
        ROOT / "benchmarks" / "QUALITY.md"
    ).read_text(encoding="utf-8")
    numbers = set(re.findall(r"\d+\.\d+", results))
    assert len(numbers) >= 20, "the README's results lost their tables"
    assert sorted(n for n in numbers if n not in sources) == []


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    assert any("from recsys_infer import Engine" in line for line in lines[:150])
    assert len((ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").splitlines()) <= 400


def test_every_benchmark_script_is_on_a_result_page() -> None:
    """A script nobody can find from the result pages is a study nobody reruns."""
    bench = ROOT / "benchmarks"
    pages = (bench / "README.md").read_text(encoding="utf-8")
    studies = (bench / "studies" / "README.md").read_text(encoding="utf-8")
    scripts = [p for p in bench.iterdir() if p.suffix in (".py", ".sh")]
    assert len(scripts) >= 5
    assert [p.name for p in scripts if f"`{p.name}`" not in pages] == []
    study_scripts = list((bench / "studies").glob("*.py"))
    assert [p.name for p in study_scripts if f"`{p.name}`" not in studies] == []


def test_security_lists_every_limit_with_the_default_in_force() -> None:
    """SECURITY.md's table of limits holds every ServeSettings limit, with the default the code
    applies (a changed default fails here until the table says so)."""
    from dataclasses import fields

    from recsys_infer.serve import ServeSettings

    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `--[\w-]+` \| `RECSYS_INFER_(\w+)` \| ([^|]+) \|", text, re.M)
    shown = {name.lower(): cell.split()[0] for name, cell in rows}
    defaults = ServeSettings()
    runtime = {"device", "provider_options", "spin", "request_cache", "retry_after_s", "backend",
               "openvino_precision"}  # fmt: skip
    limits = {f.name for f in fields(ServeSettings)} - runtime
    assert set(shown) == limits, set(shown) ^ limits
    for name in limits:
        value = getattr(defaults, name)
        expected = ("on" if value else "off") if isinstance(value, bool) else f"{value:,}"
        assert shown[name] == expected, (name, shown[name], expected)
