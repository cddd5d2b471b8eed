"""Quantization-aware distillation: an encoder's linear layers computed as ONNX Runtime's dynamic
int8 will compute them after export, with gradients passed straight through the rounding.

ONNX Runtime's dynamic int8 (``quantize --mode dynamic``) gives each weight matrix one symmetric
int8 scale per output channel, and quantizes each activation at run time to uint8 with one scale
and zero point for the whole tensor; at batch 1 (a request) the tensor is one text's tokens. The
wrapper below rounds both the same way in the forward pass, so distillation can move the weights
to where rounding costs the retrieval least, and passes the gradient through the rounding
unchanged (the straight-through estimator). It wraps the linear layers of the transformer blocks:
the products dynamic int8 quantizes (the Q/K/V projections become the fused attention's, the
others MatMuls); embeddings, layer norms and the attention's own products stay fp32, as they do in
the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _Tokens:
    """The attention mask of the batch being run: an activation's range is taken over real tokens,
    as a batch-1 request (no padding) gives it to ONNX Runtime."""

    mask: torch.Tensor | None = None


def _fake_quant_activation(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if x.dim() == 3 and mask is not None and mask.shape == x.shape[:2]:
        real = mask.unsqueeze(-1).bool()
        big = torch.finfo(x.dtype).max
        low = torch.where(real, x, torch.full_like(x, big)).amin(dim=(1, 2), keepdim=True)
        high = torch.where(real, x, torch.full_like(x, -big)).amax(dim=(1, 2), keepdim=True)
    else:
        dims = tuple(range(1, x.dim()))
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    low, high = low.clamp(max=0), high.clamp(min=0)  # zero is exactly representable
    scale = ((high - low) / 255).clamp(min=1e-8)
    zero = torch.round(-low / scale).clamp(0, 255)
    rounded = ((torch.round(x / scale) + zero).clamp(0, 255) - zero) * scale
    return x + (rounded - x).detach()


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-8)
    rounded = torch.round(w / scale).clamp(-127, 127) * scale
    return w + (rounded - w).detach()


class FakeQuantLinear(nn.Module):
    """``linear`` with its input and weight rounded as dynamic int8 rounds them; fp32 arithmetic."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # int8 products sum exactly: fp32 here
            x = _fake_quant_activation(x.float(), _Tokens.mask)
            return F.linear(x, _fake_quant_weight(self.linear.weight.float()), self.linear.bias)


def _block_linears(encoder: Any) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for block in encoder.encoder.layer:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, name, child))
    return found


@contextmanager
def fake_quantized(encoder: Any) -> Iterator[None]:
    """Within the block, ``encoder``'s transformer blocks compute their linear layers in fake
    int8; the original modules (which hold the trained weights) are put back afterwards."""
    linears = _block_linears(encoder)
    for parent, name, linear in linears:
        setattr(parent, name, FakeQuantLinear(linear))
    try:
        yield
    finally:
        for parent, name, linear in linears:
            setattr(parent, name, linear)


@contextmanager
def tokens(mask: torch.Tensor) -> Iterator[None]:
    """Sets the attention mask the fake-quantized activations take their ranges over."""
    previous, _Tokens.mask = _Tokens.mask, mask
    try:
        yield
    finally:
        _Tokens.mask = previous
