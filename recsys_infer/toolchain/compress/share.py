"""Weights two graphs of a bundle hold alike, stored once.

A step that compresses one side of a bundle (``quantize --tower user``) gives that side a graph
of its own, and the tensors it leaves as they were (the word-embedding table above all, which
int8 quantization keeps in fp32: 47 MB of MiniLM's 90) would be stored twice, once in each
graph. :func:`share_weights` moves every large tensor that two or more graph files hold
byte for byte into one file, :data:`SHARED`, which each graph then reads as ONNX external
data. ONNX Runtime (and every ONNX tool) loads such a graph from its path as it loads any; the
file is one of the bundle's, listed and checksummed in the manifest like the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import set_external_data

#: The file of tensors shared between a bundle's graphs.
SHARED = "shared_weights.bin"
#: Tensors smaller than this stay inside their graph: sharing them saves little.
MIN_BYTES = 1 << 20
_ALIGN = 4096  # each tensor starts on a page, as ONNX Runtime prefers for mapping it


def share_weights(folder: Path, files: Iterable[str], *, min_bytes: int = MIN_BYTES) -> dict[str, Any]:
    """Rewrite the graph ``files`` in ``folder`` so that the tensors of ``min_bytes`` or more
    that two or more of them hold alike are stored once, in ``folder/SHARED`` (removed when
    nothing is shared). Returns what was shared: the file, the tensors and the bytes saved."""
    names = sorted(set(files))
    models = {name: onnx.load(str(folder / name)) for name in names}  # with any external data
    holders: dict[str, list[tuple[str, onnx.TensorProto]]] = {}
    for name, model in models.items():
        for tensor in model.graph.initializer:
            if len(tensor.raw_data) >= min_bytes:
                holders.setdefault(_identity(tensor), []).append((name, tensor))
    shared = {key: found for key, found in holders.items() if len({name for name, _ in found}) > 1}
    (folder / SHARED).unlink(missing_ok=True)  # every tensor is in memory now
    saved = 0
    if shared:
        with (folder / SHARED).open("wb") as out:
            for found in shared.values():
                data = found[0][1].raw_data
                out.write(b"\0" * (-out.tell() % _ALIGN))
                offset = out.tell()
                out.write(data)
                saved += len(data) * (len(found) - 1)
                for _, tensor in found:
                    set_external_data(tensor, SHARED, offset=offset, length=len(data))
                    tensor.data_location = onnx.TensorProto.EXTERNAL
                    tensor.ClearField("raw_data")
    for name, model in models.items():
        onnx.save(model, str(folder / name))
    return {"file": SHARED if shared else None, "tensors": len(shared), "bytes_saved": saved}


def _identity(tensor: onnx.TensorProto) -> str:
    shape = ",".join(str(d) for d in tensor.dims)
    return f"{tensor.data_type}:{shape}:{hashlib.sha256(tensor.raw_data).hexdigest()}"
