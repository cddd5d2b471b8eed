"""Render `recsys-infer evaluate --json` reports as the Markdown tables of QUALITY.md.

    python benchmarks/quality_table.py REPORT.json [REPORT.json ...]
    python benchmarks/quality_table.py --glance REPORT.json [REPORT.json ...]
    python benchmarks/quality_table.py --levers REPORT.json [REPORT.json ...]
    python benchmarks/quality_table.py --training TRAIN.json [TRAIN.json ...]

One table of metrics (mean [95% CI]) per report, then its paired differences against the
first model. Numbers are copied from the reports, never typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _cell(metric: dict[str, Any]) -> str:
    lo, hi = metric["ci95"]
    return f"{metric['mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def _difference(paired: dict[str, Any], *, turned: bool = False, bold: bool = False) -> str:
    """A paired difference and its interval, as evaluate reports it (*a minus b*) or turned round
    (*b minus a*); bold, if asked, where the interval excludes zero."""
    mean, (lo, hi) = paired["mean_difference"], paired["ci95"]
    if turned:  # 0.0 - x: turned round without printing a zero as -0.0000
        mean, lo, hi = 0.0 - mean, 0.0 - hi, 0.0 - lo
    text = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    return f"**{text}**" if bold and paired["significant"] else text


def render(report: dict[str, Any], title: str) -> str:
    protocol = report["protocol"]
    mask = "history masked" if protocol["exclude_seen"] else "history not masked"
    search = "exact search" if protocol["exact"] else "HNSW"
    lines = [
        f"### {title}",
        "",
        f"{report['data']['name']}, {protocol['users']} {protocol['split']} users, {mask}, {search}.",
        "",
    ]
    sections = [
        ("", None),
        (" (cold-start targets)", "cold_start_items"),
        (" (text requests)", "text_requests"),
        (" (history + text request)", "history_and_requests"),
    ]
    metrics = list(report["models"][0]["metrics"])
    lines.append("| model | users | " + " | ".join(metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for suffix, key in sections:
        for model in report["models"]:
            block = model if key is None else model.get(key)
            if block:
                cells = " | ".join(_cell(block["metrics"][m]) for m in metrics)
                lines.append(f"| {model['name']}{suffix} | {block['users']} | {cells} |")
    if report["paired"]:
        lines += ["", "Paired differences on the same users:", ""]
        lines.append("| model | minus | metric | difference [95% CI] | excludes 0 |")
        lines.append("|---|---|---|---|---|")
        for p in report["paired"]:
            if p["metric"] in ("recall@10", "ndcg@10"):
                significant = "yes" if p["significant"] else "no"
                lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | {_difference(p)} | {significant} |")
    if report.get("als_tuning"):
        best = max(report["als_tuning"], key=lambda t: t["ndcg@10"])
        lines += [
            "",
            f"ALS tuned on validation over {len(report['als_tuning'])} settings; best: "
            f"factors {best['factors']}, regularization {best['regularization']}, alpha {best['alpha']} "
            f"(validation NDCG@10 {best['ndcg@10']:.4f}).",
        ]
    return "\n".join(lines) + "\n"


def glance(reports: list[dict[str, Any]]) -> str:
    """One row per (data set, baseline): the paired Recall@10 and NDCG@10 differences."""
    lines = [
        "| data | trained model minus | Recall@10 | NDCG@10 |",
        "|---|---|---|---|",
    ]
    done = set()
    for report in reports:
        paired = {(p["b"], p["metric"]): p for p in report["paired"]}
        for other in [m["name"] for m in report["models"][1:]]:
            if (report["data"]["name"], other) in done:  # the same pair in another report
                continue
            done.add((report["data"]["name"], other))
            cells = [_difference(paired[(other, metric)], bold=True) for metric in ("recall@10", "ndcg@10")]
            lines.append(f"| {report['data']['name']} | {other} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


#: The query kinds of a report, as evaluate names their sections.
KINDS = (
    ("histories", ""),
    ("requests", " (text requests)"),
    ("history + request", " (history + text request)"),
)


def levers(reports: list[dict[str, Any]]) -> str:
    """One row per (data set, model, metric) of each report's later models against its first, on
    each query kind: the paired difference turned round, *model minus first*, bold where its
    interval excludes zero. A pair already shown from an earlier report is not repeated."""
    lines = [
        "| data | history items | model | minus | metric | " + " | ".join(kind for kind, _ in KINDS) + " |",
        "|---|---|---|---|---|" + "---|" * len(KINDS),
    ]
    done = set()
    for report in reports:
        paired = {(p["a"], p["b"], p["metric"]): p for p in report["paired"]}
        first = report["models"][0]["name"]
        shown = "left out" if report["protocol"]["exclude_seen"] else "left in"
        for other in [m["name"] for m in report["models"][1:]]:
            if (key := (report["data"]["name"], shown, other, first)) in done:  # in an earlier report
                continue
            done.add(key)
            for metric in ("recall@10", "ndcg@10"):
                kinds = [paired.get((first + suffix, other + suffix, metric)) for _, suffix in KINDS]
                # an empty cell where this report did not score that kind
                cells = ["" if p is None else _difference(p, turned=True, bold=True) for p in kinds]
                row = [report["data"]["name"], shown, other, first, metric, *cells]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def training(reports: list[dict[str, Any]], names: list[str]) -> str:
    """One row per `train --json` report: validation NDCG@10 at each check, the best, and the
    time the run took."""
    epochs = sorted({v["epoch"] for r in reports for v in r["extra"]["validation"]})
    lines = [
        "| model | " + " | ".join(map(str, epochs)) + " | best (epoch) | seconds | stopped by |",
        "|---|" + "---|" * len(epochs) + "---|---|---|",
    ]
    for name, report in zip(names, reports, strict=True):
        extra = report["extra"]
        scores = {v["epoch"]: v["ndcg@10"] for v in extra["validation"]}
        cells = [
            f"**{scores[e]:.4f}**" if e == extra["best_epoch"] else f"{scores[e]:.4f}" if e in scores else ""
            for e in epochs
        ]
        best = f"{extra['best_validation_ndcg@10']:.4f} ({extra['best_epoch']})"
        row = [name, *cells, best, f"{report['seconds']:,.0f}", report["stopped_by"]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = sys.argv[1:]
    modes = {"--glance": glance, "--levers": levers}
    if args and args[0] == "--training":
        paths = [Path(a) for a in args[1:]]
        names = [p.name.removesuffix(".train.json") for p in paths]
        print(training([json.loads(p.read_text()) for p in paths], names))
        return
    if args and args[0] in modes:
        print(modes[args[0]]([json.loads(Path(a).read_text()) for a in args[1:]]))
        return
    for path in map(Path, args):
        print(render(json.loads(path.read_text()), f"{path.parent.name}: {path.stem}"))


if __name__ == "__main__":
    main()
