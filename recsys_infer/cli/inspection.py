"""Commands that read bundles: describe, recommend, evaluate and benchmark."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys_infer.enums import Backend, Spin

from .app import app
from .common import (
    BACKEND_HELP,
    DEFAULT_DEVICE,
    DEVICE_HELP,
    BundleSource,
    Command,
    DeviceOption,
    ExcludeSeen,
    HubRevision,
    JsonOut,
    OutputFormat,
    friendly_errors,
    make_console,
    parity_line,
    recs_table,
    scoring_lines,
    write_json,
)


@app.command(rich_help_panel="Inspect, evaluate and benchmark", cls=Command)
@friendly_errors
def info(
    source: BundleSource,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file's sha256.")] = True,
    device: Annotated[
        str | None,
        typer.Option(
            help="Also load the engine on this device (auto, cpu, cuda, cuda:N, tensorrt) and report where "
            "its graphs really run.",
            show_default="not loaded",
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help=BACKEND_HELP + " Loads the engine (on the CPU unless --device says) and reports "
            "which runtime runs each tower, and why.",
            show_default="not loaded",
        ),
    ] = None,
    revision: HubRevision = None,
    json_out: JsonOut = None,
) -> None:
    """Describe a bundle: towers, index, catalogue, fidelity and provenance."""
    from recsys_infer.runtime.bundle import read_manifest, verify_files
    from recsys_infer.runtime.hub import local_bundle
    from recsys_infer.runtime.schema import encode

    bundle = local_bundle(source, revision)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest, checksums=verify)
    console = make_console()
    where = f"{source} ({bundle})" if str(bundle) != source else source
    console.print(f"[bold]{where}[/bold]  schema v{manifest.schema_version}, created {manifest.created_at}")
    for line in _manifest_lines(manifest):
        console.print("  " + line, highlight=False, markup=False)
    total = sum(f.bytes for f in manifest.files.values())
    console.print(
        f"  files: {len(manifest.files)}, {total / 1e6:.1f} MB, "
        f"checksums {'verified' if verify else 'not checked'}"
    )
    report = encode(manifest)
    if device is not None or backend is not None:
        report["device"] = running = _device_report(bundle, device or "cpu", backend or "onnxruntime")
        console.print(
            f"  device: {device or 'cpu'} requested, the graphs run on {running['running']} "
            f"(providers: {', '.join(running['providers'])})"
            + (f"; fell back: {running['fallback']}" if running["fallback"] else ""),
            highlight=False,
            markup=False,
        )
        for tower, chosen in running["backends"].items():
            line = f"  {tower} tower runs on {chosen['backend']} ({chosen['precision']}): {chosen['why']}"
            console.print(line, highlight=False, markup=False)
    write_json(json_out, report)


def _manifest_lines(manifest: Any) -> list[str]:
    """What ``info`` says of a manifest, a line each: towers, index, inputs and probe, then the
    description the model card renders (model, data, measured fidelity)."""
    from recsys_infer.runtime.describe import data_lines, fidelity_lines, model_lines, tower_line

    files = manifest.files
    lines = [tower_line(name, spec, files[spec.file].bytes) for name, spec in manifest.towers.items()]
    idx = manifest.index
    where = f"capacity {idx.capacity or '?'}"
    if idx.kind == "milvus":
        where = (
            f"collection {idx.collection!r} at {idx.uri} (built with {idx.count} items; it may have changed)"
        )
    lines.append(
        f"index: {idx.kind} {idx.space}, {idx.count} items, M={idx.M}, ef_construction="
        f"{idx.ef_construction}, ef_search={idx.ef_search}, {where}"
    )
    if manifest.user.kind == "text":
        ui = manifest.user_input
        lines.append(
            f"user input: up to {ui.max_history} history items as text, newest first, "
            f"separated by {ui.item_separator!r}"
        )
    lines += scoring_lines(manifest)
    if manifest.probe is not None:
        p = manifest.probe
        lines.append(f"probe: {p.histories} {p.split} histories, {p.requests} requests")
    if manifest.parity:
        recall = manifest.fidelity.get("index_recall_at_10_vs_exact", float("nan"))
        lines.append(parity_line(dict(manifest.parity), recall))
    return lines + model_lines(manifest) + data_lines(manifest) + fidelity_lines(manifest)


def _device_report(bundle: Path, device: str, backend: str) -> dict[str, Any]:
    """Where a bundle's graphs really run when loaded on ``device`` with ``backend``."""
    from recsys_infer.runtime.engine import Engine

    with Engine.load(bundle, device=device, verify=False, backend=backend) as engine:
        return {
            "requested": str(device),
            "running": engine.device_name,
            "providers": list(getattr(engine.item_encoder, "providers", [])),
            "fallback": engine.device_fallback,
            "backends": {n: t.to_json() for n, t in engine.backends.items()},
        }


@app.command(rich_help_panel="Inspect, evaluate and benchmark", cls=Command)
@friendly_errors
def recommend(
    bundle: BundleSource,
    history: Annotated[
        str | None, typer.Option(help="Comma-separated item ids, oldest first.", show_default="none")
    ] = None,
    text: Annotated[str | None, typer.Option(help="A free-text request.", show_default="none")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many items.")] = 10,
    output: Annotated[
        OutputFormat | None,
        typer.Option("--format", hidden=True, help="Deprecated: --json - prints the JSON report."),
    ] = None,
    exclude_seen: ExcludeSeen = True,
    device: DeviceOption = DEFAULT_DEVICE,
    exact: Annotated[bool, typer.Option(help="Exact search instead of the HNSW index.")] = False,
    revision: HubRevision = None,
    json_out: JsonOut = None,
) -> None:
    """Recommend items for a history and/or a text request."""
    from recsys_infer.runtime.engine import Engine

    ids = [h.strip() for h in history.split(",") if h.strip()] if history else []
    if not ids and not text:
        raise typer.BadParameter("give --history ID,ID,... or --text TEXT (or both)")
    engine = Engine.load(bundle, device=device, exact=exact, revision=revision)
    recs = engine.recommend(history=ids, text=text, k=k, exclude_seen=exclude_seen)
    payload = {
        "bundle": str(bundle),
        "device": engine.device_name,
        "query": {"history": ids, "text": text},
        "recommendations": [r.to_json() for r in recs],
    }
    if output is OutputFormat.JSON:
        typer.echo("--format json is deprecated: use --json - (the same report)", err=True)
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        make_console().print(recs_table(f"top {k} ({engine.device_name})", recs))
    write_json(json_out, payload)


class TargetSplit(StrEnum):
    TEST = "test"
    VALIDATION = "validation"


@app.command("evaluate", rich_help_panel="Inspect, evaluate and benchmark", cls=Command)
@friendly_errors
def evaluate_command(
    data: Annotated[str, typer.Option(help="The data folder the bundles were trained on, or 'sample'.")],
    bundles: Annotated[
        list[Path] | None, typer.Argument(help="Bundles to evaluate; the first is the reference.")
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="Also evaluate a baseline: popularity, als or zero-shot (repeatable).", show_default="none"
        ),
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Cut-offs (repeatable).", show_default="10 and 50")
    ] = None,
    split: Annotated[TargetSplit, typer.Option(help="Which held-out item is the target.")] = TargetSplit.TEST,
    users: Annotated[
        int | None,
        typer.Option(min=1, help="Evaluate a seeded sample of this many users.", show_default="every user"),
    ] = None,
    exclude_seen: ExcludeSeen = True,
    exact: Annotated[
        bool, typer.Option(help="Rank by exact search instead of the bundles' HNSW indexes.")
    ] = False,
    requests: Annotated[
        bool, typer.Option(help="Also score text requests built from each target's attributes.")
    ] = False,
    tune: Annotated[
        bool, typer.Option("--tune-als/--no-tune-als", help="Grid-search ALS on validation.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the user sample and the bootstrap.")] = 0,
    device: DeviceOption = DEFAULT_DEVICE,
    json_out: JsonOut = None,
) -> None:
    """Leave-one-out, full-ranking evaluation with 95% bootstrap intervals and paired comparisons."""
    from recsys_infer.evaluation.run import EvalConfig, run_evaluation

    config = EvalConfig(
        split=str(split),
        ks=tuple(k or (10, 50)),
        users=users,
        exclude_seen=exclude_seen,
        exact=exact,
        requests=requests,
        tune_als=tune,
        seed=seed,
        device=device,
    )
    report = run_evaluation(data, bundles or [], baseline or [], config)
    _print_evaluation(report.to_json())
    write_json(json_out, report.to_json())


def _fmt(metric: dict[str, Any]) -> str:
    lo, hi = metric["ci95"]
    return f"{metric['mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def _print_evaluation(report: dict[str, Any]) -> None:
    from rich.table import Table

    console = make_console()
    protocol = report["protocol"]
    console.print(
        f"{report['data']['name']}: {protocol['users']} {protocol['split']} users, history ≤ 50, "
        f"full ranking, {'history masked' if protocol['exclude_seen'] else 'history not masked'}, "
        f"{'exact search' if protocol['exact'] else 'HNSW'}; mean [95% CI]"
    )

    def table(title: str, key: str | None) -> None:
        rows = [(m["name"], m if key is None else m.get(key)) for m in report["models"]]
        rows = [(name, m) for name, m in rows if m]
        if not rows:
            return
        metrics = list(rows[0][1]["metrics"])
        t = Table(title=title, title_justify="left")
        t.add_column("model")
        t.add_column("users", justify="right")
        for metric in metrics:
            t.add_column(metric, justify="right")
        for name, m in rows:
            t.add_row(name, str(m["users"]), *(_fmt(m["metrics"][metric]) for metric in metrics))
        console.print(t)

    table("all users", None)
    table("users whose target was held out of training (cold-start items)", "cold_start_items")
    table("text requests built from the target's attributes (no history)", "text_requests")
    table("the same text requests sent with the user's history", "history_and_requests")
    if report["paired"]:
        t = Table(title="paired differences on the same users", title_justify="left")
        for col in ("model", "minus", "metric", "mean difference [95% CI]", "significant"):
            t.add_column(col)
        for p in report["paired"]:
            lo, hi = p["ci95"]
            t.add_row(
                p["a"],
                p["b"],
                p["metric"],
                f"{p['mean_difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
                "yes" if p["significant"] else "no",
            )
        console.print(t)


BundlesOpt = Annotated[list[Path], typer.Argument(help="Bundles to measure, side by side.", exists=True)]
JsonOutOpt = Annotated[Path, typer.Option("--json", help="Write the report (JSON) here.", dir_okay=False)]
DataOpt = Annotated[
    str | None,
    typer.Option(help="The data the bundles were built from.", show_default="what the first bundle records"),
]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP + " Every subject runs there, the peers too.")]
MdOpt = Annotated[
    Path | None,
    typer.Option(help="Also write the Markdown table here.", dir_okay=False, show_default="none"),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        help="Also draw latency vs overlap and HNSW recall vs QPS (PNG).",
        dir_okay=False,
        show_default="none",
    ),
]
ReferenceOpt = Annotated[
    Path | None,
    typer.Option(
        help="The uncompressed checkpoint.", show_default="the one the first bundle was exported from"
    ),
]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="Threads for every subject (ONNX Runtime, PyTorch).")]
RoundsOpt = Annotated[
    int | None, typer.Option(min=1, help="Interleaved timing rounds.", show_default="5; 2 with --quick")
]
PeersOpt = Annotated[
    bool, typer.Option("--peers/--no-peers", help="Include the sentence-transformers peers.")
]
SpinOpt = Annotated[
    Spin,
    typer.Option(
        help="When ONNX Runtime's threads busy-wait: always (between runs too), run (only while a "
        "run lasts) or never. run here: the subjects share the cores, and one's idle spinning "
        "threads would slow the next.",
    ),
]
BackendsOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated runtimes each bundle runs under: onnxruntime, openvino, auto. A bundle whose "
        "item tower runs on OpenVINO re-encodes its catalogue there first.",
    ),
]
QuickOpt = Annotated[bool, typer.Option("--quick", help="A smoke test: few users, rounds and calls.")]


@app.command(rich_help_panel="Inspect, evaluate and benchmark", cls=Command)
@friendly_errors
def bench(
    bundles: BundlesOpt,
    json_out: JsonOutOpt,
    data: DataOpt = None,
    device: DeviceOpt = DEFAULT_DEVICE,
    md: MdOpt = None,
    plot: PlotOpt = None,
    reference: ReferenceOpt = None,
    threads: ThreadsOpt = 2,
    rounds: RoundsOpt = None,
    peers: PeersOpt = True,
    spin: SpinOpt = Spin.RUN,
    backends: BackendsOpt = "onnxruntime",
    quick: QuickOpt = False,
) -> None:
    """Measure bundles against the PyTorch reference and sentence-transformers: speed, memory, quality."""
    from recsys_infer.bench import BenchConfig, markdown, run_bench
    from recsys_infer.bench import plot as draw

    overrides: dict[str, Any] = {"threads": threads, "peers": peers, "device": device, "spin": spin}
    overrides["backends"] = tuple(str(Backend.of(b)) for b in backends.split(",") if b.strip())
    if rounds is not None:
        overrides["rounds"] = rounds
    config = BenchConfig.quick_mode(**overrides) if quick else BenchConfig(**overrides)
    if data is None:
        from recsys_infer.data.readers import data_spec
        from recsys_infer.runtime.bundle import read_manifest

        source = read_manifest(bundles[0]).provenance.data.get("source")
        if not source:
            raise typer.BadParameter(f"{bundles[0]} does not record its data; pass --data")
        data = data_spec(str(source))
        typer.echo(f"data: {data} (recorded by {bundles[0]})", err=True)
    report = run_bench(
        bundles, data, reference=reference, config=config, progress=lambda msg: typer.echo(msg, err=True)
    )
    table = markdown(report)
    from rich.markdown import Markdown

    make_console().print(Markdown(table))  # its tables drawn, as the other commands draw theirs
    write_json(json_out, report)
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(table, encoding="utf-8")
        typer.echo(f"table written to {md}")
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        draw(report, plot)
        typer.echo(f"plot written to {plot}")
