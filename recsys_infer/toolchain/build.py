"""``recsys-infer build RECIPE``: one recipe, the whole chain from data (or a checkpoint) to a
compressed bundle.

A recipe is a TOML file, or the name of one that ships in ``recsys_infer/recipes`` (``default``,
``int8``, ``blockwise``, ``auto``, ``pruned-int8``). Its tables, each optional except where said
(any other table or key is refused, naming the valid ones):

- ``[encoder]`` and ``[train]``: how to train (as ``train --recipe``); skipped when the build is
  given a trained checkpoint.
- ``[export]`` and ``[index]``: how to export (as ``export --recipe``).
- ``[prune]``: ``ratio``, ``layers``, ``tower``, ``distill_steps``, ``batch_size``,
  ``learning_rate``. The unpruned model is exported first: it is the reference every later step
  is measured against.
- ``[[steps]]``: after export, in order. ``kind = "optimize"`` or ``kind = "quantize"`` with the
  options of those commands (``mode``, ``tower``, ``keep_fp32``, ``calibration``,
  ``calibration_size``, ``per_channel``, ``reindex``, ``target_overlap``, ``smooth``).
- ``[gate]``: ``max_overlap_drop``, applied to every step.

Intermediate checkpoints and bundles go to a work folder (default ``<out>.work/``), so a failed
build can be inspected; the final bundle is moved to ``out`` only when every step passed.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_infer.errors import ExportError, OutputExistsError
from recsys_infer.toolchain.compress.steps import QuantizeConfig, optimize_bundle, quantize_bundle
from recsys_infer.toolchain.export import export_bundle, export_config_from_recipe, read_recipe
from recsys_infer.toolchain.export.recipe import encoder_from_recipe, train_config_from_recipe

logger = logging.getLogger(__name__)

_STEP_KEYS = {
    "optimize": {"kind", "tower"},
    "quantize": {
        "kind",
        "mode",
        "tower",
        "keep_fp32",
        "block_size",
        "calibration",
        "calibration_size",
        "per_channel",
        "reindex",
        "target_overlap",
        "smooth",
    },
}
_PRUNE_KEYS = {"ratio", "layers", "tower", "distill_steps", "batch_size", "learning_rate"}


@dataclass
class BuildResult:
    bundle: Path
    stages: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "stages": self.stages}


def check_recipe(recipe: dict[str, Any], source: str) -> None:
    """Refuse unknown step kinds and keys before any long work starts."""
    for i, step in enumerate(recipe.get("steps", []), 1):
        kind = step.get("kind")
        if kind not in _STEP_KEYS:
            raise ExportError(f"{source}: step {i} has kind {kind!r}; use 'optimize' or 'quantize'")
        unknown = set(step) - _STEP_KEYS[kind]
        if unknown:
            raise ExportError(f"{source}: step {i} ({kind}) has unknown keys {sorted(unknown)}")
    unknown = set(recipe.get("prune", {})) - _PRUNE_KEYS
    if unknown:
        raise ExportError(
            f"{source}: [prune] has unknown keys {sorted(unknown)}; it takes {sorted(_PRUNE_KEYS)}"
        )
    export_config_from_recipe(recipe, source=source)


def run_recipe(
    recipe_path: Path,
    out: Path,
    *,
    data: str | None = None,
    checkpoint: Path | None = None,
    work: Path | None = None,
    overwrite: bool = False,
    max_steps: int | None = None,
    max_minutes: float | None = None,
) -> BuildResult:
    """Run ``recipe_path`` end to end; see the module docstring. ``max_steps`` and
    ``max_minutes`` bound its training, over the recipe's ``[train]``."""
    recipe = read_recipe(recipe_path)
    source = str(recipe_path)
    check_recipe(recipe, source)
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} already exists; choose another --out, or pass --overwrite to replace it"
        )
    work = Path(work) if work else out.parent / f"{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    result = BuildResult(out)
    gate = recipe.get("gate", {}).get("max_overlap_drop")

    if checkpoint is None:
        budget = {"max_steps": max_steps, "max_minutes": max_minutes}
        checkpoint = _train(recipe, data, work / "checkpoint", result, budget)
    export_config = export_config_from_recipe(recipe, source=source)
    current = work / "bundle-0-export"
    export_bundle(checkpoint, current, config=export_config, overwrite=True)
    result.stages.append({"stage": "export", "bundle": str(current)})
    if "prune" in recipe:
        current = _prune(recipe, checkpoint, current, work, data, gate, export_config, result)
    for i, step in enumerate(recipe.get("steps", []), 2):
        target = work / f"bundle-{i}-{step['kind']}"
        done = _compress(step, current, target, gate)
        result.stages.append({"stage": step["kind"], "bundle": str(target), "fidelity": done.fidelity})
        current = target

    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(current, out.parent / f".{out.name}.tmp")
    os.replace(out.parent / f".{out.name}.tmp", out)
    return result


def _train(
    recipe: dict[str, Any], data: str | None, checkpoint: Path, result: BuildResult, budget: dict[str, Any]
) -> Path:
    """The recipe's ``[train]`` stage, on ``data``, within ``budget`` (None: the recipe's)."""
    if not data:
        raise ExportError("build needs --data to train on, or --checkpoint with a trained model")
    from recsys_infer.data import load_dataset
    from recsys_infer.toolchain.train.loop import train

    encoder, revision = encoder_from_recipe(recipe)
    trained = train(
        load_dataset(data),
        checkpoint,
        encoder=encoder,
        revision=revision,
        config=train_config_from_recipe(recipe).with_overrides(**budget),
        overwrite=True,
    )
    result.stages.append({"stage": "train", "checkpoint": str(checkpoint), "seconds": trained.seconds})
    return checkpoint


def _prune(
    recipe: dict[str, Any],
    checkpoint: Path,
    reference: Path,
    work: Path,
    data: str | None,
    gate: float | None,
    export_config: Any,
    result: BuildResult,
) -> Path:
    """The recipe's ``[prune]`` stage: the pruned checkpoint, exported against ``reference``."""
    from recsys_infer.toolchain.prune.pruning import PruneConfig, prune_checkpoint

    spec = dict(recipe["prune"])
    prune_config = PruneConfig(
        ratio=float(spec["ratio"]),
        layers=int(spec.get("layers", 0)),
        towers=spec.get("tower", "both"),
        distill_steps=int(spec.get("distill_steps", 0)),
        batch_size=int(spec.get("batch_size", 32)),
        learning_rate=float(spec.get("learning_rate", 1e-4)),
    )
    pruned_ckpt = work / "checkpoint-pruned"
    prune_checkpoint(checkpoint, pruned_ckpt, prune_config, data=data, overwrite=True)
    bundle = work / "bundle-1-pruned"
    exported = export_bundle(
        pruned_ckpt, bundle, config=export_config, overwrite=True, reference=reference, max_overlap_drop=gate
    )
    result.stages.append({"stage": "prune", "bundle": str(bundle), "fidelity": exported.fidelity})
    return bundle


def _compress(step: dict[str, Any], current: Path, target: Path, gate: float | None) -> Any:
    """One ``[[steps]]`` entry: ``optimize`` or ``quantize`` from ``current`` into ``target``."""
    options = {k: v for k, v in step.items() if k != "kind"}
    tower = options.pop("tower", "both")
    if step["kind"] == "optimize":
        return optimize_bundle(current, target, towers=tower, max_overlap_drop=gate, overwrite=True)
    if "keep_fp32" in options:
        options["keep_fp32"] = tuple(options["keep_fp32"])
    return quantize_bundle(
        current, target, QuantizeConfig(towers=tower, max_overlap_drop=gate, **options), overwrite=True
    )
