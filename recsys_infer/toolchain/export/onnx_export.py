"""PyTorch towers to ONNX graphs (the TorchScript exporter, which ONNX Runtime's fusions read),
with dynamic batch and length axes, checked as ONNX models.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from recsys_infer.runtime.tokenizer import TextTokenizer
from recsys_infer.toolchain.train.model import JoinedHead, SequenceTower, TextTower


def export_tower(tower: TextTower, path: Path, opset: int, tokenizer: TextTokenizer) -> None:
    # Two texts of different lengths, so the traced graph sees padding.
    example = tokenizer(["a short example", "a somewhat longer example text to trace the tower with"])
    ids = torch.from_numpy(example["input_ids"])
    mask = torch.from_numpy(example["attention_mask"])
    tower.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False): its graph is the one ONNX Runtime's
        # transformer optimiser can fuse (attention, layer norm, GELU).
        torch.onnx.export(
            tower,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    width = int(tower.encoder.config.hidden_size)
    _fix_width_and_check(path, 2 * width if isinstance(tower.head, JoinedHead) else width)


def _fix_width_and_check(path: Path, width: int) -> None:
    import onnx

    # The exporter names the output's second axis after an internal node; it is the fixed width.
    model = onnx.load(str(path))
    axis = model.graph.output[0].type.tensor_type.shape.dim[1]
    axis.Clear()
    axis.dim_value = width
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_sequence(tower: SequenceTower, path: Path, opset: int, dim: int) -> None:
    history = torch.nn.functional.normalize(torch.randn(2, 5, dim), dim=-1)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    tower.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (history, mask),
            str(path),
            input_names=["history", "history_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "history": {0: "batch", 1: "length"},
                "history_mask": {0: "batch", 1: "length"},
                "embedding": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    _fix_width_and_check(path, dim)
