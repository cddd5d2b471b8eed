"""The Typer application every command module registers on, and its global options."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from recsys_infer.version import __version__

app = typer.Typer(
    name="recsys-infer",
    help="Train, export and serve two-tower recommenders built on pretrained language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from recsys_infer.runtime.providers import installed_runtime_distributions

    runtimes = installed_runtime_distributions()
    typer.echo(f"recsys-infer {__version__} ({'; '.join(runtimes) or 'no ONNX Runtime installed'})")
    raise typer.Exit()


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars; results and errors still print.")
    ] = False,
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
    if quiet:  # every bar is tqdm's, which reads its defaults from TQDM_* variables
        before = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        ctx.call_on_close(lambda: _restore("TQDM_DISABLE", before))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
