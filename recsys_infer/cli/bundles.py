"""Commands that make and change bundles: export, compression, pruning, recipes, conversion
and re-indexing."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys_infer.enums import Calibration, Consistency, QuantMode, TowerChoice, VectorStorage

from .app import app
from .common import (
    Command,
    HelpAll,
    JsonOut,
    MaxDrop,
    Overwrite,
    Reference,
    fidelity_lines,
    friendly_errors,
    rare,
    scoring_lines,
    step_summary,
    write_json,
)

_SCORING = "How a sequence bundle scores (chosen on validation)"
TextSpace = Annotated[
    bool | None,
    typer.Option(
        "--text-space/--no-text-space",
        help="Sequence models: keep the pretrained text space beside the trained one, weighed "
        "per query kind on validation; --no-text-space: the trained space alone.",
        show_default="the recipe's, else text-space",
        **rare(_SCORING),
    ),
]
SeenPenalty = Annotated[
    bool | None,
    typer.Option(
        "--seen-penalty/--no-seen-penalty",
        help="Sequence models: choose on validation what history items lose when allowed back "
        "(--include-seen); --no-seen-penalty: they are ranked as scored.",
        show_default="the recipe's, else seen-penalty",
        **rare(_SCORING),
    ),
]


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory from `train`.")],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)],
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="A packaged recipe (default, ...) or a TOML file; its export and index tables apply.",
            show_default="none",
        ),
    ] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Carry the validation probe set.")] = True,
    text_space: TextSpace = None,
    seen_penalty: SeenPenalty = None,
    _help_all: HelpAll = False,
    reference: Reference = None,
    max_overlap_drop: MaxDrop = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Export a checkpoint to a verified bundle: ONNX towers, parity check, HNSW index."""
    from dataclasses import replace

    from recsys_infer.runtime.bundle import read_manifest
    from recsys_infer.toolchain.export import (
        ExportConfig,
        export_bundle,
        export_config_from_recipe,
        read_recipe,
    )

    config = export_config_from_recipe(read_recipe(recipe), source=str(recipe)) if recipe else ExportConfig()
    if text_space is not None:
        config = replace(config, text_space=text_space)
    if seen_penalty is not None:
        config = replace(config, seen_penalty=seen_penalty)
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
    for line in scoring_lines(manifest):
        typer.echo(line)
    if result.fidelity is not None:
        fidelity_lines(result.fidelity)
    typer.echo(f"bundle: {out} ({sum(result.files.values()) / 1e6:.1f} MB)")
    write_json(json_out, result.to_json())


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
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
    from recsys_infer.toolchain.compress.steps import optimize_bundle

    result = optimize_bundle(
        bundle, out, towers=tower, max_overlap_drop=max_overlap_drop, reference=reference, overwrite=overwrite
    )
    for name, g in result.step["graphs"].items():
        fused = ", ".join(f"{k} {v}" for k, v in g.get("fused_operators", {}).items()) or g.get("reason", "")
        typer.echo(f"{name}: {g['nodes_before']} -> {g['nodes_after']} nodes ({fused})")
    step_summary(result)
    write_json(json_out, result.to_json())


_QUANT = "Tuning the int8 modes"


BundleOpt = Annotated[Path, typer.Argument(help="Bundle to quantize (left unchanged).")]
OutOpt = Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)]
ModeOpt = Annotated[
    QuantMode,
    typer.Option(
        help="int8 for the CPU (dynamic, static, blockwise); fp16 for CUDA; auto: the request graph "
        "mixed, int8 where the probe allows it and fp32 elsewhere."
    ),
]
TowerOpt = Annotated[
    TowerChoice | None,
    typer.Option(help="Which towers to quantize.", show_default="both; user for --mode auto"),
]
CalibrationSizeOpt = Annotated[
    int,
    typer.Option(min=8, help="static: probe inputs used to calibrate activation ranges.", **rare(_QUANT)),
]
CalibrationOpt = Annotated[Calibration, typer.Option(help="static: calibration method.", **rare(_QUANT))]
KeepFp32Opt = Annotated[
    list[str] | None,
    typer.Option(
        help="Keep these MatMuls in fp32: ffn-out, ffn-in, attention-out, head, or a regex (repeatable).",
        show_default="none",
        **rare(_QUANT),
    ),
]
PerChannelOpt = Annotated[
    bool, typer.Option("--per-channel/--per-tensor", help="Weight scales.", **rare(_QUANT))
]
BlockSizeOpt = Annotated[
    int,
    typer.Option(
        min=16, help="blockwise: weights and activations share a scale per this many.", **rare(_QUANT)
    ),
]
ReindexOpt = Annotated[bool, typer.Option(help="Rebuild the item index with the quantized item tower.")]
TargetOverlapOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="auto: the overlap@10 with the reference the mixed graph must hold.",
        **rare(_QUANT),
    ),
]
SmoothOpt = Annotated[
    str | None,
    typer.Option(
        help="dynamic/auto, --tower user or item: smooth the text graph's activations before "
        "int8 (SmoothQuant): off, auto (strength chosen on the probe's requests, or on the "
        "catalogue for the item tower) or a strength in (0, 1).",
        show_default="auto for --mode auto, off otherwise",
        **rare(_QUANT),
    ),
]


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
def quantize(
    bundle: BundleOpt,
    out: OutOpt,
    mode: ModeOpt = QuantMode.DYNAMIC,
    tower: TowerOpt = None,
    calibration_size: CalibrationSizeOpt = 256,
    calibration: CalibrationOpt = Calibration.MINMAX,
    keep_fp32: KeepFp32Opt = None,
    per_channel: PerChannelOpt = True,
    block_size: BlockSizeOpt = 64,
    reindex: ReindexOpt = False,
    target_overlap: TargetOverlapOpt = 0.95,
    smooth: SmoothOpt = None,
    max_overlap_drop: MaxDrop = None,
    reference: Reference = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
    _help_all: HelpAll = False,
) -> None:
    """int8 (dynamic, calibrated static, blockwise or auto mixed int8/fp32) or fp16 towers, with
    their measured cost."""
    from recsys_infer.toolchain.compress.steps import QuantizeConfig, quantize_bundle

    if tower is None:  # --mode auto searches the request path's graph: the user side
        tower = TowerChoice.USER if mode is QuantMode.AUTO else TowerChoice.BOTH
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
    step_summary(result)
    write_json(json_out, result.to_json())


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
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
        typer.Option(
            help="The training data (its training split feeds importance and distillation).",
            show_default="none; --distill-steps needs it",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Distillation batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Distillation learning rate.")] = 1e-4,
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
            show_default="CHECKPOINT",
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
    from recsys_infer.toolchain.prune.pruning import PruneConfig, prune_checkpoint

    config = PruneConfig(
        ratio=ratio,
        layers=layers,
        towers=tower,
        distill_steps=distill_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        quant_aware=quant_aware,
        request_variants=request_variants,
    )
    result = prune_checkpoint(checkpoint, out, config, data=data, teacher=teacher, overwrite=overwrite)
    _print_pruning(result, out)
    write_json(json_out, result.to_json())


def _print_pruning(result: Any, out: Path) -> None:
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


@app.command("build", rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
def build_command(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="A packaged recipe (default, int8, blockwise, auto, pruned-int8) or a TOML file."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Bundle directory to write.", file_okay=False)],
    data: Annotated[
        str | None,
        typer.Option(
            help="Data folder to train on (and to distill on).", show_default="none; training needs it"
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Start from this trained checkpoint instead of training.", show_default="train first"
        ),
    ] = None,
    work: Annotated[
        Path | None, typer.Option(help="Folder for intermediate models.", show_default="<out>.work")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=0, help="Stop training after this many steps.", show_default="the recipe's"),
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(help="Stop training after this much wall time.", show_default="the recipe's"),
    ] = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Run a recipe's whole chain: train, export, prune, optimise, quantize."""
    from recsys_infer.toolchain.build import run_recipe

    result = run_recipe(
        recipe, out, data=data, checkpoint=checkpoint, work=work, overwrite=overwrite, max_steps=max_steps,
        max_minutes=max_minutes,
    )  # fmt: skip
    for stage in result.stages:
        fidelity = stage.get("fidelity")
        cost = f" (overlap@10 vs reference {fidelity['overlap@10']:.4f})" if fidelity else ""
        typer.echo(f"{stage['stage']}: {stage.get('bundle') or stage.get('checkpoint')}{cost}")
    typer.echo(f"bundle: {out}")
    write_json(json_out, result.to_json())


class ConvertTarget(StrEnum):
    SENTENCE_TRANSFORMERS = "sentence-transformers"


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
def convert(
    bundle: Annotated[
        Path, typer.Argument(help="An fp32 bundle: the text kind, or the default kind's text space.")
    ],
    out: Annotated[Path, typer.Option(help="Directory to write (one folder per tower).", file_okay=False)],
    to: Annotated[
        ConvertTarget, typer.Option(help="The format to write.")
    ] = ConvertTarget.SENTENCE_TRANSFORMERS,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="The checkpoint the bundle was exported from.", show_default="the one it records"),
    ] = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Write a bundle's text towers as sentence-transformers folders (with ONNX backend files);
    for the default kind, the towers of its text space."""
    from recsys_infer.toolchain.export.convert import to_sentence_transformers

    result = to_sentence_transformers(bundle, out, checkpoint=checkpoint, overwrite=overwrite)
    for name, folder in result.folders.items():
        typer.echo(
            f"{name} tower: {folder} (sentence-transformers, ONNX backend: lowest cosine to the bundle "
            f"{result.min_cosine[name]:.6f})"
        )
    write_json(
        json_out,
        {
            "bundle": str(bundle),
            "to": str(to),
            "folders": {k: str(v) for k, v in result.folders.items()},
            "min_cosine": result.min_cosine,
        },
    )


MilvusConsistencyOpt = Annotated[
    Consistency,
    typer.Option(
        help="What a Milvus read waits for besides the engine's own edits: session (others' "
        "edits show within moments) or strong (every edit; 0.2 to 0.4 s a read on a server).",
        **rare("Milvus"),
    ),
]
MilvusStorageOpt = Annotated[
    VectorStorage,
    typer.Option(
        help="How the Milvus index holds vectors: fp32, or sq8 (a byte a component, a quarter of the "
        "memory, a little recall; Milvus 2.6+ or Milvus Lite).",
        **rare("Milvus"),
    ),
]


ItemBackendOpt = Annotated[
    str,
    typer.Option(
        help="The item tower's runtime: onnxruntime, openvino (the openvino extra) or auto (the faster "
        "on 64 of the items, if its vectors agree with ONNX Runtime's).",
    ),
]


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
def index(
    bundle: Annotated[Path, typer.Argument(help="The bundle whose towers encode the new catalogue.")],
    out: Annotated[Path, typer.Option(help="The new bundle to write.")],
    items: Annotated[
        Path | None,
        typer.Option(
            help="Items: a .csv, .tsv, .jsonl or .parquet table with item_id and text (or text columns), "
            "or a folder of such shards.",
            show_default="the bundle's own live catalogue",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Cores per worker, each running one batch at a time.",
            show_default="the cores shared out",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Item-tower sessions encoding shards at once.")] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Encode on Ray Data: 'local' starts a local cluster, HOST:PORT (or ray://...) joins one. "
            "Needs the 'scale' extra.",
            show_default="in this process",
        ),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Items per shard (the unit a resumed run skips).")
    ] = 4096,
    milvus: Annotated[
        str | None,
        typer.Option(
            help="Put the index in a Milvus collection at this URI instead of hnswlib: a local .db path "
            "(Milvus Lite) or http://HOST:19530. Needs the 'scale' extra.",
            show_default="hnswlib, in the bundle",
        ),
    ] = None,
    collection: Annotated[str, typer.Option(help="The Milvus collection's name.")] = "recsys_items",
    milvus_consistency: MilvusConsistencyOpt = Consistency.SESSION,
    milvus_storage: MilvusStorageOpt = VectorStorage.FP32,
    index_threads: Annotated[int, typer.Option(min=1, help="Threads building HNSW (1: reproducible).")] = 1,
    backend: ItemBackendOpt = "onnxruntime",
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
    _help_all: HelpAll = False,
) -> None:
    """Rebuild a bundle's catalogue and index for a new items file, without retraining.

    Shards of encoded items wait beside OUT until the bundle is written: run the same command
    again after an interruption and only the missing shards are encoded."""
    from recsys_infer.indexing import EncodingSettings, MilvusTarget, reindex_bundle
    from recsys_infer.runtime.milvus import is_lite, lite_uri

    runner = None
    if ray is not None:
        from recsys_infer.scale.encoding import RayRunner

        runner = RayRunner(None if ray == "local" else ray)
    encoding = EncodingSettings(
        workers=workers, threads=threads, runner=runner, shard_size=shard_size, runtime=backend
    )
    target = None
    if milvus is not None:
        uri = lite_uri(milvus) if is_lite(milvus) else milvus
        target = MilvusTarget(uri, collection, milvus_consistency, milvus_storage)
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
    write_json(json_out, result)


@app.command(rich_help_panel="Bundles and compression", cls=Command)
@friendly_errors
def push(
    bundle: Annotated[Path, typer.Argument(help="The bundle to upload (verified first).")],
    repo: Annotated[str, typer.Argument(help="The Hub model repository, OWNER/NAME (created if needed).")],
    revision: Annotated[
        str | None, typer.Option(help="The branch to commit to (created if needed).", show_default="main")
    ] = None,
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    message: Annotated[
        str | None, typer.Option(help="The commit message.", show_default="recsys-infer bundle: ENCODER")
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Upload a bundle with its model card to the Hugging Face Hub (hub extra); load it back with
    Engine.load("hf://OWNER/NAME") or `recsys-infer recommend hf://OWNER/NAME`."""
    from recsys_infer.runtime.hub import push as upload

    pushed = upload(bundle, repo, revision=revision, private=private, message=message)
    typer.echo(f"pushed {pushed.files} files to {pushed.repo}@{pushed.revision}: commit {pushed.commit}")
    typer.echo(
        f"load it with: recsys-infer recommend hf://{pushed.repo} --revision {pushed.commit} --text ..."
    )
    write_json(json_out, {"bundle": str(bundle), **dataclasses.asdict(pushed)})
