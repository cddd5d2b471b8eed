"""Bundles on the Hugging Face Hub, against a local stand-in for it (tests/hub_standin.py):
pushed verified, loaded back by hf:// name and revision, verified again; never a download for a
name that was not written as a Hub name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_infer import Engine
from recsys_infer.errors import BundleError, BundleIntegrityError, ConfigError
from recsys_infer.runtime import hub as hub_module
from tests.hub_standin import LocalHub, install


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalHub:
    return install(monkeypatch, tmp_path)


def test_a_pushed_bundle_loads_back_by_name_and_revision(local_hub: LocalHub, bundle_copy: Path) -> None:
    first = hub_module.push(bundle_copy, "acme/tiny-recs")
    assert first.repo == "acme/tiny-recs" and first.revision == "main" and len(first.commit) == 40
    local = Engine.load(bundle_copy, device="cpu")
    for revision in (None, "main", first.commit):
        remote = Engine.load("hf://acme/tiny-recs", device="cpu", revision=revision)
        assert remote.recommend(text="lamp", k=5) == local.recommend(text="lamp", k=5)
        assert len(remote) == len(local)
    card = (hub_module.cache_folder("acme/tiny-recs", None) / "README.md").read_text()
    assert card.startswith("---\nlicense:") and "library_name: recsys-infer" in card  # the card went up

    # A second bundle on a branch: the branch serves it, main still the first.
    edited = Engine.load(bundle_copy, device="cpu")
    edited.add_items(["hub-new"], ["a brass desk lamp"])
    edited.save(bundle_copy.parent / "edited")
    second = hub_module.push(bundle_copy.parent / "edited", "hf://acme/tiny-recs", revision="exp")
    assert second.commit != first.commit
    assert len(Engine.load("hf://acme/tiny-recs", device="cpu", revision="exp")) == len(local) + 1
    assert len(Engine.load("hf://acme/tiny-recs", device="cpu")) == len(local)


def test_a_download_is_verified_like_any_bundle(local_hub: LocalHub, bundle_copy: Path) -> None:
    pushed = hub_module.push(bundle_copy, "acme/tiny-recs")
    stored = local_hub.stored("acme/tiny-recs", pushed.commit) / "item_vectors.npy"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit on the Hub's side
    stored.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        Engine.load("hf://acme/tiny-recs", device="cpu")


def test_push_verifies_first_and_uploads_nothing_broken(local_hub: LocalHub, bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    target = bundle_copy / next(name for name in manifest["files"] if name.endswith(".onnx"))
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(BundleIntegrityError):
        hub_module.push(bundle_copy, "acme/broken")
    assert ("acme/broken", "main") not in local_hub.branches


def test_only_a_name_written_for_the_hub_is_downloaded(local_hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"manifest|no bundle"):
        Engine.load(tmp_path / "acme" / "tiny-recs", device="cpu")  # owner/name-shaped, but a path
    assert local_hub.downloads == []
    with pytest.raises(ConfigError, match="hf://OWNER/NAME"):
        Engine.load(tmp_path, device="cpu", revision="main")
    with pytest.raises(ConfigError, match="not a Hub bundle name"):
        Engine.load("hf://../../etc", device="cpu")
    with pytest.raises(BundleError, match="could not download the bundle acme/nothing at revision main"):
        Engine.load("hf://acme/nothing", device="cpu")


def test_cli_push_then_recommend_by_hub_name(local_hub: LocalHub, bundle_copy: Path) -> None:
    from typer.testing import CliRunner

    from recsys_infer.cli import app

    runner = CliRunner()
    pushed = runner.invoke(app, ["push", str(bundle_copy), "acme/tiny-recs", "--json", "-"])
    assert pushed.exit_code == 0, pushed.output
    commit = json.loads(pushed.stdout)["commit"]
    result = runner.invoke(
        app,
        [
            "recommend",
            "hf://acme/tiny-recs",
            "--revision",
            commit,
            "--text",
            "lamp",
            "-k",
            "3",
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    local = Engine.load(bundle_copy, device="cpu").recommend(text="lamp", k=3)
    assert [r["item_id"] for r in json.loads(result.stdout)["recommendations"]] == [r.item_id for r in local]
    info = runner.invoke(app, ["info", "hf://acme/tiny-recs", "--revision", commit])
    assert info.exit_code == 0 and "checksums verified" in info.output, info.output
