"""Commands that make a model: the quickstart, training, and the sample data."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys_infer.enums import Lever, Pooling, UserTowerKind

from .app import app
from .common import (
    Command,
    EncoderOpt,
    HelpAll,
    JsonOut,
    Overwrite,
    clip,
    friendly_errors,
    make_console,
    parity_line,
    rare,
    recs_table,
    scoring_lines,
    write_json,
)


class SoftmaxChoice(StrEnum):
    AUTO = "auto"
    FULL = "full"
    SAMPLED = "sampled"


@app.command(rich_help_panel="Train", cls=Command)
@friendly_errors
def quickstart(
    out: Annotated[Path, typer.Option(help="Where the checkpoint and bundle go.", file_okay=False)] = Path(
        "quickstart-out"
    ),
    max_minutes: Annotated[
        float, typer.Option(min=0.1, help="Training budget in minutes (the default model, best epoch kept).")
    ] = 2.0,
    max_steps: Annotated[
        int | None,
        typer.Option(
            min=0, help="Train exactly this many steps instead (a smoke test).", show_default="no limit"
        ),
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

    for line in scoring_lines(read_manifest(report.bundle)):
        console.print(line, highlight=False)
    console.print(f'bundle ready: recsys-infer recommend {report.bundle} --text "..."')
    write_json(json_out, report.to_json())


_MODEL = "Model shape"
_LOOP = "Training loop"
_SEQ = "Sequence kind: "


def _opt(help_text: str, default: str, *decls: str, panel: str | None = None, **kwargs: Any) -> Any:
    """A ``train`` option left unset (None) so that a recipe can set it, its default shown as
    ``default``; rare ones (``panel``) are listed by ``--help-all``."""
    hide = rare(panel) if panel else {}
    return typer.Option(*decls, help=help_text, show_default=default, **hide, **kwargs)  # type: ignore[misc]


_Int = int | None
_Float = float | None
_Bool = bool | None
_BY_KIND = "sequence {}, text {}"
Data = Annotated[str, typer.Option(help="Data folder (MovieLens or generic), or 'sample'.")]
CheckpointOut = Annotated[Path, typer.Option(help="Checkpoint directory to write.", file_okay=False)]
Revision = Annotated[
    str | None,
    _opt("Hub revision (branch, tag or commit) of --encoder; recorded in the bundle.", "main", panel=_MODEL),
]
PoolingOpt = Annotated[
    Pooling | None,
    _opt("mean or cls, for encoders without a sentence-transformers Pooling module.", "mean", panel=_MODEL),
]
UserTower = Annotated[
    UserTowerKind | None,
    _opt("text: history as text; sequence: history item vectors.", "sequence"),
]
Softmax = Annotated[
    SoftmaxChoice | None,
    _opt(
        _SEQ + "full softmax over the catalogue, or sampled negatives with the logQ correction; "
        "auto: full up to 20,000 items.",
        "auto",
        panel=_LOOP,
    ),
]
Recipe = Annotated[
    Path | None,
    _opt("A packaged recipe (default, int8, ...) or a TOML file; its train table sets defaults.", "none"),
]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from <out>.partial/.")]


EpochsOpt = Annotated[_Int, _opt("Most epochs.", _BY_KIND.format(200, 1), min=1)]
MaxStepsOpt = Annotated[_Int, _opt("Stop after this many steps (0: save untrained).", "no limit", min=0)]
MaxMinutesOpt = Annotated[_Float, _opt("Stop after this much wall time.", "no limit")]
BatchSizeOpt = Annotated[_Int, _opt("Examples per step.", _BY_KIND.format(64, 32), min=2)]
LearningRateOpt = Annotated[_Float, _opt("Peak learning rate (AdamW).", _BY_KIND.format(1e-3, 5e-5))]
SeedOpt = Annotated[_Int, _opt("Seed of every random choice.", "0")]
TemperatureOpt = Annotated[_Float, _opt("Softmax temperature.", _BY_KIND.format(0.07, 0.05), panel=_LOOP)]
UserMaxLengthOpt = Annotated[_Int, _opt("Tokens of a user text or request.", "128", panel=_MODEL)]
ItemMaxLengthOpt = Annotated[_Int, _opt("Tokens of an item's text.", "64", panel=_MODEL)]
MaxHistoryOpt = Annotated[
    _Int, _opt("History items the user tower reads.", _BY_KIND.format(50, 20), panel=_MODEL)
]
SharedTowersOpt = Annotated[
    _Bool,
    _opt(
        "Text kind: one encoder for both towers.",
        "separate",
        "--shared-towers/--separate-towers",
        panel=_MODEL,
    ),
]
ThreadsOpt = Annotated[_Int, _opt("torch intra-op threads.", "torch's choice", min=1, panel=_LOOP)]
HiddenOpt = Annotated[_Int, _opt(_SEQ + "tower width.", "256", panel=_MODEL)]
LayersOpt = Annotated[_Int, _opt(_SEQ + "tower layers.", "2", panel=_MODEL)]
DropoutOpt = Annotated[_Float, _opt(_SEQ + "tower dropout.", "0.2", panel=_MODEL)]
ItemHeadHiddenOpt = Annotated[_Int, _opt(_SEQ + "width of the item head.", "1024", panel=_MODEL)]
LastItemResidualOpt = Annotated[
    _Bool,
    _opt(
        _SEQ + "add the newest history item's vector.",
        "on",
        "--last-item-residual/--no-last-item-residual",
        panel=_MODEL,
    ),
]
ItemOffsetsOpt = Annotated[
    Lever | None,
    _opt(
        _SEQ + "learn a short vector per item beside its text's (auto: chosen by trials).",
        "off",
        panel=_MODEL,
    ),
]
WhitenOpt = Annotated[
    Lever | None,
    _opt(
        _SEQ + "whiten the encoder's item vectors over the catalogue (auto: chosen by trials on validation).",
        "off",
        panel=_MODEL,
    ),
]
UnseenNegativesOpt = Annotated[
    _Bool,
    _opt(
        _SEQ + "items training never shows are negatives too.",
        "off",
        "--unseen-negatives/--no-unseen-negatives",
        panel=_LOOP,
    ),
]
NegativesOpt = Annotated[_Int, _opt(_SEQ + "sampled negatives per step.", "4096", min=1, panel=_LOOP)]
EvalEveryOpt = Annotated[_Int, _opt(_SEQ + "validate every N epochs.", "5", panel=_LOOP)]
TrialEpochsOpt = Annotated[
    _Int, _opt(_SEQ + "epochs of each lever's trial (a lever left on auto).", "15", min=1, panel=_LOOP)
]
PatienceOpt = Annotated[_Int, _opt("Stop after N validations without gain.", "4", panel=_LOOP)]
Bf16Opt = Annotated[
    _Bool,
    _opt(_SEQ + "bf16 autocast.", "where the CPU computes bf16", "--bf16/--fp32", panel=_LOOP),
]
ColdItemsOpt = Annotated[_Int, _opt("Hold this many test-target items out of training.", "0", panel=_LOOP)]
SaveEveryOpt = Annotated[_Int, _opt("Text kind: save a resumable state every N steps.", "200", panel=_LOOP)]


@app.command("train", rich_help_panel="Train", cls=Command)
@friendly_errors
def train_command(
    data: Data,
    out: CheckpointOut,
    encoder: EncoderOpt = None,
    recipe: Recipe = None,
    user_tower: UserTower = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    batch_size: BatchSizeOpt = None,
    learning_rate: LearningRateOpt = None,
    seed: SeedOpt = None,
    revision: Revision = None,
    pooling: PoolingOpt = None,
    temperature: TemperatureOpt = None,
    user_max_length: UserMaxLengthOpt = None,
    item_max_length: ItemMaxLengthOpt = None,
    max_history: MaxHistoryOpt = None,
    shared_towers: SharedTowersOpt = None,
    threads: ThreadsOpt = None,
    hidden: HiddenOpt = None,
    layers: LayersOpt = None,
    dropout: DropoutOpt = None,
    item_head_hidden: ItemHeadHiddenOpt = None,
    last_item_residual: LastItemResidualOpt = None,
    item_offsets: ItemOffsetsOpt = None,
    whiten: WhitenOpt = None,
    unseen_negatives: UnseenNegativesOpt = None,
    softmax: Softmax = None,
    negatives: NegativesOpt = None,
    eval_every: EvalEveryOpt = None,
    patience: PatienceOpt = None,
    trial_epochs: TrialEpochsOpt = None,
    bf16: Bf16Opt = None,
    cold_items: ColdItemsOpt = None,
    save_every: SaveEveryOpt = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
    _help_all: HelpAll = False,
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
    if result.extra.get("chosen_on_validation"):
        from recsys_infer.toolchain.train.levers import Levers

        def score(trial: dict[str, Any]) -> str:
            value = trial["validation_ndcg@10"]
            return "cut short" if value is None else f"{value:.4f}"

        tried = "; ".join(f"{Levers.of(t).describe()} {score(t)}" for t in result.extra["trials"])
        typer.echo(f"levers tried (validation NDCG@10): {tried}")
        typer.echo(f"levers chosen: {Levers.of(result.extra['levers']).describe()}")
    if result.extra.get("best_epoch"):
        typer.echo(
            f"best validation NDCG@10 {result.extra['best_validation_ndcg@10']:.4f} at epoch "
            f"{result.extra['best_epoch']} of {result.extra['epochs']}"
        )


@app.command("sample-data", rich_help_panel="Train", cls=Command)
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
