"""The command line through Typer's test runner, on the tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recsys_infer.cli import app
from recsys_infer.data import sample_dataset

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generic data folder written by `sample-data`, then trimmed to 150 users."""
    folder = tmp_path_factory.mktemp("data") / "sample"
    code, out = invoke("sample-data", "--out", str(folder))
    assert code == 0, out
    lines = (folder / "interactions.csv").read_text().splitlines()
    users = sorted({line.split(",")[0] for line in lines[1:]})[:150]
    keep = [lines[0]] + [line for line in lines[1:] if line.split(",")[0] in set(users)]
    (folder / "interactions.csv").write_text("\n".join(keep) + "\n")
    return folder


def test_sample_data_round_trips(small_data: Path) -> None:
    from recsys_infer.data import load_dataset

    loaded = load_dataset(small_data)
    sample = sample_dataset()
    assert len(loaded.catalog) == len(sample.catalog)
    assert loaded.catalog.get("P00001").text == sample.catalog.get("P00001").text
    assert loaded.sequences["U0001"] == sample.sequences["U0001"]


def test_train_export_info_recommend(small_data: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    ckpt, bundle, report = tmp_path / "ck", tmp_path / "b", tmp_path / "reports" / "train.json"
    code, out = invoke(
        "train",
        "--data",
        str(small_data),
        "--out",
        str(ckpt),
        "--encoder",
        str(tiny_encoder),
        "--user-tower",
        "text",
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--user-max-length",
        "32",
        "--item-max-length",
        "24",
        "--json",
        str(report),
    )
    assert code == 0, out
    assert "trained 3 steps" in out and "checkpoint:" in out
    assert json.loads(report.read_text())["steps"] == 3

    code, out = invoke("export", str(ckpt), "--out", str(bundle), "--recipe", "default")
    assert code == 0, out
    assert "user tower parity vs PyTorch" in out and "HNSW recall@10" in out

    code, out = invoke("info", str(bundle), "--json", str(tmp_path / "info.json"))
    assert code == 0, out
    assert "user tower: user_tower.onnx" in out and "checksums verified" in out
    assert json.loads((tmp_path / "info.json").read_text())["schema_version"] == 1
    code, out = invoke("info", str(bundle), "--device", "auto", "--json", str(tmp_path / "info.json"))
    assert code == 0 and "auto requested, the graphs run on cpu" in out, out
    assert json.loads((tmp_path / "info.json").read_text())["device"]["providers"] == ["CPUExecutionProvider"]
    code, out = invoke("info", str(bundle), "--device", "cuda")
    assert code == 1 and "cannot be used" in out and "onnxruntime" in out, out

    result = runner.invoke(
        app, ["recommend", str(bundle), "--history", "P00001,P00002", "-k", "4", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    ids = [r["item_id"] for r in payload["recommendations"]]
    assert len(ids) == 4 and not {"P00001", "P00002"} & set(ids)
    assert payload["device"] == "cpu"

    code, out = invoke("recommend", str(bundle), "--text", "camping tent", "-k", "3")
    assert code == 0 and "top 3 (cpu)" in out
    old = runner.invoke(
        app, ["recommend", str(bundle), "--text", "camping tent", "-k", "3", "--format", "json"]
    )
    assert old.exit_code == 0 and "deprecated: use --json -" in old.stderr, old.output
    assert [r["item_id"] for r in json.loads(old.stdout)["recommendations"]] == [
        r["item_id"]
        for r in json.loads(
            runner.invoke(
                app, ["recommend", str(bundle), "--text", "camping tent", "-k", "3", "--json", "-"]
            ).stdout
        )["recommendations"]
    ]

    code, out = invoke("export", str(ckpt), "--out", str(bundle))
    assert code == 1 and "already exists" in out


def test_the_default_model_is_the_sequence_kind_with_two_spaces(
    small_data: Path, tiny_encoder: Path, tmp_path: Path
) -> None:
    ckpt, bundle = tmp_path / "ck", tmp_path / "b"
    code, out = invoke("train", "--data", str(small_data), "--out", str(ckpt), "--encoder", str(tiny_encoder),
                       "--epochs", "2", "--item-max-length", "24", "--whiten", "auto")  # fmt: skip
    assert code == 0, out
    # Whitening, set to auto, was tried both ways on validation, and train says what it chose.
    assert re.search(r"levers tried \(validation NDCG@10\): plain 0\.\d{4}; whitened 0\.\d{4}", out), out
    assert re.search(r"levers chosen: (plain|whitened)", out), out
    assert json.loads((ckpt / "recsys_checkpoint.json").read_text())["model"]["user_tower"] == "sequence"
    code, out = invoke("export", str(ckpt), "--out", str(bundle))
    assert code == 0, out
    assert "two spaces: trained" in out and "history + request:" in out, out
    code, out = invoke("info", str(bundle), "--json", str(tmp_path / "info.json"))
    assert code == 0 and "two spaces: trained" in out, out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["fusion"]["chosen_on"]["split"] == info["seen"]["chosen_on"]["split"] == "validation"
    assert info["schema_version"] == (
        3 if max(info["seen"]["penalty"], info["seen"]["with_request"]) > 0 else 2
    )
    assert "history items allowed back (--include-seen) lose" in out and "  history + request: " in out, out
    code, out = invoke("export", str(ckpt), "--out", str(tmp_path / "one"), "--no-text-space")
    assert code == 0 and "two spaces" not in out, out
    code, out = invoke(
        "recommend", str(bundle), "--history", "P00001,P00002", "--text", "camping tent", "-k", "3"
    )
    assert code == 0 and "top 3 (cpu)" in out, out


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["recommend", "{bundle}"], 2, "give --history"),
        (["recommend", "{bundle}", "--history", "NOPE"], 1, "not in the catalogue"),
        (["recommend", "{bundle}", "--text", "x", "-k", "100000"], 1, "larger than the catalogue"),
        (["recommend", "{missing}", "--text", "x"], 1, "no bundle directory"),
        (["info", "{missing}"], 1, "no bundle directory"),
        (["train", "--data", "{missing}", "--out", "{missing}"], 1, "no such folder"),
        (["export", "{missing}", "--out", "{missing}2"], 1, "not a recsys-infer checkpoint"),
        (["recommend", "{bundle}", "--text", "x", "--device", "gpu"], 1, "unknown device 'gpu'"),
        # A quality gate that refuses (no drop allowed at all) exits 3, apart from errors (1).
        (
            [
                "quantize",
                "{bundle}",
                "--out",
                "{missing}",
                "--mode",
                "static",
                "--calibration-size",
                "8",
                "--max-overlap-drop",
                "0",
            ],
            3,
            "No bundle was written",
        ),
    ],
)
def test_errors_are_one_clear_line(
    tiny_bundle: Path, tmp_path: Path, args: list[str], code: int, fragment: str
) -> None:
    filled = [a.format(bundle=tiny_bundle, missing=tmp_path / "missing") for a in args]
    exit_code, out = invoke(*filled)
    assert exit_code == code, out
    assert fragment in out
    assert "Traceback" not in out


def test_quickstart_runs_the_whole_path(tiny_encoder: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "qs"
    code, out = invoke(
        "quickstart",
        "--out",
        str(out_dir),
        "--encoder",
        str(tiny_encoder),
        "--max-steps",
        "2",
        "--json",
        str(tmp_path / "qs.json"),
    )
    assert code == 0, out
    report = json.loads((tmp_path / "qs.json").read_text())
    assert set(report["stages_seconds"]) == {
        "load data",
        "train",
        "export + parity + index",
        "load engine",
        "recommend",
    }
    assert len(report["users"]) == 3
    for user in report["users"]:
        recommended = [r["item_id"] for r in user["recommendations"]]
        assert len(recommended) == 5 and not set(recommended) & set(user["history"])
        mixed = [r["item_id"] for r in user["with_request"]["recommendations"]]
        assert user["with_request"]["text"] and len(mixed) == 5 and not set(mixed) & set(user["history"])
    assert len(report["request"]["recommendations"]) == 5
    assert report["train"]["stopped_by"] == "max_steps" and report["train"]["steps"] == 2
    assert "stage timings" in out and "held-out next item" in out and "the same history with" in out
    from recsys_infer import Engine

    assert len(Engine.load(out_dir / "bundle", device="cpu").recommend(text="tent", k=2)) == 2
    # Running it again replaces its own outputs.
    code, out = invoke(
        "quickstart", "--out", str(out_dir), "--encoder", str(tiny_encoder), "--max-steps", "1"
    )
    assert code == 0, out


def test_help_lists_every_command() -> None:
    code, out = invoke("--help")
    assert code == 0
    for command in ("quickstart", "train", "export", "info", "recommend", "sample-data"):
        assert command in out


def _commands() -> dict[str, Any]:
    import typer.main

    return typer.main.get_command(app).commands  # type: ignore[attr-defined,no-any-return]


def _options(command: Any) -> list[Any]:
    from typer.core import TyperOption

    return [p for p in command.params if isinstance(p, TyperOption) and p.expose_value]


def test_every_option_is_documented_and_renders() -> None:
    """Walks every command: each option has help and shows its default, no help holds [markup]
    Rich would swallow, and one concept has one name (no --minutes beside --max-minutes)."""
    names: set[str] = set()
    for name, command in _commands().items():
        assert command.help, f"{name} has no help"
        for param in _options(command):
            where = f"{name} {param.opts[0]}"
            assert param.help, f"{where} has no help"
            assert not re.search(r"(?<!\\)\[[a-z_]+\]", param.help), f"{where}: {param.help}"
            if not param.required and not param.help.startswith("Deprecated"):
                shown = param.show_default
                assert shown is not False and (param.default is not None or isinstance(shown, str)), (
                    f"{where} shows no default"
                )
                spelt = re.search(r"\(default[):]|default: ", param.help, re.IGNORECASE)
                assert not spelt, f"{where} spells its default out in its help"
            names.update(param.opts + param.secondary_opts)
    seconds = {"--minutes": "--max-minutes", "--steps": "--max-steps", "--lr": "--learning-rate",
               "--no-spin": "--spin never", "--quiet-bars": "--quiet"}  # fmt: skip
    for second, first in seconds.items():
        assert second not in names, f"{second} is a second name for {first}"
    tower = next(p for p in _commands()["quantize"].params if p.name == "tower")
    assert tower.default is None and "user for --mode auto" in str(tower.show_default)


def test_one_concept_has_one_default() -> None:
    """--device, --exclude-seen and --spin mean the same in every command that takes them."""
    from recsys_infer.cli.common import DEFAULT_DEVICE

    seen: dict[str, set[str]] = {}
    for name, command in _commands().items():
        for param in _options(command):
            if param.name in ("device", "exclude_seen", "spin") and name != "info":
                shown = param.show_default if isinstance(param.show_default, str) else param.default
                seen.setdefault(param.name, set()).add(str(shown))
    assert seen["device"] == {DEFAULT_DEVICE}, seen
    assert seen["exclude_seen"] == {"True"}, seen
    assert len(seen["spin"]) == 2, seen  # bench's run, serve's always: one type, the same three values
    spins = [
        {str(c) for c in p.type_descriptor.choices}
        for c in ("serve", "bench")
        for p in _options(_commands()[c])
        if p.name == "spin"
    ]
    assert spins[0] == spins[1] == {"always", "run", "never"}, spins


def test_shown_defaults_are_the_ones_in_force() -> None:
    """train's and serve's options are None until given (a recipe or the environment may set
    them), so their help shows the default of TrainConfig or ServeSettings: these must agree."""
    from dataclasses import fields

    from recsys_infer.serve import ServeSettings
    from recsys_infer.toolchain.train.loop import KIND_DEFAULTS, TrainConfig

    train = {p.name: p.show_default for p in _options(_commands()["train"])}
    for f in fields(TrainConfig):
        if f.name not in train:
            continue
        by_kind = [KIND_DEFAULTS[kind].get(f.name) for kind in ("sequence", "text")]  # type: ignore[index]
        if by_kind[0] is not None and by_kind[0] != "native":
            assert train[f.name] == f"sequence {by_kind[0]}, text {by_kind[1]}", (f.name, train[f.name])
        elif isinstance(f.default, bool):
            assert train[f.name] in ({"on", "off"} if f.name != "shared_towers" else {"separate"}), f.name
            assert (train[f.name] == "on") == f.default or f.name == "shared_towers"
        elif isinstance(f.default, int | float | str):
            assert train[f.name] == str(f.default), (f.name, train[f.name], f.default)
    serve = {p.name: p.show_default for p in _options(_commands()["serve"])}
    defaults = ServeSettings()
    for f in fields(ServeSettings):
        if f.name in serve and f.name not in ("provider_options", "openvino_precision"):
            value = getattr(defaults, f.name)
            expected = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
            if isinstance(value, bool):
                expected = f"{'' if value else 'no-'}{f.name.replace('_', '-')}"
            assert serve[f.name] == expected, (f.name, serve[f.name], expected)


COMMANDS = ["quickstart", "train", "export", "optimize", "quantize", "prune", "build", "evaluate", "bench",
            "info", "recommend", "index", "serve", "convert", "push", "sample-data"]  # fmt: skip


@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_a_screen_and_shows_no_python_types(name: str) -> None:
    assert set(COMMANDS) == set(_commands()), "COMMANDS should list every command"
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "100", "TERMINAL_WIDTH": "100"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 50, f"{name} --help is {len(lines)} lines at 100 columns"
    for placeholder in ("<bool>", "list[", "range>"):
        assert placeholder not in result.output, f"{name} --help shows {placeholder}"
    if "--help-all" in result.output:
        full = CliRunner().invoke(app, [name, "--help-all"], env={"COLUMNS": "100"})
        assert full.exit_code == 0 and len(full.output.splitlines()) > len(lines), full.output
