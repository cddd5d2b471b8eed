"""The Typer application every command module registers on, and its global options."""

from __future__ import annotations

import logging
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
