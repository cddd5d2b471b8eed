"""Resumable training state: ``<checkpoint>.partial/`` beside the checkpoint being trained.

Saved at regular points while training runs (atomically: a crash mid-save keeps the previous
state), removed when the final checkpoint is written. ``train --resume`` continues from it and
refuses a state made with other settings or data. No pickle: tensors go to safetensors, the
rest to JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recsys_infer.errors import CheckpointError
from recsys_infer.runtime.bundle import atomic_directory

TENSORS = "state.safetensors"
META = "state.json"


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@dataclass
class SavedState:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under ``prefix.`` with the prefix removed."""
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def save_state(
    out: Path,
    *,
    fingerprint: str,
    progress: dict[str, Any],
    modules: dict[str, dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
) -> None:
    """Everything needed to continue exactly: weights, optimiser moments, RNG states, counters."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, state in modules.items():
        tensors.update({f"{prefix}.{k}": v.detach().contiguous().clone() for k, v in state.items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, values in opt["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "fingerprint": fingerprint,
        "progress": progress,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict() if scheduler else None,  # numbers; function lambdas are None
        "python_random": _to_json(random.getstate()),
    }
    with atomic_directory(partial_dir(out), overwrite=True, marker=META) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps(meta), encoding="utf-8")


def load_state(out: Path, *, fingerprint: str) -> SavedState:
    folder = partial_dir(out)
    if not (folder / META).is_file() or not (folder / TENSORS).is_file():
        raise CheckpointError(
            f"nothing to resume: {folder} holds no saved training state; run without --resume"
        )
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{folder} was saved by a run with other settings or data; resume with the same command "
            "and data, or delete it to start over"
        )
    return SavedState(load_file(str(folder / TENSORS)), meta)


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: SavedState) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in saved.group("optim").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in saved.meta["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved.meta["optimizer"]["param_groups"]})


def restore_rng(saved: SavedState) -> None:
    torch.set_rng_state(saved.tensors["rng.torch"])
    random.setstate(_from_json(saved.meta["python_random"]))


def remove_state(out: Path) -> None:
    import shutil

    shutil.rmtree(partial_dir(out), ignore_errors=True)


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value
