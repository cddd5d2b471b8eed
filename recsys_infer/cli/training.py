"""Commands that make a model: the quickstart, training, and the sample data."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys_infer.enums import Pooling, UserTowerKind

from .app import app
from .common import (
    EncoderOpt,
    JsonOut,
    Overwrite,
    clip,
    friendly_errors,
    fusion_lines,
    make_console,
    parity_line,
    recs_table,
    write_json,
)


class SoftmaxChoice(StrEnum):
    AUTO = "auto"
    FULL = "full"
    SAMPLED = "sampled"


@app.command(rich_help_panel="Train")
@friendly_errors
def quickstart(
    out: Annotated[Path, typer.Option(help="Where the checkpoint and bundle go.", file_okay=False)] = Path(
        "quickstart-out"
    ),
    max_minutes: Annotated[
        float, typer.Option(min=0.1, help="Training budget in minutes (the default model, best epoch kept).")
    ] = 2.0,
    max_steps: Annotated[
        int | None, typer.Option(min=0, help="Train exactly this many steps instead (a smoke test).")
    ] = None,
    encoder: EncoderOpt = None,
    json_out: JsonOut = None,
) -> None:
    """Run the whole path on the built-in sample catalogue: train, export, index, recommend."""
    from .quickstart import run_quickstart

    console = make_console()
    console.print(f"[bold]recsys-infer quickstart[/bold]: built-in sample catalogue → {out}/")
    report = run_quickstart(out, steps=max_steps, minutes=max_minutes, encoder=encoder)
    for user in report.users:
        console.print(f"\n[bold]user {user.user_id}[/bold], most recent history (newest last):")
        width = max(40, console.width - 12)
        for item_id, text in user.history[-5:]:
            console.print(f"  {item_id}  {clip(text, width)}", highlight=False)
        console.print(
            f"  held-out next item: {user.target[0]}  {clip(user.target[1], width - 20)}", highlight=False
        )
        console.print(recs_table(f"recommendations for {user.user_id}", user.recommendations))
        if user.request:
            console.print(
                recs_table(f'the same history with the request "{user.request}"', user.mixed_recommendations)
            )
    console.print(recs_table(f'\nrequest: "{report.request}"', report.request_recommendations))

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
    console.print(parity_line(report.export["parity"], report.export["index_recall_at_10"]))
    from recsys_infer.runtime.bundle import read_manifest

    fusion = read_manifest(report.bundle).fusion
    for line in fusion_lines(fusion) if fusion is not None else []:
        console.print(line, highlight=False)
    console.print(f'bundle ready: recsys-infer recommend {report.bundle} --text "..."')
    write_json(json_out, report.to_json())


def _flag(on: str, off: str, help_text: str) -> Any:
    return typer.Option(f"--{on}/--{off}", help=help_text)


_SEQ = "Sequence kind: "
_Int = int | None
_Float = float | None
_Bool = bool | None
Data = Annotated[str, typer.Option(help="Data folder (MovieLens or generic), or 'sample'.")]
CheckpointOut = Annotated[Path, typer.Option(help="Checkpoint directory to write.", file_okay=False)]
Revision = Annotated[
    str | None,
    typer.Option(help="Hub revision (branch, tag or commit) of --encoder; recorded in the bundle."),
]
PoolingOpt = Annotated[
    Pooling | None,
    typer.Option(help="mean or cls; only for encoders without a sentence-transformers Pooling module."),
]
UserTower = Annotated[
    UserTowerKind | None, typer.Option(help="text: history as text; sequence: history item vectors.")
]
Softmax = Annotated[
    SoftmaxChoice | None,
    typer.Option(
        help=_SEQ + "full softmax over the catalogue, or sampled negatives with the logQ correction; "
        "auto: full up to 20,000 items."
    ),
]
Recipe = Annotated[
    Path | None,
    typer.Option(
        help="A packaged recipe (default, int8, ...) or a TOML file; its train table sets defaults."
    ),
]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from <out>.partial/.")]


@app.command("train", rich_help_panel="Train")
@friendly_errors
def train_command(
    data: Data,
    out: CheckpointOut,
    encoder: EncoderOpt = None,
    revision: Revision = None,
    pooling: PoolingOpt = None,
    epochs: Annotated[
        _Int, typer.Option(min=1, help="Most epochs (the kind's default: 200 sequence, 1 text).")
    ] = None,
    max_steps: Annotated[
        _Int, typer.Option(min=0, help="Stop after this many steps (0: save untrained).")
    ] = None,
    max_minutes: Annotated[_Float, typer.Option(help="Stop after this much wall time.")] = None,
    batch_size: Annotated[
        _Int, typer.Option(min=2, help="Examples per step (the kind's default: 64 sequence, 32 text).")
    ] = None,
    lr: Annotated[_Float, typer.Option(help="Peak learning rate (AdamW).")] = None,
    temperature: Annotated[_Float, typer.Option(help="Softmax temperature.")] = None,
    seed: Annotated[_Int, typer.Option(help="Seed of every random choice (default 0).")] = None,
    user_max_length: Annotated[_Int, typer.Option(help="User tower token budget.")] = None,
    item_max_length: Annotated[_Int, typer.Option(help="Item tower token budget.")] = None,
    max_history: Annotated[_Int, typer.Option(help="History items written into the user text.")] = None,
    shared_towers: Annotated[
        _Bool,
        typer.Option("--shared-towers/--separate-towers", help="Text kind: one encoder for both towers."),
    ] = None,
    threads: Annotated[_Int, typer.Option(min=1, help="torch intra-op threads.")] = None,
    user_tower: UserTower = None,
    hidden: Annotated[_Int, typer.Option(help="Sequence tower width.")] = None,
    layers: Annotated[_Int, typer.Option(help="Sequence tower layers.")] = None,
    dropout: Annotated[_Float, typer.Option(help="Sequence tower dropout.")] = None,
    item_head_hidden: Annotated[_Int, typer.Option(help="Width of the item head (sequence kind).")] = None,
    last_item_residual: Annotated[
        _Bool,
        _flag("last-item-residual", "no-last-item-residual", _SEQ + "add the newest history item's vector."),
    ] = None,
    item_offsets: Annotated[
        _Bool, _flag("item-offsets", "no-item-offsets", _SEQ + "learn a vector per item beside its text's.")
    ] = None,
    unseen_negatives: Annotated[
        _Bool,
        _flag(
            "unseen-negatives", "no-unseen-negatives", _SEQ + "items training never shows as negatives (no)."
        ),
    ] = None,
    softmax: Softmax = None,
    negatives: Annotated[_Int, typer.Option(min=1, help=_SEQ + "sampled negatives per step.")] = None,
    eval_every: Annotated[_Int, typer.Option(help="Validate every N epochs (sequence kind).")] = None,
    patience: Annotated[_Int, typer.Option(help="Stop after N validations without gain.")] = None,
    bf16: Annotated[
        _Bool, _flag("bf16", "fp32", "bf16 autocast (sequence default: where the CPU has bf16).")
    ] = None,
    cold_items: Annotated[
        _Int, typer.Option(help="Hold this many test-target items out of training.")
    ] = None,
    save_every: Annotated[
        _Int, typer.Option(help="Save a resumable state every N steps (text kind).")
    ] = None,
    resume: Resume = False,
    recipe: Recipe = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Fine-tune the two towers on a data set's training split."""
    given = dict(locals())  # every option named after a TrainConfig field overrides it
    from recsys_infer.data import load_dataset
    from recsys_infer.toolchain.train.loop import train as run_train

    config, encoder, revision = _train_config(recipe, given, encoder, revision)
    dataset = load_dataset(data)
    typer.echo(dataset.describe())
    result = run_train(
        dataset, out, encoder=encoder, config=config, overwrite=overwrite or resume, resume=resume,
        revision=revision,
    )  # fmt: skip
    _print_training(result)
    typer.echo(f"checkpoint: {out}")
    write_json(json_out, result.to_json())


def _train_config(
    recipe: Path | None, given: dict[str, Any], encoder: str | None, revision: str | None
) -> tuple[Any, str | None, str | None]:
    """The training configuration: the recipe's ``[train]`` table (else the defaults) with every
    option given on the command line over it; and the encoder and revision, flags first."""
    import dataclasses

    from recsys_infer.toolchain.train.loop import TrainConfig

    base = TrainConfig()
    if recipe is not None:
        from recsys_infer.toolchain.export.recipe import (
            encoder_from_recipe,
            read_recipe,
            train_config_from_recipe,
        )

        doc = read_recipe(recipe)
        base = train_config_from_recipe(doc, source=str(recipe))
        name, pinned = encoder_from_recipe(doc)
        encoder, revision = encoder or name, revision or pinned
    given = {**given, "learning_rate": given.pop("lr")}
    if given.get("softmax") is not None:
        given["softmax"] = given["softmax"].value
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return base.with_overrides(**{k: v for k, v in given.items() if k in fields}), encoder, revision


def _print_training(result: Any) -> None:
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


@app.command("sample-data", rich_help_panel="Train")
@friendly_errors
def sample_data(
    out: Annotated[
        Path, typer.Option(help="Folder to write items.jsonl and interactions.csv into.", file_okay=False)
    ],
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
) -> None:
    """Write the built-in sample catalogue as a generic data folder (an example of the format)."""
    from recsys_infer.data import sample_dataset, write_generic
    from recsys_infer.runtime.bundle import atomic_directory

    dataset = sample_dataset()
    with atomic_directory(out, overwrite=overwrite, marker="items.jsonl") as tmp:
        write_generic(dataset, tmp)
    typer.echo(f"{dataset.describe()} → {out}")
    write_json(
        json_out,
        {
            "out": str(out),
            "items": len(dataset.catalog),
            "users": len(dataset.sequences),
            "fingerprint": dataset.fingerprint,
        },
    )
