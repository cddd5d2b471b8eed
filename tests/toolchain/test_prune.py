"""prune on the tiny model: physically smaller, importance that means something, distillation,
export against the unpruned reference, and the fidelity gate."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from recsys_infer import Engine
from recsys_infer.errors import CheckpointError, ExportError, FidelityError
from recsys_infer.runtime.bundle import read_manifest
from recsys_infer.runtime.schema import encode
from recsys_infer.toolchain.export.bundle import export_bundle
from recsys_infer.toolchain.prune.pruning import PruneConfig, prune_checkpoint
from recsys_infer.toolchain.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def pruned(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "ckpt"
    config = PruneConfig(ratio=0.5, distill_steps=4, batch_size=8)
    prune_checkpoint(tiny_checkpoint, out, config, data="sample", progress=False)
    return out


def test_pruned_checkpoint_is_physically_smaller(tiny_checkpoint: Path, pruned: Path) -> None:
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(pruned)
    for name in ("user", "item"):
        old = getattr(before.model, name).encoder
        new = getattr(after.model, name).encoder
        assert [layer.attention.self.num_attention_heads for layer in new.encoder.layer] == [1, 1]
        assert new.config.intermediate_size == old.config.intermediate_size // 2 == 32
        assert new.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
        assert sum(p.numel() for p in new.parameters()) < sum(p.numel() for p in old.parameters())
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*.safetensors"))  # noqa: E731
    assert size(pruned) < size(tiny_checkpoint)
    report = json.loads((pruned / "recsys_checkpoint.json").read_text())["pruning"]
    assert report["config"]["ratio"] == 0.5
    assert all(len(t["distill_losses"]) == 4 for t in report["towers"])


def test_importance_removes_a_dead_head_first(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Zero one head's value projection in every layer: it contributes nothing, so it must go."""
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "dead-head"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights_file = ckpt / "user_encoder" / "model.safetensors"
    weights = load_file(str(weights_file))
    head_dim = 16  # hidden 32, 2 heads
    for layer in range(2):
        for part in ("weight", "bias"):
            key = f"encoder.layer.{layer}.attention.self.value.{part}"
            weights[key] = weights[key].clone()
            weights[key][head_dim:] = 0.0  # head 1 reads nothing
    save_file(weights, str(weights_file))
    out = tmp_path / "pruned"
    prune_checkpoint(ckpt, out, PruneConfig(ratio=0.5, towers="user"), data="sample", progress=False)
    encoder = load_checkpoint(out).model.user.encoder
    assert {int(k): v for k, v in encoder.config.pruned_heads.items()} == {0: [1], 1: [1]}
    # And the kept head's value weights are the original head 0's, not the dead ones.
    kept = encoder.encoder.layer[0].attention.self.value.weight
    assert torch.count_nonzero(kept) == kept.numel()


def test_drop_layers(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "shallow"
    result = prune_checkpoint(
        tiny_checkpoint, out, PruneConfig(ratio=0.0, layers=1, towers="user"), data="sample", progress=False
    )
    (report,) = result.towers
    assert report.layers_before == 2 and report.layers_after == 1 and len(report.dropped_layers) == 1
    assert load_checkpoint(out).model.user.encoder.config.num_hidden_layers == 1


def test_pruned_export_is_measured_against_the_reference(
    pruned: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="--reference"):
        export_bundle(pruned, tmp_path / "unmeasured", progress=False)
    assert not (tmp_path / "unmeasured").exists()
    result = export_bundle(pruned, tmp_path / "bundle", reference=tiny_bundle, progress=False)
    manifest = encode(read_manifest(tmp_path / "bundle"))
    assert manifest["compression"][0]["step"] == "prune"
    assert manifest["reference"]["bundle"] == str(tiny_bundle.resolve())
    assert result.fidelity is not None and 0 <= result.fidelity["overlap@10"] <= 1
    assert manifest["fidelity"]["overlap@10"] == result.fidelity["overlap@10"]
    graph = lambda b: (b / read_manifest(b).user.file).stat().st_size  # noqa: E731
    assert graph(tmp_path / "bundle") < graph(tiny_bundle)
    engine = Engine.load(tmp_path / "bundle")
    assert len(engine.recommend(history=list(engine.item_ids[:2]), k=3)) == 3


def test_gate_refuses_an_absurd_ratio(tiny_checkpoint: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "absurd"
    prune_checkpoint(tiny_checkpoint, out, PruneConfig(ratio=0.9, layers=1), data="sample", progress=False)
    with pytest.raises(FidelityError, match="No bundle was written"):
        export_bundle(out, tmp_path / "bundle", reference=tiny_bundle, max_overlap_drop=0.01, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absurd"]


def test_bad_requests_are_refused(pruned: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="--data"):
        prune_checkpoint(
            tiny_checkpoint, tmp_path / "x", PruneConfig(ratio=0.5, distill_steps=2), progress=False
        )
    with pytest.raises(CheckpointError, match="pruned already"):
        prune_checkpoint(pruned, tmp_path / "y", PruneConfig(ratio=0.5), data="sample", progress=False)
    with pytest.raises(ValueError, match="ratio"):
        PruneConfig(ratio=1.0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_build_runs_a_whole_chain(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recsys_infer.cli import app

    recipe = tmp_path / "chain.toml"
    recipe.write_text(
        "[prune]\nratio = 0.5\ndistill_steps = 2\nbatch_size = 8\n"
        '[[steps]]\nkind = "optimize"\n'
        '[[steps]]\nkind = "quantize"\nmode = "dynamic"\ntower = "user"\n'
    )
    out = tmp_path / "final"
    args = ["build", str(recipe), "--checkpoint", str(tiny_checkpoint), "--data", "sample", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = encode(read_manifest(out))
    assert [s["step"] for s in manifest["compression"]] == ["prune", "optimize", "quantize"]
    assert manifest["reference"]["bundle"] == str((tmp_path / "final.work" / "bundle-0-export").resolve())
    assert manifest["towers"]["user"]["precision"] == "int8"
    assert len(Engine.load(out).recommend(history=list(Engine.load(out).item_ids[:2]), k=2)) == 2


def test_shipped_recipes_are_valid(tmp_path: Path) -> None:
    from recsys_infer.toolchain.build import check_recipe
    from recsys_infer.toolchain.export.recipe import packaged_recipes, read_recipe

    recipes = sorted(packaged_recipes().values())
    assert len(recipes) >= 3
    for path in recipes:
        check_recipe(read_recipe(path), str(path))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nkind = "quantise"\n')
    with pytest.raises(ExportError, match="optimize"):
        check_recipe(read_recipe(bad), str(bad))


def test_recipes_by_name_and_their_tables_and_keys_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys_infer.toolchain.export.recipe import read_recipe, train_config_from_recipe

    monkeypatch.chdir(tmp_path)  # packaged recipes are found from anywhere, not from the repository
    assert {"default", "int8", "blockwise", "auto", "pruned-int8"} <= set(packaged_recipes_names())
    assert train_config_from_recipe(read_recipe("default")).batch_size == 64
    with pytest.raises(ExportError, match="packaged ones are"):
        read_recipe("no-such-recipe")
    cases = {
        "[trian]\nepochs = 1\n": "unknown tables \\['trian'\\]",
        "[encoder]\nnmae = 'x'\n": "unknown \\[encoder\\] keys",
        "[gate]\nmax_drop = 0.1\n": "max_overlap_drop",
    }
    for text, message in cases.items():
        (tmp_path / "r.toml").write_text(text)
        with pytest.raises(ExportError, match=message):
            read_recipe(tmp_path / "r.toml")
    (tmp_path / "r.toml").write_text("[train]\nepoch = 3\n")
    with pytest.raises(ExportError, match=r"unknown \[train\] keys \['epoch'\]; it takes .*'epochs'"):
        train_config_from_recipe(read_recipe(tmp_path / "r.toml"))
    # A key spelt as its flag is (--batch-size, --learning-rate) reads as the underscored one.
    (tmp_path / "r.toml").write_text("[train]\nbatch-size = 16\nlearning_rate = 0.01\n")
    config = train_config_from_recipe(read_recipe(tmp_path / "r.toml"))
    assert (config.batch_size, config.learning_rate) == (16, 0.01)


def test_recipe_keys_are_named_as_the_flags_are() -> None:
    """Every train and prune option that a recipe table can also set has the field's name."""
    from dataclasses import fields

    import typer.main

    from recsys_infer.cli import app
    from recsys_infer.toolchain.prune.pruning import PruneConfig
    from recsys_infer.toolchain.train.loop import TrainConfig

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    not_settings = {"data", "out", "encoder", "revision", "recipe", "resume", "overwrite", "json_out",
                    "_help_all", "checkpoint", "teacher", "tower"}  # fmt: skip
    for command, config in (("train", TrainConfig), ("prune", PruneConfig)):
        options = {p.name for p in commands[command].params} - not_settings
        assert options <= {f.name for f in fields(config)}, (
            command,
            options - {f.name for f in fields(config)},
        )


def packaged_recipes_names() -> list[str]:
    from recsys_infer.toolchain.export.recipe import packaged_recipes

    return list(packaged_recipes())


def test_distillation_rate_warms_up_then_decays_to_zero() -> None:
    from recsys_infer.toolchain.prune.pruning import _warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = _warmup_cosine(optimizer, 100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.2)  # 1 of 5 warm-up steps
    assert max(rates) == pytest.approx(1.0) and rates.index(max(rates)) == 4
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert rates[-1] < 0.01
