"""Quantization-aware distillation: the fake int8 forward must be the int8 graph's arithmetic (closer
to ONNX Runtime's dynamic int8 than fp32 is), leave the weights where they were, and ``prune
--quant-aware`` (tests/test_sequence.py) distils a request tower through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tower_and_int8(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from transformers import AutoModel

    from recsys_infer.runtime.tokenizer import TextTokenizer
    from recsys_infer.toolchain.compress.graphs import dynamic_int8, optimize_graph
    from recsys_infer.toolchain.export.onnx_export import export_tower
    from recsys_infer.toolchain.train.model import TextTower

    folder = tmp_path_factory.mktemp("fq")
    torch.manual_seed(1)
    encoder = AutoModel.from_pretrained(tiny_encoder, attn_implementation="eager")
    # A random tiny BERT has no outliers; scale some hidden channels up as trained ones have.
    with torch.no_grad():
        for layer in encoder.encoder.layer:
            layer.output.LayerNorm.weight[:3] *= 8
    tower = TextTower(encoder).eval()
    tok = TextTokenizer.from_file(tiny_encoder / "tokenizer.json", max_length=32, pad_token="[PAD]")
    export_tower(tower, folder / "fp32.onnx", 17, tok)
    optimize_graph(folder / "fp32.onnx", folder / "opt.onnx")
    dynamic_int8(folder / "opt.onnx", folder / "int8.onnx", ops=["MatMul", "Attention"], exclude=[])
    return tower, tok, folder / "int8.onnx"


def _texts() -> list[str]:
    from recsys_infer.data import sample_dataset

    return [item.text for item in list(sample_dataset().catalog)[:40]]


def test_fake_int8_tracks_onnx_runtime_dynamic_int8(tower_and_int8) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from recsys_infer.toolchain.prune.fake_quant import fake_quantized, tokens

    tower, tok, int8 = tower_and_int8
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    fp32_err, fq_err = [], []
    for text in _texts():  # batch 1, as a request runs
        f = tok([text])
        graph = session.run(None, {"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]})[0]
        ids, mask = torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])
        with torch.no_grad():
            plain = tower(ids, mask).numpy()
            with fake_quantized(tower.encoder), tokens(mask):
                fake = tower(ids, mask).numpy()
        fp32_err.append(np.abs(plain - graph).max())
        fq_err.append(np.abs(fake - graph).max())
    # Measured: the emulation agrees with the graph to float rounding (about 1e-7, where fp32 is
    # 1e-4 away); a tenth leaves room for another CPU's kernels.
    assert np.median(fq_err) < 0.1 * np.median(fp32_err), (np.median(fq_err), np.median(fp32_err))


def test_fake_quantized_puts_the_layers_back(tower_and_int8) -> None:  # type: ignore[no-untyped-def]
    from recsys_infer.toolchain.prune.fake_quant import FakeQuantLinear, fake_quantized

    tower = tower_and_int8[0]
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    with fake_quantized(tower.encoder):
        assert sum(isinstance(m, FakeQuantLinear) for m in tower.modules()) == 2 * 6  # 2 layers
    assert not any(isinstance(m, FakeQuantLinear) for m in tower.modules())
    after = tower.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
