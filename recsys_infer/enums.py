"""The small vocabularies that describe a tower, an index and a device.

They are ``StrEnum``s so that they read and write as plain strings in manifests and on the
command line.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import ConfigError


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
    """Where the engine runs its graphs. ``AUTO`` picks CUDA when it really works, else CPU.
    ``TENSORRT`` is ONNX Runtime's TensorRT provider on an NVIDIA GPU (CUDA for what it cannot
    take). On the command line and in ``Engine.load`` a GPU may carry an index: ``cuda:1``."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class Backend(StrEnum):
    """The runtime that runs a bundle's ONNX graphs on the CPU. ``ONNXRUNTIME`` always;
    ``OPENVINO`` (the ``openvino`` extra) reads the same ``.onnx`` files and, on CPUs with bf16
    (AMX, AVX-512 BF16), runs them in bf16 by default; ``AUTO`` times both on the bundle's probe
    when the engine loads and takes, per tower, the faster one whose results agree with ONNX
    Runtime's (:mod:`recsys_infer.runtime.backends`)."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"

    @classmethod
    def of(cls, value: str) -> Backend:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(b.value for b in cls)
            raise ConfigError(f"backend must be one of {choices}, got {value!r:.40}") from None


class Spin(StrEnum):
    """When ONNX Runtime's intra-op threads busy-wait for work instead of sleeping.

    ``ALWAYS`` (ONNX Runtime's default): between a run's operators and for a while after each
    run, so an idle session keeps taking CPU. ``RUN``: between a run's operators only; the
    threads stop when the run returns (ONNX Runtime's ``session.force_spinning_stop``). ``NEVER``:
    they sleep whenever they wait, and each operator that splits its work wakes them again (a
    few microseconds each, which a 7-token request pays a hundred times). ``True`` and
    ``False`` stand for ``ALWAYS`` and ``NEVER``."""

    ALWAYS = "always"
    RUN = "run"
    NEVER = "never"

    @classmethod
    def of(cls, value: bool | str) -> Spin:
        if isinstance(value, bool):
            return cls.ALWAYS if value else cls.NEVER
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ConfigError(f"spin must be one of {choices} (or a bool), got {value!r}") from None


class Space(StrEnum):
    """The similarity an index ranks by. Towers emit unit vectors, so inner product is cosine."""

    IP = "ip"
    COSINE = "cosine"
    L2 = "l2"


class Consistency(StrEnum):
    """What a read of a Milvus collection waits for. An engine always sees its own edits: its
    first read after one waits until the server has applied it.

    ``SESSION``: that, and nothing more, so another process's edits show once the server has
    applied them (within a few hundred milliseconds on a default Milvus server). ``STRONG``:
    every read waits for every edit made anywhere before it, which on a Milvus server means
    waiting for its next time tick (0.2 to 0.4 s a read measured, against 4 ms). Milvus Lite
    applies every edit at once, so there both read the same."""

    SESSION = "session"
    STRONG = "strong"


class VectorStorage(StrEnum):
    """How a Milvus collection's index holds the item vectors. ``FP32``: as they are (Milvus's
    ``HNSW``). ``SQ8``: each component as one byte, a quarter of the memory, ranked with a small
    loss of recall (Milvus's ``HNSW_SQ``: Milvus 2.6 and later, and Milvus Lite)."""

    FP32 = "fp32"
    SQ8 = "sq8"


class UserTowerKind(StrEnum):
    """What the user tower reads.

    ``TEXT``: the request and the history written as text, through a language model.
    ``SEQUENCE``: the history's item vectors, through a small causal transformer; a free-text
    request goes through the item tower's text graph (the bundle's ``request`` tower).
    """

    TEXT = "text"
    SEQUENCE = "sequence"


class Lever(StrEnum):
    """A training lever's setting: ``on``, ``off``, or ``auto``, chosen by trials on the
    validation split of the data being trained (see ``recsys_infer.toolchain.train.levers``)."""

    ON = "on"
    OFF = "off"
    AUTO = "auto"


class QuantMode(StrEnum):
    """``dynamic``: int8 weights, activations quantized at run time (CPUs with VNNI).
    ``static``: int8 weights and activations, QDQ, scales calibrated on real texts.
    ``blockwise``: int8 weights in blocks (ONNX Runtime's MatMulNBits), multiplied in int8 with
    every block of activations scaled on its own: far closer to fp32 than ``dynamic``, less fast.
    ``fp16``: half-precision weights and activations, for the CUDA provider.
    ``auto``: the request path's text graph in mixed precision, dynamic int8 where the probe's
    requests allow it and blockwise int8 (where this CPU runs it faster) or fp32 elsewhere, chosen
    to hold a request overlap@10 target."""

    DYNAMIC = "dynamic"
    STATIC = "static"
    BLOCKWISE = "blockwise"
    FP16 = "fp16"
    AUTO = "auto"


class TowerChoice(StrEnum):
    """Which side a step compresses. ``user`` covers the user tower and the request tower."""

    USER = "user"
    ITEM = "item"
    BOTH = "both"


class Calibration(StrEnum):
    """How static quantization picks activation ranges (ONNX Runtime's calibrators)."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
