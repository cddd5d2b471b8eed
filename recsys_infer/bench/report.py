"""The bench report as a Markdown page a person reads in ten seconds, and as a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _p50(row: dict[str, Any], key: str) -> str:
    v = row["latency_ms"].get(key)
    return _f(v["p50"]) if v else "–"


def _speedup(row: dict[str, Any], key: str) -> str:
    v = row["vs_reference"].get(f"speedup_{key}")
    return f"{v:.2f}×" if v else "–"


def _quality(row: dict[str, Any], key: str) -> str:
    v = row["quality"].get(key)
    if isinstance(v, dict):
        return _f(v.get("mean"), 4)
    return _f(v, 4)


def _paired(row: dict[str, Any], metric: str) -> str:
    p = (row["quality"].get("paired_vs_reference") or {}).get(metric)
    if not p:
        return ""
    mark = " *" if p.get("significant") else ""
    return f" ({p['mean_difference']:+.4f}{mark})"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the subjects' table, where their time goes, and the HNSW sweeps."""
    env = report["environment"]
    s = report["settings"]
    ref = report["reference"]["name"]
    lines = [
        f"# recsys-infer bench ({report['created']})",
        "",
        f"{env['cpu']}, {env['cores']} cores, {s['threads']} threads; onnxruntime "
        f"{env['versions']['onnxruntime']}, torch {env['versions'].get('torch') or '–'}. "
        f"{report['data']['test_users']} test users of `{report['data']['path']}`. {s['rounds']} interleaved "
        f"rounds. Ratios are against `{ref}`, measured in the same run.",
        "",
        "| subject | what | size MB | RSS MB | text graph p50 ms, 32 / 64 / 128 tok | real requests p50 ms "
        "| speed-up, 64 tok / real | texts/s, batch 32 | recommend p50 / p99 ms, history · request "
        "| overlap@10 user / request | Recall@10 | NDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_subject_row(row) for row in report["subjects"]]
    lengths = report["inputs"]
    lines += [
        "",
        "RSS is the peak resident memory of a fresh process that loaded the bundle and served 40 "
        "requests. Overlap@10 is against the reference's recommendations (exact search); "
        "† a peer's overlap is against its own encoder in PyTorch fp32 (the peers run the encoder "
        "alone, without the trained head). Recall@10/NDCG@10: test split, history masked; in "
        "brackets the paired difference to the reference, * where its 95% interval excludes zero.",
        f"Real inputs: histories of {lengths['history_items']['median']:g} items (median; "
        f"{lengths['history_items']['min']}–{lengths['history_items']['max']}), requests of "
        f"{lengths['request_tokens']['median']:g} tokens (median; {lengths['request_tokens']['min']}–"
        f"{lengths['request_tokens']['max']}).",
        "",
        "| subject | recommend@history: tokenize / graph / search / other | recommend@request | "
        "catalogue items/s | load s |",
        "|---|---|---|---|---|",
    ]
    lines += [_breakdown_row(row) for row in report["subjects"]]
    for name, h in report["hnsw"].items():
        lines += _hnsw_lines(name, h)
    return "\n".join(lines) + "\n"


def _subject_row(row: dict[str, Any]) -> str:
    mem = row.get("memory_mb") or {}
    fixed = " / ".join(_p50(row, f"text@{n}") for n in (32, 64, 128))
    tput = next(iter(row["throughput"].values()))
    rec = "–"
    if "recommend@history" in row["latency_ms"]:
        h, r = row["latency_ms"]["recommend@history"], row["latency_ms"]["recommend@request"]
        rec = f"{_f(h['p50'])} / {_f(h['p99'])} · {_f(r['p50'])} / {_f(r['p99'])}"
    q = row["quality"]
    if "user_overlap@10" in q:
        overlap = f"{_f(q['user_overlap@10'], 3)} / {_f(q['request_overlap@10'], 3)}"
    elif "request_overlap@10_vs_own_fp32" in q:
        overlap = f"– / {_f(q['request_overlap@10_vs_own_fp32'], 3)}†"
    else:
        overlap = "–"
    return (
        f"| {row['name']} | {row['description']} | {_f(row['size_mb'], 1)} | "
        f"{_f(mem.get('peak_mb'), 0) if mem else '–'} | {fixed} | {_p50(row, 'text@real')} | "
        f"{_speedup(row, 'text@64')} / {_speedup(row, 'text@real')} | {_f(tput, 0)} | {rec} | "
        f"{overlap} | "
        f"{_quality(row, 'recall@10')}{_paired(row, 'recall@10')} | "
        f"{_quality(row, 'ndcg@10')}{_paired(row, 'ndcg@10')} |"
    )


def _breakdown_row(row: dict[str, Any]) -> str:
    b = row.get("breakdown") or {}

    def shares(key: str) -> str:
        v = b.get(key)
        return (
            " / ".join(f"{v[p] * 100:.0f}%" for p in ("tokenize", "graph", "search", "other")) if v else "–"
        )

    return (
        f"| {row['name']} | {shares('recommend@history')} | {shares('recommend@request')} | "
        f"{_f(row['throughput']['catalogue_items_per_s'], 0)} | {_f(row['load_s'])} |"
    )


def _hnsw_lines(name: str, h: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"HNSW of `{name}`: {h['items']} items × {h['dim']}, M={h['M']}, ef_construction="
        f"{h['ef_construction']}, built in {h['build_s']:.2f} s on {h['build_threads']} threads; "
        f"recall@10 against exact search over {h['queries']} user vectors, one query at a time.",
        "",
        "| ef | recall@10 | queries/s |",
        "|---|---|---|",
    ]
    return lines + [f"| {p['ef']} | {p['recall@10']:.4f} | {p['qps']:.0f} |" for p in h["sweep"]]


def plot(report: dict[str, Any], path: Path) -> None:
    """Two panels: text-graph latency against request overlap@10 (the Pareto front of our
    variants), and HNSW recall against queries/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    ours = []
    markers = {"pytorch": "s", "bundle": "o", "peer": "^"}
    for row in report["subjects"]:
        q = row["quality"]
        y = q.get("request_overlap@10", q.get("request_overlap@10_vs_own_fp32"))
        x = (row["latency_ms"].get("text@real") or {}).get("p50")
        if x is None or y is None:
            continue
        label = row["name"] + (" (vs own fp32)" if row["kind"] == "peer" else "")
        left.scatter([x], [y], marker=markers.get(row["kind"], "o"), s=60, label=label)
        left.annotate(row["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if row["kind"] != "peer":
            ours.append((x, y))
    front, best = [], -1.0
    for x, y in sorted(ours):
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        left.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=1, label="Pareto front")
    left.set_xlabel("text graph latency, p50 ms (real requests, batch 1)")
    left.set_ylabel("request overlap@10 with the reference")
    left.set_title("speed against fidelity")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    for name, h in report["hnsw"].items():
        right.plot([p["qps"] for p in h["sweep"]], [p["recall@10"] for p in h["sweep"]], "o-", label=name)
        for p in h["sweep"]:
            right.annotate(f"ef {p['ef']}", (p["qps"], p["recall@10"]), fontsize=7, xytext=(3, -9),
                           textcoords="offset points")  # fmt: skip
    right.set_xlabel("queries/s (one query at a time)")
    right.set_ylabel("recall@10 against exact search")
    right.set_title("HNSW")
    right.grid(alpha=0.3)
    if report["hnsw"]:
        right.legend(fontsize=7)
    fig.suptitle(
        f"recsys-infer bench, {report['settings']['threads']} threads, {report['created']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
