"""The small vocabularies that describe a tower, an index and a device.

They are ``StrEnum``s so that they read and write as plain strings in manifests and on the
command line.
"""

from __future__ import annotations

from enum import StrEnum


class Pooling(StrEnum):
    """How token vectors become one text vector."""

    MEAN = "mean"
    CLS = "cls"


class Precision(StrEnum):
    """Numeric precision of a tower's ONNX graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Device(StrEnum):
    """Where the engine runs its graphs. ``AUTO`` picks CUDA when it really works, else CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Space(StrEnum):
    """The similarity an index ranks by. Towers emit unit vectors, so inner product is cosine."""

    IP = "ip"
    COSINE = "cosine"
    L2 = "l2"


class UserTowerKind(StrEnum):
    """What the user tower reads.

    ``TEXT``: the request and the history written as text, through a language model.
    ``SEQUENCE``: the history's item vectors, through a small causal transformer; a free-text
    request goes through the item tower's text graph (the bundle's ``request`` tower).
    """

    TEXT = "text"
    SEQUENCE = "sequence"
