"""The ``recsys-infer`` command line: thin commands over the library.

Heavy imports (torch, the toolchain, even the runtime) happen inside the command bodies, so
``recsys-infer --help`` is instant and the runtime commands work without torch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .enums import Calibration, Pooling, QuantMode, Spin, TowerChoice, UserTowerKind
from .errors import FidelityError, RecsysError
from .version import __version__

if TYPE_CHECKING:
    from .runtime.manifest import FusionSpec
    from .runtime.types import Recommendation

app = typer.Typer(
    name="recsys-infer",
    help="Train, export and serve two-tower recommenders built on pretrained language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HELP = "auto, cpu, cuda, cuda:N (the N-th GPU), tensorrt or tensorrt:N."
JsonOut = Annotated[
    Path | None,
    typer.Option("--json", help="Also write a machine-readable report to this file.", dir_okay=False),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it already exists.")]
EncoderOpt = Annotated[
    str | None, typer.Option("--encoder", help="Encoder id or local path; default all-MiniLM-L6-v2.")
]


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


class SoftmaxChoice(StrEnum):
    AUTO = "auto"
    FULL = "full"
    SAMPLED = "sampled"


#: Exit status of a command refused by a quality gate (a fidelity budget), apart from errors (1).
GATE_FAILED = 3


def _friendly_errors(func: F) -> F:
    """Turn the library's errors into one clear line and exit status 1, or GATE_FAILED when a
    fidelity budget refused the result (tracebacks with RECSYS_INFER_DEBUG=1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RecsysError as e:
            if os.environ.get("RECSYS_INFER_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(GATE_FAILED if isinstance(e, FidelityError) else 1) from None

    return wrapper  # type: ignore[return-value]


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    typer.echo(f"report written to {path}")


def _parity_line(parity: dict[str, Any], recall: float) -> str:
    return (
        f"parity vs PyTorch: user max|Δ| {parity['user']['max_abs_diff']:.1e}, item max|Δ| "
        f"{parity['item']['max_abs_diff']:.1e}; HNSW recall@10 vs exact {recall:.3f}"
    )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=True)  # long lines are not broken when output is piped


def _recs_table(title: str, recs: list[Recommendation]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("item", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for rank, r in enumerate(recs, start=1):
        table.add_row(str(rank), r.item_id, f"{r.score:.3f}", r.text)
    return table


def _print_version(value: bool) -> None:
    if not value:
        return
    from .runtime.providers import installed_runtime_distributions

    runtimes = installed_runtime_distributions()
    typer.echo(f"recsys-infer {__version__} ({'; '.join(runtimes) or 'no ONNX Runtime installed'})")
    raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and the ONNX Runtime build.",
        ),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
@_friendly_errors
def quickstart(
    out: Annotated[Path, typer.Option(help="Where the checkpoint and bundle go.", file_okay=False)] = Path(
        "quickstart-out"
    ),
    minutes: Annotated[
        float, typer.Option(min=0.1, help="Training budget in minutes (the default model, best epoch kept).")
    ] = 2.0,
    steps: Annotated[int | None, typer.Option(min=0, help="Train exactly this many steps instead.")] = None,
    encoder: EncoderOpt = None,
    json_out: JsonOut = None,
) -> None:
    """Run the whole path on the built-in sample catalogue: train, export, index, recommend."""
    from .quickstart import run_quickstart

    console = _console()
    console.print(f"[bold]recsys-infer quickstart[/bold]: built-in sample catalogue → {out}/")
    report = run_quickstart(out, steps=steps, minutes=minutes, encoder=encoder)
    for user in report.users:
        console.print(f"\n[bold]user {user.user_id}[/bold], most recent history (newest last):")
        width = max(40, console.width - 12)
        for item_id, text in user.history[-5:]:
            console.print(f"  {item_id}  {_clip(text, width)}", highlight=False)
        console.print(
            f"  held-out next item: {user.target[0]}  {_clip(user.target[1], width - 20)}", highlight=False
        )
        console.print(_recs_table(f"recommendations for {user.user_id}", user.recommendations))
        if user.request:
            console.print(
                _recs_table(f'the same history with the request "{user.request}"', user.mixed_recommendations)
            )
    console.print(_recs_table(f'\nrequest: "{report.request}"', report.request_recommendations))

    from rich.table import Table

    timings = Table(title="stage timings", title_justify="left")
    timings.add_column("stage")
    timings.add_column("seconds", justify="right")
    for stage, seconds in report.stages.items():
        timings.add_row(stage, f"{seconds:.1f}")
    timings.add_row("[bold]total[/bold]", f"[bold]{sum(report.stages.values()):.1f}[/bold]")
    console.print(timings)
    extra = report.train.get("extra", {})
    if "best_epoch" in extra:
        console.print(
            f"trained {report.train['steps']} steps ({extra['epochs']} epochs, stopped by "
            f"{report.train['stopped_by']}); best validation NDCG@10 "
            f"{extra['best_validation_ndcg@10']:.4f} at epoch {extra['best_epoch']}"
        )
    console.print(_parity_line(report.export["parity"], report.export["index_recall_at_10"]))
    from .runtime.bundle import read_manifest

    fusion = read_manifest(report.bundle).fusion
    for line in _fusion_lines(fusion) if fusion is not None else []:
        console.print(line, highlight=False)
    console.print(f'bundle ready: recsys-infer recommend {report.bundle} --text "..."')
    _write_json(json_out, report.to_json())


@app.command()
@_friendly_errors
def train(
    data: Annotated[str, typer.Option(help="Data folder (MovieLens or generic), or 'sample'.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.", file_okay=False)],
    encoder: EncoderOpt = None,
    revision: Annotated[
        str | None,
        typer.Option(help="Hub revision (branch, tag or commit) of --encoder; recorded in the bundle."),
    ] = None,
    pooling: Annotated[
        Pooling | None,
        typer.Option(help="mean or cls; only for encoders without a sentence-transformers Pooling module."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=0, help="Stop after this many steps (0: save untrained).")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this much wall time.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=2)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    user_max_length: Annotated[int | None, typer.Option(help="User tower token budget.")] = None,
    item_max_length: Annotated[int | None, typer.Option(help="Item tower token budget.")] = None,
    max_history: Annotated[int | None, typer.Option(help="History items written into the user text.")] = None,
    shared_towers: Annotated[bool | None, typer.Option("--shared-towers/--separate-towers")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch intra-op threads.")] = None,
    user_tower: Annotated[
        UserTowerKind | None, typer.Option(help="text: history as text; sequence: history item vectors.")
    ] = None,
    hidden: Annotated[int | None, typer.Option(help="Sequence tower width.")] = None,
    layers: Annotated[int | None, typer.Option(help="Sequence tower layers.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Sequence tower dropout.")] = None,
    item_head_hidden: Annotated[
        int | None, typer.Option(help="Width of the item head (sequence kind).")
    ] = None,
    last_item_residual: Annotated[
        bool | None,
        typer.Option(
            "--last-item-residual/--no-last-item-residual",
            help="Add the newest history item's vector to the user vector (sequence kind).",
        ),
    ] = None,
    item_offsets: Annotated[
        bool | None,
        typer.Option(
            "--item-offsets/--no-item-offsets",
            help="Learn a vector per item on top of its text vector (sequence kind).",
        ),
    ] = None,
    unseen_negatives: Annotated[
        bool | None,
        typer.Option(
            "--unseen-negatives/--no-unseen-negatives",
            help="Score items the training split never shows as negatives (sequence kind; default: no).",
        ),
    ] = None,
    softmax: Annotated[
        SoftmaxChoice | None,
        typer.Option(
            help="Sequence kind: full softmax over the catalogue, or sampled negatives with the logQ "
            "correction; auto: full up to 20,000 items."
        ),
    ] = None,
    negatives: Annotated[
        int | None, typer.Option(min=1, help="Sampled negatives per step (sequence kind, sampled softmax).")
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N epochs (sequence kind).")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N validations without gain.")] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--fp32",
            help="bf16 autocast for training (sequence kind default: on where the CPU has native bf16).",
        ),
    ] = None,
    cold_items: Annotated[
        int | None, typer.Option(help="Hold this many test-target items out of training.")
    ] = None,
    save_every: Annotated[
        int | None, typer.Option(help="Save a resumable state every N steps (text kind).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from <out>.partial/.")] = False,
    recipe: Annotated[Path | None, typer.Option(help="Recipe TOML; its [train] table sets defaults.")] = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Fine-tune the two towers on a data set's training split."""
    from .data import load_dataset
    from .toolchain.train import TrainConfig
    from .toolchain.train import train as run_train

    base = TrainConfig()
    if recipe is not None:
        from .toolchain.export import read_recipe

        doc = read_recipe(recipe)
        base = TrainConfig(**doc.get("train", {}))
        encoder = encoder or doc.get("encoder", {}).get("name")
        revision = revision or doc.get("encoder", {}).get("revision")
    config = base.with_overrides(
        epochs=epochs,
        max_steps=max_steps,
        max_minutes=max_minutes,
        batch_size=batch_size,
        learning_rate=lr,
        temperature=temperature,
        seed=seed,
        user_max_length=user_max_length,
        item_max_length=item_max_length,
        max_history=max_history,
        shared_towers=shared_towers,
        threads=threads,
        user_tower=user_tower,
        hidden=hidden,
        layers=layers,
        dropout=dropout,
        item_head_hidden=item_head_hidden,
        item_offsets=item_offsets,
        last_item_residual=last_item_residual,
        unseen_negatives=unseen_negatives,
        softmax=softmax.value if softmax else None,
        negatives=negatives,
        eval_every=eval_every,
        patience=patience,
        bf16=bf16,
        cold_items=cold_items,
        save_every=save_every,
        pooling=pooling,
    )
    dataset = load_dataset(data)
    typer.echo(dataset.describe())
    result = run_train(
        dataset,
        out,
        encoder=encoder,
        config=config,
        overwrite=overwrite or resume,
        resume=resume,
        revision=revision,
    )
    loss = (
        f"loss {result.first_loss:.3f} → {result.final_loss:.3f}"
        if result.first_loss is not None
        else "no steps"
        if result.steps == 0
        else "no complete epoch, so no epoch loss"
    )
    typer.echo(
        f"trained {result.steps} steps in {result.seconds:.0f}s ({loss}; stopped by {result.stopped_by})"
    )
    if result.extra.get("best_epoch"):
        typer.echo(
            f"best validation NDCG@10 {result.extra['best_validation_ndcg@10']:.4f} at epoch "
            f"{result.extra['best_epoch']} of {result.extra['epochs']}"
        )
    typer.echo(f"checkpoint: {out}")
    _write_json(json_out, result.to_json())


def _fidelity_lines(fidelity: dict[str, Any]) -> None:
    for name, q in fidelity["queries"].items():
        typer.echo(
            f"{name} vs reference: overlap@10 {q['overlap@10']:.4f}, overlap@100 {q['overlap@100']:.4f}, "
            f"cosine mean {q['mean_cosine']:.4f} min {q['min_cosine']:.4f} ({q['count']} probe queries)"
        )


MaxDrop = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Fail, writing nothing, if overlap@10 with the reference (users or requests) falls below 1 - X.",
    ),
]
Reference = Annotated[
    Path | None,
    typer.Option(help="The uncompressed bundle to measure against (default: the one the input records)."),
]


@app.command()
@_friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory from `train`.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)],
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe TOML; its [export] and [index] tables apply.")
    ] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Carry the validation probe set.")] = True,
    text_space: Annotated[
        bool | None,
        typer.Option(
            "--text-space/--no-text-space",
            help="Sequence models: keep the pretrained text space beside the trained one, weighed "
            "per query kind on validation (default); --no-text-space: the trained space alone.",
        ),
    ] = None,
    reference: Reference = None,
    max_overlap_drop: MaxDrop = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Export a checkpoint to a verified bundle: ONNX towers, parity check, HNSW index."""
    from dataclasses import replace

    from .runtime.bundle import read_manifest
    from .toolchain.export import ExportConfig, export_bundle, export_config_from_recipe, read_recipe

    config = export_config_from_recipe(read_recipe(recipe), source=str(recipe)) if recipe else ExportConfig()
    if text_space is not None:
        config = replace(config, text_space=text_space)
    result = export_bundle(
        checkpoint,
        out,
        config=replace(config, include_probe=probe),
        overwrite=overwrite,
        reference=reference,
        max_overlap_drop=max_overlap_drop,
    )
    for tower, p in result.parity.items():
        if not isinstance(p, dict) or "mean_cosine" not in p:  # the reference and tolerance entries
            continue
        if "histories" in p:
            lengths = p["history_lengths"]
            inputs = f"{p['histories']} histories ({lengths['min']}–{lengths['max']} items)"
        else:
            inputs = f"{p['texts']} texts ({p['token_lengths']['min']}–{p['token_lengths']['max']} tokens)"
        typer.echo(
            f"{tower} tower parity vs PyTorch on {inputs}: max|Δ| {p['max_abs_diff']:.1e}, "
            f"min cos {p['min_cosine']:.6f}"
        )
    typer.echo(f"HNSW recall@10 vs exact: {result.index_recall_at_10:.3f}")
    manifest = read_manifest(out)
    by_kind = manifest.fidelity.get("index_recall_at_10_by_query")
    if by_kind:
        recalls = ", ".join(f"{kind} {value:.3f}" for kind, value in by_kind.items())
        typer.echo(f"HNSW ef_search {manifest.index.ef_search}, recall@10 vs exact by query: {recalls}")
    fusion = manifest.fusion
    if fusion is not None:
        for line in _fusion_lines(fusion):
            typer.echo(line)
    if result.fidelity is not None:
        _fidelity_lines(result.fidelity)
    typer.echo(f"bundle: {out} ({sum(result.files.values()) / 1e6:.1f} MB)")
    _write_json(json_out, result.to_json())


def _step_summary(result: Any) -> None:
    _fidelity_lines(result.fidelity)
    onnx_mb = sum(v for k, v in result.files.items() if k.endswith(".onnx")) / 1e6
    typer.echo(f"bundle: {result.bundle} (graphs {onnx_mb:.1f} MB, {result.seconds:.0f} s)")


@app.command()
@_friendly_errors
def optimize(
    bundle: Annotated[Path, typer.Argument(help="Bundle to optimise (left unchanged).")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)],
    tower: Annotated[TowerChoice, typer.Option(help="Which towers to optimise.")] = TowerChoice.BOTH,
    max_overlap_drop: MaxDrop = None,
    reference: Reference = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """ONNX Runtime's transformer fusions (attention, layer norm, GELU), verified against the reference."""
    from .toolchain.compress import optimize_bundle

    result = optimize_bundle(
        bundle, out, towers=tower, max_overlap_drop=max_overlap_drop, reference=reference, overwrite=overwrite
    )
    for name, g in result.step["graphs"].items():
        fused = ", ".join(f"{k} {v}" for k, v in g.get("fused_operators", {}).items()) or g.get("reason", "")
        typer.echo(f"{name}: {g['nodes_before']} -> {g['nodes_after']} nodes ({fused})")
    _step_summary(result)
    _write_json(json_out, result.to_json())


@app.command()
@_friendly_errors
def quantize(
    bundle: Annotated[Path, typer.Argument(help="Bundle to quantize (left unchanged).")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)],
    mode: Annotated[
        QuantMode,
        typer.Option(
            help="dynamic, static or blockwise int8 (CPU); fp16 (CUDA); auto: the request graph in "
            "dynamic int8 where the probe allows it, blockwise int8 or fp32 elsewhere (--tower user)."
        ),
    ] = QuantMode.DYNAMIC,
    tower: Annotated[TowerChoice, typer.Option(help="Which towers to quantize.")] = TowerChoice.BOTH,
    calibration_size: Annotated[
        int, typer.Option(min=8, help="static: probe inputs used to calibrate activation ranges.")
    ] = 256,
    calibration: Annotated[
        Calibration, typer.Option(help="static: calibration method.")
    ] = Calibration.MINMAX,
    keep_fp32: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep these MatMuls in fp32: ffn-out, ffn-in, attention-out, head, or a regex (repeatable)."
        ),
    ] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Weight scales.")] = True,
    block_size: Annotated[
        int, typer.Option(min=16, help="blockwise: weights and activations share a scale per this many.")
    ] = 64,
    reindex: Annotated[
        bool, typer.Option(help="Rebuild the item index with the quantized item tower.")
    ] = False,
    target_overlap: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="auto: the overlap@10 with the reference the mixed graph must hold."
        ),
    ] = 0.95,
    smooth: Annotated[
        str | None,
        typer.Option(
            help="dynamic/auto, --tower user or item: smooth the text graph's activations before "
            "int8 (SmoothQuant): off, auto (strength chosen on the probe's requests, or on the "
            "catalogue for the item tower) or a strength in (0, 1). Default: auto for --mode auto, "
            "off otherwise.",
        ),
    ] = None,
    max_overlap_drop: MaxDrop = None,
    reference: Reference = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """int8 (dynamic, calibrated static, blockwise or auto mixed int8/fp32) or fp16 towers, with
    their measured cost."""
    from .toolchain.compress import QuantizeConfig, quantize_bundle

    config = QuantizeConfig(
        mode=mode,
        towers=tower,
        per_channel=per_channel,
        calibration=calibration,
        calibration_size=calibration_size,
        block_size=block_size,
        keep_fp32=tuple(keep_fp32 or ()),
        reindex=reindex,
        max_overlap_drop=max_overlap_drop,
        target_overlap=target_overlap,
        smooth=smooth,
    )
    result = quantize_bundle(bundle, out, config, reference=reference, overwrite=overwrite)
    if mode is QuantMode.FP16:
        typer.echo("fp16 graphs are for device='cuda'; on the CPU they run, slowly, through casts.")
    _step_summary(result)
    _write_json(json_out, result.to_json())


@app.command()
@_friendly_errors
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory from `train` (left unchanged).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.", file_okay=False)],
    ratio: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Fraction of heads and FFN neurons removed per layer.")
    ],
    layers: Annotated[int, typer.Option(min=0, help="Also remove this many whole layers.")] = 0,
    tower: Annotated[
        TowerChoice,
        typer.Option(
            help="Which towers' encoders to prune. On a sequence model, user prunes a request tower "
            "of its own and leaves items as they were."
        ),
    ] = TowerChoice.BOTH,
    distill_steps: Annotated[
        int, typer.Option(min=0, help="Distillation steps from the unpruned model.")
    ] = 0,
    data: Annotated[
        str | None,
        typer.Option(help="The training data (its training split feeds importance and distillation)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Distillation batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Distillation learning rate.")] = 1e-4,
    quant_aware: Annotated[
        bool,
        typer.Option(
            "--quant-aware",
            help="Distil with the linear layers rounded as `quantize --mode dynamic` rounds them, "
            "so the int8 graph keeps the fidelity (with --ratio 0: retrain for int8 only).",
        ),
    ] = False,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="Distil towards this checkpoint instead of CHECKPOINT itself: to distil a pruned "
            "checkpoint further from the one it was pruned from (with --ratio 0).",
            file_okay=False,
        ),
    ] = None,
    request_variants: Annotated[
        int,
        typer.Option(
            min=0,
            help="A request tower also distils on this many requests per item made of a random "
            "choice of its genres and tags (never those of a held-out request).",
        ),
    ] = 0,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Remove attention heads, FFN neurons (and layers) by measured importance; recover by distillation."""
    from .toolchain.prune import PruneConfig, prune_checkpoint

    config = PruneConfig(
        ratio=ratio,
        layers=layers,
        towers=tower,
        distill_steps=distill_steps,
        batch_size=batch_size,
        learning_rate=lr,
        quant_aware=quant_aware,
        request_variants=request_variants,
    )
    result = prune_checkpoint(checkpoint, out, config, data=data, teacher=teacher, overwrite=overwrite)
    for t in result.towers:
        agree = t.agreement_after_distill or t.agreement_before_distill
        typer.echo(
            f"{t.name} encoder: {t.parameters_before / 1e6:.1f}M -> "
            f"{t.parameters_after / 1e6:.1f}M parameters, "
            f"{t.layers_after} layers, heads {t.heads_per_layer}, FFN {t.ffn_per_layer[0]}; "
            f"cosine to unpruned {agree.get('mean_cosine', float('nan')):.4f} "
            f"({'after' if t.agreement_after_distill else 'without'} distillation)"
        )
        if "overlap@10" in agree:
            int8 = f", {agree['int8_overlap@10']:.4f} in fake int8" if "int8_overlap@10" in agree else ""
            overlap = agree["overlap@10"]
            typer.echo(f"  probe requests' overlap@10 with the unpruned tower: {overlap:.4f}{int8}")
    note = ""
    if any(t.name == "request" for t in result.towers):
        request = sum(f.stat().st_size for f in (out / "request_encoder").glob("*.safetensors"))
        note = f" (the item encoder stays, beside the {request / 1e6:.1f} MB request encoder)"
    typer.echo(
        f"weights {result.bytes_before / 1e6:.1f} MB -> {result.bytes_after / 1e6:.1f} MB{note}; "
        f"checkpoint: {out}"
    )
    _write_json(json_out, result.to_json())


@app.command()
@_friendly_errors
def build(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML (see export/*.toml).")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)],
    data: Annotated[str | None, typer.Option(help="Data folder to train on (and to distill on).")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Start from this trained checkpoint instead of training.")
    ] = None,
    work: Annotated[
        Path | None, typer.Option(help="Folder for intermediate models (default <out>.work).")
    ] = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Run a recipe's whole chain: train, export, prune, optimise, quantize."""
    from .toolchain.build import build as run_build

    result = run_build(recipe, out, data=data, checkpoint=checkpoint, work=work, overwrite=overwrite)
    for stage in result.stages:
        fidelity = stage.get("fidelity")
        cost = f" (overlap@10 vs reference {fidelity['overlap@10']:.4f})" if fidelity else ""
        typer.echo(f"{stage['stage']}: {stage.get('bundle') or stage.get('checkpoint')}{cost}")
    typer.echo(f"bundle: {out}")
    _write_json(json_out, result.to_json())


def _fusion_lines(fusion: FusionSpec) -> list[str]:
    """How a two-space bundle weighs its spaces, and the validation scores it chose them on."""
    record = fusion.chosen_on
    trained, text = fusion.dims
    lines = [
        f"two spaces: trained {trained}-d + pretrained text {text}-d; weights chosen on "
        f"{record.get('users', '?')} {record.get('split', '?')} users, NDCG@10:"
    ]

    def scored(part: str, keys: tuple[str, ...]) -> str:
        entry = record.get(part)
        if not isinstance(entry, dict):
            return ""
        chosen = entry["chosen"]["ndcg@10"]
        others = ", ".join(f"{k.replace('_', ' ')} {entry[k]:.4f}" for k in keys)
        return f" -> {chosen:.4f} ({others})"

    lines += [
        f"  history: user vector x{fusion.history[0]:g} + text view x{fusion.history[1]:g}, recency "
        f"decay {fusion.decay:g}" + scored("history", ("trained_only", "text_only")),
        f"  request: trained x{fusion.request[0]:g} + text x{fusion.request[1]:g}"
        + scored("request", ("text_only",)),
        f"  history + request: {fusion.mix:g} history, {1 - fusion.mix:g} request"
        + scored("mixed", ("history_alone", "request_alone")),
    ]
    return lines


class ConvertTarget(StrEnum):
    SENTENCE_TRANSFORMERS = "sentence-transformers"


@app.command()
@_friendly_errors
def convert(
    bundle: Annotated[Path, typer.Argument(help="A text-kind fp32 bundle.")],
    out: Annotated[Path, typer.Option(help="Directory to write (one folder per tower).", file_okay=False)],
    to: Annotated[
        ConvertTarget, typer.Option(help="The format to write.")
    ] = ConvertTarget.SENTENCE_TRANSFORMERS,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="The checkpoint the bundle was exported from (default: the one it records)."),
    ] = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Write a bundle's text towers as sentence-transformers folders (with ONNX backend files)."""
    from .toolchain.convert import to_sentence_transformers

    result = to_sentence_transformers(bundle, out, checkpoint=checkpoint, overwrite=overwrite)
    for name, folder in result.folders.items():
        typer.echo(
            f"{name} tower: {folder} (sentence-transformers, ONNX backend: lowest cosine to the bundle "
            f"{result.min_cosine[name]:.6f})"
        )
    _write_json(
        json_out,
        {
            "bundle": str(bundle),
            "to": str(to),
            "folders": {k: str(v) for k, v in result.folders.items()},
            "min_cosine": result.min_cosine,
        },
    )


@app.command()
@_friendly_errors
def info(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file's sha256.")] = True,
    device: Annotated[
        str | None,
        typer.Option(
            help="Also load the engine on this device (auto, cpu, cuda, cuda:N, tensorrt) and report where "
            "its graphs really run."
        ),
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Describe a bundle: towers, index, catalogue, fidelity and provenance."""
    from .runtime.bundle import read_manifest, verify_files
    from .runtime.schema import encode

    manifest = read_manifest(bundle)
    verify_files(bundle, manifest, checksums=verify)
    console = _console()
    console.print(f"[bold]{bundle}[/bold]  schema v{manifest.schema_version}, created {manifest.created_at}")
    files = manifest.files
    for name, spec in manifest.towers.items():
        size = files[spec.file].bytes / 1e6
        if spec.kind == "sequence":
            shape = (
                f"causal transformer over up to {spec.max_length} history item vectors "
                f"({spec.layers} layers, width {spec.hidden})"
            )
        else:
            shape = f"{spec.pooling} pooling, max {spec.max_length} tokens" + (
                ", with a trained head" if spec.head else ""
            )
        console.print(
            f"  {name} tower: {spec.file} ({size:.1f} MB), {spec.precision}, {shape}, dim {spec.dim}"
            + (f", quantization {spec.quantization}" if spec.quantization else "")
        )
    idx = manifest.index
    where = f"capacity {idx.capacity or '?'}"
    if idx.kind == "milvus":
        where = (
            f"collection {idx.collection!r} at {idx.uri} (built with {idx.count} items; it may have changed)"
        )
    console.print(
        f"  index: {idx.kind} {idx.space}, {idx.count} items, M={idx.M}, ef_construction="
        f"{idx.ef_construction}, ef_search={idx.ef_search}, {where}"
    )
    if manifest.user.kind == "text":
        ui = manifest.user_input
        console.print(
            f"  user input: up to {ui.max_history} history items as text, newest first, "
            f"separated by {ui.item_separator!r}"
        )
    if manifest.fusion is not None:
        for line in _fusion_lines(manifest.fusion):
            console.print("  " + line, highlight=False, markup=False)
    if manifest.probe is not None:
        p = manifest.probe
        console.print(f"  probe: {p.histories} {p.split} histories, {p.requests} requests")
    if manifest.parity:
        recall = manifest.fidelity.get("index_recall_at_10_vs_exact", float("nan"))
        console.print("  " + _parity_line(dict(manifest.parity), recall))
    enc, data, training = manifest.provenance.encoder, manifest.provenance.data, manifest.provenance.training
    console.print(f"  encoder: {enc.get('name')} (license: {enc.get('license') or 'unknown'})")
    if data:
        console.print(
            f"  trained on: {data.get('name')} ({data.get('items')} items, {data.get('users')} users), "
            f"fingerprint {str(data.get('fingerprint'))[:12]}…, {training.get('steps')} steps"
        )
    total = sum(f.bytes for f in files.values())
    console.print(
        f"  files: {len(files)}, {total / 1e6:.1f} MB, checksums {'verified' if verify else 'not checked'}"
    )
    report = encode(manifest)
    if device is not None:
        from .runtime.engine import Engine

        engine = Engine.load(bundle, device=device, verify=False)
        providers = getattr(engine.item_encoder, "providers", [])
        console.print(
            f"  device: {device} requested, the graphs run on {engine.device_name} "
            f"(providers: {', '.join(providers)})"
            + (f"; fell back: {engine.device_fallback}" if engine.device_fallback else ""),
            highlight=False,
            markup=False,
        )
        report["device"] = {
            "requested": str(device),
            "running": engine.device_name,
            "providers": providers,
            "fallback": engine.device_fallback,
        }
    _write_json(json_out, report)


@app.command()
@_friendly_errors
def recommend(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    history: Annotated[str | None, typer.Option(help="Comma-separated item ids, oldest first.")] = None,
    text: Annotated[str | None, typer.Option(help="A free-text request.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many items.")] = 10,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="Print a table or JSON.")
    ] = OutputFormat.TABLE,
    include_seen: Annotated[bool, typer.Option(help="Allow history items in the results.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    exact: Annotated[bool, typer.Option(help="Exact search instead of the HNSW index.")] = False,
    json_out: JsonOut = None,
) -> None:
    """Recommend items for a history and/or a text request."""
    from .runtime.engine import Engine

    ids = [h.strip() for h in history.split(",") if h.strip()] if history else []
    if not ids and not text:
        raise typer.BadParameter("give --history ID,ID,... or --text TEXT (or both)")
    engine = Engine.load(bundle, device=device, exact=exact)
    recs = engine.recommend(history=ids, text=text, k=k, exclude_seen=not include_seen)
    payload = {
        "bundle": str(bundle),
        "device": engine.device_name,
        "query": {"history": ids, "text": text},
        "recommendations": [r.to_json() for r in recs],
    }
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        _console().print(_recs_table(f"top {k} ({engine.device_name})", recs))
    _write_json(json_out, payload)


class Split(StrEnum):
    TEST = "test"
    VALIDATION = "validation"


@app.command()
@_friendly_errors
def evaluate(
    bundles: Annotated[
        list[Path] | None, typer.Argument(help="Bundles to evaluate; the first is the reference.")
    ] = None,
    data: Annotated[str, typer.Option(help="The data folder the bundles were trained on.")] = "",
    baseline: Annotated[
        list[str] | None,
        typer.Option(help="Also evaluate a baseline: popularity, als or zero-shot (repeatable)."),
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Cut-offs (repeatable); default 10 and 50.")
    ] = None,
    split: Annotated[Split, typer.Option(help="Which held-out item is the target.")] = Split.TEST,
    users: Annotated[
        int | None, typer.Option(min=1, help="Evaluate a seeded sample of this many users.")
    ] = None,
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen/--include-seen", help="Mask the input history from the ranking.")
    ] = False,
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
    json_out: JsonOut = None,
) -> None:
    """Leave-one-out, full-ranking evaluation with 95% bootstrap intervals and paired comparisons."""
    from .evaluation.run import EvalConfig, run_evaluation

    if not data:
        raise typer.BadParameter("--data is required: the folder the bundles were trained on, or 'sample'")
    config = EvalConfig(
        split=str(split),
        ks=tuple(k or (10, 50)),
        users=users,
        exclude_seen=exclude_seen,
        exact=exact,
        requests=requests,
        tune_als=tune,
        seed=seed,
    )
    report = run_evaluation(data, bundles or [], baseline or [], config)
    _print_evaluation(report.to_json())
    _write_json(json_out, report.to_json())


def _fmt(metric: dict[str, Any]) -> str:
    lo, hi = metric["ci95"]
    return f"{metric['mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def _print_evaluation(report: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
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


@app.command()
@_friendly_errors
def bench(
    bundles: Annotated[list[Path], typer.Argument(help="Bundles to measure, side by side.", exists=True)],
    json_out: Annotated[Path, typer.Option("--json", help="Write the report (JSON) here.", dir_okay=False)],
    data: Annotated[
        str | None,
        typer.Option(help="The data the bundles were built from (default: what the first bundle records)."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where every subject runs: cpu, cuda, cuda:N or tensorrt (not auto).")
    ] = "cpu",
    md: Annotated[
        Path | None, typer.Option(help="Also write the Markdown table here.", dir_okay=False)
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Also draw latency vs overlap and HNSW recall vs QPS (PNG).", dir_okay=False),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="The uncompressed checkpoint (default: the one the first bundle was exported from)."
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option(min=1, help="Threads for every subject (ONNX Runtime, PyTorch).")
    ] = 2,
    rounds: Annotated[int | None, typer.Option(min=1, help="Interleaved timing rounds.")] = None,
    peers: Annotated[
        bool, typer.Option("--peers/--no-peers", help="Include the sentence-transformers peers.")
    ] = True,
    spin: Annotated[
        Spin,
        typer.Option(
            help="When ONNX Runtime's threads busy-wait: always (its default; between runs too), "
            "run (only while a run lasts) or never. run by default: subjects share the cores, "
            "and one's idle spinning threads would slow the next.",
        ),
    ] = Spin.RUN,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smoke test: few users, rounds and calls.")
    ] = False,
) -> None:
    """Measure bundles against the PyTorch reference and sentence-transformers: speed, memory, quality."""
    from .bench import BenchConfig, markdown, run_bench
    from .bench import plot as draw

    overrides: dict[str, Any] = {"threads": threads, "peers": peers, "device": device, "spin": spin}
    if rounds is not None:
        overrides["rounds"] = rounds
    config = BenchConfig.quick_mode(**overrides) if quick else BenchConfig(**overrides)
    if data is None:
        from .data.readers import data_spec
        from .runtime.bundle import read_manifest

        source = read_manifest(bundles[0]).provenance.data.get("source")
        if not source:
            raise typer.BadParameter(f"{bundles[0]} does not record its data; pass --data")
        data = data_spec(str(source))
        typer.echo(f"data: {data} (recorded by {bundles[0]})", err=True)
    report = run_bench(
        bundles, data, reference=reference, config=config, progress=lambda msg: typer.echo(msg, err=True)
    )
    table = markdown(report)
    typer.echo(table)
    _write_json(json_out, report)
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(table, encoding="utf-8")
        typer.echo(f"table written to {md}")
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        draw(report, plot)
        typer.echo(f"plot written to {plot}")


def _limit(help_text: str, env: str) -> Any:
    return typer.Option(min=1, help=f"{help_text} (env RECSYS_INFER_{env})", rich_help_panel="Limits")


@app.command()
@_friendly_errors
def serve(
    bundle: Annotated[Path, typer.Argument(help="The bundle to serve.", exists=True, file_okay=False)],
    host: Annotated[
        str, typer.Option(envvar="RECSYS_INFER_HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, envvar="RECSYS_INFER_PORT")] = 8000,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            envvar="RECSYS_INFER_ACCESS_LOG",
            help="A log line per request (off: writing it took an eighth of the event loop's time "
            "under load; /metrics counts every request by route and status).",
        ),
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="RECSYS_INFER_THREADS",
            help="ONNX Runtime intra-op threads (default: the physical cores).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=DEVICE_HELP + " (env RECSYS_INFER_DEVICE)", show_default="auto")
    ] = None,
    provider_option: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE for the GPU provider, e.g. enable_cuda_graph=1 or trt_fp16_enable=1 "
            "(repeatable; env RECSYS_INFER_PROVIDER_OPTIONS=k=v,k=v).",
        ),
    ] = None,
    max_batch: Annotated[
        int | None, _limit("Most requests the micro-batcher runs at once.", "MAX_BATCH")
    ] = None,
    max_wait_us: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="How long the micro-batcher waits to fill a batch, in µs. (env RECSYS_INFER_MAX_WAIT_US)",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None, _limit("Largest request body; larger gets 413.", "MAX_BODY_BYTES")
    ] = None,
    max_cost: Annotated[
        int | None,
        _limit("Result rows one body may ask for (k summed, explained x8); more gets 422.", "MAX_COST"),
    ] = None,
    max_pending: Annotated[
        int | None, _limit("Recommendations waiting at once; more get 429 with Retry-After.", "MAX_PENDING")
    ] = None,
    max_k: Annotated[int | None, _limit("Largest k.", "MAX_K")] = None,
    max_batch_requests: Annotated[
        int | None, _limit("Requests in one batch body.", "MAX_BATCH_REQUESTS")
    ] = None,
    max_history: Annotated[int | None, _limit("History items in one request.", "MAX_HISTORY")] = None,
    max_text_chars: Annotated[
        int | None, _limit("Characters of a request or item text.", "MAX_TEXT_CHARS")
    ] = None,
    max_ids_per_filter: Annotated[
        int | None, _limit("Ids in exclude or allow.", "MAX_IDS_PER_FILTER")
    ] = None,
    max_items_per_edit: Annotated[
        int | None, _limit("Items in one POST /items.", "MAX_ITEMS_PER_EDIT")
    ] = None,
    request_cache: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Keep this many request vectors, so a text seen again skips the transformer (default 0: "
            "off). (env RECSYS_INFER_REQUEST_CACHE)",
        ),
    ] = None,
    spin: Annotated[
        bool | None,
        typer.Option(
            "--spin/--no-spin",
            help="Let ONNX Runtime's threads busy-wait between runs (on). --no-spin lets them sleep: "
            "a shorter tail and free cores when other work shares the machine. (env RECSYS_INFER_SPIN)",
        ),
    ] = None,
    auth_reads: Annotated[
        bool | None,
        typer.Option(
            "--auth-reads/--no-auth-reads",
            help="Require the API key for /recommend, /info and "
            "/metrics too (off). (env RECSYS_INFER_AUTH_READS)",
            rich_help_panel="Limits",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            envvar="RECSYS_INFER_RAY",
            help="Serve replicas on Ray Serve: 'local' starts a local cluster, HOST:PORT joins one. The "
            "bundle's index should be in Milvus (see `index --milvus`). Needs the 'scale' extra.",
            rich_help_panel="Ray Serve",
        ),
    ] = None,
    replicas: Annotated[
        int,
        typer.Option(
            min=1, envvar="RECSYS_INFER_REPLICAS", help="Replicas on Ray Serve.", rich_help_panel="Ray Serve"
        ),
    ] = 2,
    detach: Annotated[
        bool,
        typer.Option(
            help="Deploy (or roll out a new bundle) and return, leaving the replicas running.",
            rich_help_panel="Ray Serve",
        ),
    ] = False,
    allow_local_index: Annotated[
        bool,
        typer.Option(
            help="Let Ray Serve replicas each hold a copy of an embedded index (read-only serving).",
            rich_help_panel="Ray Serve",
        ),
    ] = False,
) -> None:
    """Serve a bundle over HTTP: /recommend, /embed, /items, /healthz, /info, /metrics (serve extra).

    Limits come from the flags, else RECSYS_INFER_* variables, else the defaults; GET /info shows
    those in force. With --ray, N replicas run on Ray Serve behind its proxy on HOST:PORT."""
    try:
        import uvicorn

        from .serve import API_KEY_ENV, ServeSettings, create_app
        from .serve.settings import parse_provider_options
    except ImportError as e:
        raise typer.BadParameter(
            f"serving needs the serve extra ({e}): pip install 'recsys-infer[serve]'"
        ) from e
    settings = ServeSettings.from_env(
        max_batch=max_batch,
        max_wait_us=max_wait_us,
        max_body_bytes=max_body_bytes,
        max_cost=max_cost,
        max_pending=max_pending,
        max_k=max_k,
        max_batch_requests=max_batch_requests,
        max_history=max_history,
        max_text_chars=max_text_chars,
        max_ids_per_filter=max_ids_per_filter,
        max_items_per_edit=max_items_per_edit,
        auth_reads=auth_reads,
        device=device,
        request_cache=request_cache,
        spin=spin,
        provider_options=parse_provider_options(provider_option) if provider_option else None,
    )
    if not os.environ.get(API_KEY_ENV):
        typer.echo(f"catalogue editing routes are off: set {API_KEY_ENV} to enable them", err=True)
        if settings.auth_reads:
            raise typer.BadParameter(f"--auth-reads needs {API_KEY_ENV} set to the key clients will send")
    if ray is not None:
        _serve_on_ray(bundle, settings, ray, replicas, threads, host, port, detach, allow_local_index)
        return
    uvicorn.run(
        create_app(bundle, threads=threads, settings=settings),
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
    )


def _serve_on_ray(
    bundle: Path,
    settings: Any,
    ray: str,
    replicas: int,
    threads: int | None,
    host: str,
    port: int,
    detach: bool,
    allow_local_index: bool,
) -> None:
    if detach and ray == "local":
        raise typer.BadParameter(
            "--detach leaves replicas on a running cluster, but --ray local starts one that ends with this "
            "command; start a cluster (`ray start --head`) and pass --ray HOST:PORT"
        )
    from .scale import serving

    url = serving.deploy(
        bundle, replicas=replicas, threads=threads, settings=settings, host=host, port=port,
        address=None if ray == "local" else ray, allow_local_index=allow_local_index,
    )  # fmt: skip
    typer.echo(f"{replicas} replica(s) of {bundle} serving at {url}")
    if detach:
        return
    typer.echo("Ctrl-C stops them")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serving.shutdown()


@app.command()
@_friendly_errors
def index(
    bundle: Annotated[Path, typer.Argument(help="The bundle whose towers encode the new catalogue.")],
    out: Annotated[Path, typer.Option(help="The new bundle to write.")],
    items: Annotated[
        Path | None,
        typer.Option(
            help="Items: a .csv, .tsv, .jsonl or .parquet table with item_id and text (or text columns), "
            "or a folder of such shards. Default: the bundle's own live catalogue."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Cores per worker, each running one batch at a time.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Item-tower sessions encoding shards at once.")] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Encode on Ray Data: 'local' starts a local cluster, HOST:PORT (or ray://...) joins one. "
            "Needs the 'scale' extra."
        ),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Items per shard (the unit a resumed run skips).")
    ] = 4096,
    milvus: Annotated[
        str | None,
        typer.Option(
            help="Put the index in a Milvus collection at this URI instead of hnswlib: a local .db path "
            "(Milvus Lite) or http://HOST:19530. Needs the 'scale' extra."
        ),
    ] = None,
    collection: Annotated[str, typer.Option(help="The Milvus collection's name.")] = "recsys_items",
    index_threads: Annotated[int, typer.Option(min=1, help="Threads building HNSW (1: reproducible).")] = 1,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Rebuild a bundle's catalogue and index for a new items file, without retraining.

    Shards of encoded items wait beside OUT until the bundle is written: run the same command
    again after an interruption and only the missing shards are encoded."""
    from .indexing import EncodingSettings, MilvusTarget, reindex_bundle
    from .runtime.milvus import is_lite, lite_uri

    runner = None
    if ray is not None:
        from .scale.encoding import RayRunner

        runner = RayRunner(None if ray == "local" else ray)
    encoding = EncodingSettings(workers=workers, threads=threads, runner=runner, shard_size=shard_size)
    target = None
    if milvus is not None:
        target = MilvusTarget(lite_uri(milvus) if is_lite(milvus) else milvus, collection)
    result = reindex_bundle(
        bundle, items, out, encoding=encoding, index_threads=index_threads, milvus=target,
        overwrite=overwrite, progress=True,
    )  # fmt: skip
    enc = result["encoding"]
    typer.echo(
        f"wrote {result['bundle']}: {result['items']} items ({result['index']} index), encoded in "
        f"{result['encode_seconds']} s ({enc['backend']}, {enc['workers']} worker(s), "
        f"{enc['reused_shards']} of {enc['shards']} shards reused), indexed in {result['index_seconds']} s"
    )
    _write_json(json_out, result)


@app.command("sample-data")
@_friendly_errors
def sample_data(
    out: Annotated[
        Path, typer.Option(help="Folder to write items.jsonl and interactions.csv into.", file_okay=False)
    ],
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Write the built-in sample catalogue as a generic data folder (an example of the format)."""
    from .data import sample_dataset, write_generic
    from .runtime.bundle import atomic_directory

    dataset = sample_dataset()
    with atomic_directory(out, overwrite=overwrite, marker="items.jsonl") as tmp:
        write_generic(dataset, tmp)
    typer.echo(f"{dataset.describe()} → {out}")
    _write_json(
        json_out,
        {
            "out": str(out),
            "items": len(dataset.catalog),
            "users": len(dataset.sequences),
            "fingerprint": dataset.fingerprint,
        },
    )


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
