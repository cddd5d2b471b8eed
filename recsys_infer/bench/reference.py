"""The subjects that need PyTorch: the uncompressed checkpoint (fp32 and bf16) and the
sentence-transformers peers.

The PyTorch reference is served by the runtime's own :class:`~recsys_infer.Engine`, composed
with PyTorch modules where a bundle has ONNX sessions and with exact search where a bundle has
HNSW, so that the reference and the bundles differ in exactly what compression and the index
change. bf16 casts the weights once (this CPU's AMX runs bf16 matrix products natively).
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from recsys_infer.enums import Device, Spin, UserTowerKind
from recsys_infer.errors import MissingDependencyError
from recsys_infer.runtime.encoder import Encoder
from recsys_infer.runtime.engine import Engine
from recsys_infer.runtime.index import ExactIndex
from recsys_infer.runtime.manifest import FusionSpec
from recsys_infer.runtime.providers import parse_device, session_options
from recsys_infer.runtime.store import LocalItems
from recsys_infer.runtime.tokenizer import TextTokenizer, length_batches
from recsys_infer.runtime.users import SequenceUserEncoder, TextUserEncoder, UserEncoder, add_offsets
from recsys_infer.toolchain.compress.graphs import quiet_quantizer
from recsys_infer.toolchain.train.checkpoint import CHECKPOINT_FILE, Checkpoint
from recsys_infer.toolchain.train.model import SequenceTower, TextTower

from .subjects import Subject, folder_bytes

logger = logging.getLogger(__name__)


class TorchTextEncoder:
    """A PyTorch text tower behind the runtime's :class:`Encoder` protocol (same tokenizer, same
    length-sorted batching as the ONNX encoder)."""

    def __init__(
        self,
        tower: TextTower,
        tokenizer: TextTokenizer,
        *,
        dim: int,
        dtype: torch.dtype,
        device: torch.device | None = None,
    ) -> None:
        self.tower = tower
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        self._dim = dim
        self.batch_size = 64

    @property
    def dim(self) -> int:
        return self._dim

    def run(self, features: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self.tower(
                torch.from_numpy(features["input_ids"]).to(self.device),
                torch.from_numpy(features["attention_mask"]).to(self.device),
            )
        return out.float().cpu().numpy()  # on a GPU, .cpu() also waits for the result

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for idx, features in length_batches(self.tokenizer, texts, self.batch_size):  # as bundles batch
            out[idx] = self.run(features)
        return out


class _Port:
    def __init__(self, name: str) -> None:
        self.name = name


class TorchSequenceSession:
    """The sequence tower answering the two calls :class:`SequenceUserEncoder` makes of an ONNX
    Runtime session, so the reference pads, truncates and normalises exactly like a bundle."""

    def __init__(self, tower: SequenceTower, dtype: torch.dtype, device: torch.device | None = None) -> None:
        self.tower = tower
        self.dtype = dtype
        self.device = device or torch.device("cpu")

    def get_inputs(self) -> list[_Port]:
        return [_Port("history"), _Port("history_mask")]

    def get_outputs(self) -> list[_Port]:
        return [_Port("user")]

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        history = torch.from_numpy(feeds["history"]).to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.tower(history, torch.from_numpy(feeds["history_mask"]).to(self.device))
        return [out.float().cpu().numpy()]


def _catalog_vectors(ckpt: Checkpoint, items: TorchTextEncoder, model: Any) -> np.ndarray:
    texts = list(ckpt.catalog.texts)
    if ckpt.config.user_tower is not UserTowerKind.SEQUENCE:
        return items.encode(texts)
    # Sequence kind: the frozen encoder's vectors through the head, plus any learned offsets.
    vectors = items.encode(texts)
    offsets = model.offset_matrix()
    return vectors if offsets is None else add_offsets(vectors, offsets.float().cpu().numpy())


def torch_device(device: str) -> torch.device:
    """The torch device for a bench ``device`` (``cpu``, ``cuda[:N]``, ``tensorrt[:N]``)."""
    kind, index = parse_device(device)
    if kind is Device.CPU:
        return torch.device("cpu")
    return torch.device("cuda", index or 0)


def reference_subject(
    ckpt_path: Path,
    checkpoint: Checkpoint,
    *,
    threads: int,
    load_s: float,
    bf16: bool = False,
    fusion: FusionSpec | None = None,
    device: str = "cpu",
) -> Subject:
    """The checkpoint served by PyTorch eager with exact search; ``bf16`` casts weights once.
    ``load_s``: what loading ``checkpoint`` took (the cast is added to it). ``fusion``: the
    bundles' two-space weights, so that the reference scores as they do. ``device``: where
    PyTorch runs (a GPU as ``cuda:N``), the same as the bundles'."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ckpt = checkpoint
    dtype = torch.bfloat16 if bf16 else torch.float32
    on = torch_device(device)
    model = copy.deepcopy(ckpt.model).to(on, dtype) if bf16 else ckpt.model.to(on)
    model.eval()
    load_s += time.perf_counter() - t0
    config = ckpt.config
    dim = int(model.item.encoder.config.hidden_size)

    items, text = _torch_encoders(ckpt, model, fusion, dtype, on)
    t0 = time.perf_counter()
    vectors = _catalog_vectors(ckpt, items, model)
    encode_s = time.perf_counter() - t0
    ids = list(ckpt.catalog.ids)
    users: UserEncoder
    if config.user_tower is UserTowerKind.SEQUENCE:
        label = {item_id: i for i, item_id in enumerate(ids)}
        users = SequenceUserEncoder(
            TorchSequenceSession(model.user, dtype, on),
            lambda item_ids: vectors[[label[i] for i in item_ids]],
            dim=dim,
            max_history=model.user.max_history,
            requests=text,
            fusion=fusion,
        )
    else:
        users = TextUserEncoder(text, ckpt.catalog, config.user_input)
    store = LocalItems(index=ExactIndex(vectors), catalog=ckpt.catalog, item_ids=ids, vectors=vectors)
    engine = Engine(user_encoder=users, item_encoder=items, store=store)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return Subject(
        name="pytorch-bf16" if bf16 else "pytorch-fp32",
        kind="pytorch",
        description=f"PyTorch {torch.__version__} eager on {on}, "
        + ("weights cast to bf16 once" if bf16 else "fp32 (the reference)")
        + ", exact search",
        text_encoder=text,
        item_encoder=items,
        engine=engine,
        size_bytes=weights if bf16 else folder_bytes(Path(ckpt_path)),
        load_s=load_s,
        path=str(ckpt_path),
        text_max_length=config.user_max_length,
        precision="bf16" if bf16 else "fp32",
        extra={
            "catalogue_encode_s": round(encode_s, 3),
            "size_is": "weights in memory" if bf16 else "checkpoint",
        },
    )


def _torch_encoders(
    ckpt: Checkpoint, model: Any, fusion: FusionSpec | None, dtype: Any, on: Any
) -> tuple[TorchTextEncoder, TorchTextEncoder]:
    """The reference's item encoder and the text encoder its requests (or text users) read."""
    config = ckpt.config
    dim = int(model.item.encoder.config.hidden_size)

    def tokenizer(max_length: int) -> TextTokenizer:
        return TextTokenizer(
            Tokenizer.from_str(ckpt.tokenizer_json), max_length=max_length, pad_token=config.pad_token
        )

    item_tower, request_tower, width = model.item, model.request_tower, dim
    if fusion is not None:
        item_tower, request_tower, width = item_tower.joined(), request_tower.joined(), fusion.width
    items = TorchTextEncoder(item_tower, tokenizer(config.item_max_length), dim=width, dtype=dtype, device=on)
    if config.user_tower is UserTowerKind.SEQUENCE:
        text = TorchTextEncoder(
            request_tower, tokenizer(config.user_max_length), dim=width, dtype=dtype, device=on
        )
    else:
        text = TorchTextEncoder(
            model.user, tokenizer(config.user_max_length), dim=dim, dtype=dtype, device=on
        )
    return items, text


# -- the peers ----------------------------------------------------------------------------------


class SentenceTransformerEncoder:
    """A sentence-transformers model behind the :class:`Encoder` protocol (unit vectors)."""

    def __init__(self, model: Any, dim: int) -> None:
        self.model = model
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = self.model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


def _quantization_target() -> str:
    """sentence-transformers' dynamic int8 preset for this CPU."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "arm64"


def encoder_folder(ckpt_path: Path) -> Path:
    """The checkpoint's encoder a request runs through (the item encoder of a sequence model)."""
    for name in ("user_encoder", "item_encoder"):  # a text model's user tower reads requests
        if (ckpt_path / name / "config.json").is_file():
            return ckpt_path / name
    raise FileNotFoundError(f"{ckpt_path} has no encoder folder ({CHECKPOINT_FILE} without weights?)")


#: A peer as loaded: (model, name, file, load seconds, what).
Peer = tuple[Any, str, str, float, str]


def peer_subjects(
    ckpt_path: Path,
    work: Path,
    *,
    threads: int,
    max_length: int,
    checkpoint: Checkpoint,
    device: str = "cpu",
    spin: Spin | bool = True,
    calibration: Sequence[str] = (),
) -> list[Subject]:
    """sentence-transformers with its ONNX backend, plain and with its own dynamic int8 export,
    on the checkpoint's encoder (pooling and normalisation as ours, no head). On a GPU the plain
    one runs on the CUDA provider, and the int8 one, which has no CUDA kernels, is left out. On
    the CPU, where optimum-intel is installed, also its OpenVINO backend, plain (OpenVINO's
    default precision) and quantized to int8 by NNCF as its static export does (SmoothQuant),
    calibrated on ``calibration`` texts."""
    try:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingDependencyError(
            "sentence_transformers",
            "bench",
            message=f"the sentence-transformers peers need the bench extra ({e}): "
            "pip install 'recsys-infer[bench]', or pass --no-peers",
        ) from e
    folder = work / "peer-encoder"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(encoder_folder(ckpt_path), folder)
    (folder / "tokenizer.json").write_text(checkpoint.tokenizer_json, encoding="utf-8")
    on = torch_device(device)
    gpu = on.type == "cuda"
    options = session_options(threads=threads, spin=spin, cpu=not gpu)  # as the bundles run
    provider: Any = ("CUDAExecutionProvider", {"device_id": on.index or 0}) if gpu else "CPUExecutionProvider"
    kwargs: dict[str, Any] = {"session_options": options, "provider": provider}
    dim = int(checkpoint.model.item.encoder.config.hidden_size)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the exporter's tracer and deprecation notes, not ours
        warnings.simplefilter("ignore")
        plain = SentenceTransformer(str(folder), backend="onnx", device=str(on), model_kwargs=kwargs)
    plain.save_pretrained(str(folder))  # keeps the exported onnx/model.onnx beside the weights
    plain_s = time.perf_counter() - t0
    # The int8 exports have no CUDA kernels, so on a GPU the plain one runs alone.
    peers: list[Peer] = [
        (plain, "st-onnx", "onnx/model.onnx", plain_s, "ONNX backend, fp32" + (f", {on}" if gpu else ""))
    ]
    if not gpu:
        peers.append(_int8_peer(plain, folder, kwargs))
        peers += _openvino_peers(folder, threads, calibration)

    version = sentence_transformers.__version__
    return [_peer(peer, folder, dim, max_length, version) for peer in peers]


def _int8_peer(plain: Any, folder: Path, kwargs: dict[str, Any]) -> Peer:
    """sentence-transformers' own dynamic int8 export of ``plain``, loaded like it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    target = _quantization_target()
    t0 = time.perf_counter()
    with quiet_quantizer():  # ONNX Runtime's advice to pre-process, meant for its own users
        export_dynamic_quantized_onnx_model(plain, target, str(folder))
    # Its file name says the weight type the preset chose: qint8 for avx512(_vnni) and arm64,
    # quint8 for avx2 (the AMD EPYC machines), so take the file it wrote rather than guess.
    written = sorted((folder / "onnx").glob(f"model_*int8_{target}.onnx"))
    if len(written) != 1:
        raise RuntimeError(
            f"expected one dynamic int8 export for {target} in {folder / 'onnx'}, found {written}"
        )
    quant_file = f"onnx/{written[0].name}"
    int8 = SentenceTransformer(
        str(folder), backend="onnx", device="cpu", model_kwargs={**kwargs, "file_name": quant_file}
    )
    what = f"ONNX backend, its dynamic int8 export ({target})"
    return int8, "st-onnx-int8", quant_file, time.perf_counter() - t0, what


def _openvino_peers(folder: Path, threads: int, calibration: Sequence[str]) -> list[Peer]:
    """sentence-transformers' OpenVINO backend (through optimum-intel), plain and in static int8
    (NNCF with SmoothQuant, as ``export_static_quantized_openvino_model`` does, calibrated here on
    ``calibration`` since its default calibration set is on the Hub); none without optimum-intel."""
    try:
        import nncf
        import openvino as ov
        from optimum.intel import OVModelForFeatureExtraction  # noqa: F401  # the backend's own import
        from sentence_transformers import SentenceTransformer
    except ImportError:
        logger.info("optimum-intel is not installed: no sentence-transformers OpenVINO peers")
        return []
    config = {"ov_config": {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}}
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the exporter's tracer and deprecation notes, not ours
        warnings.simplefilter("ignore")
        plain = SentenceTransformer(str(folder), backend="openvino", device="cpu", model_kwargs=config)
    plain.save_pretrained(str(folder))  # keeps openvino/openvino_model.xml beside the weights
    peers = [(plain, "st-openvino", "openvino/openvino_model.bin", time.perf_counter() - t0,
              "OpenVINO backend, its default precision")]  # fmt: skip
    if not calibration:
        return peers
    t0 = time.perf_counter()
    model = plain[0].auto_model.model
    names = [port.any_name for port in model.inputs]

    def feed(text: str) -> dict[str, np.ndarray]:
        encoded = plain.tokenizer([text], truncation=True, max_length=plain.max_seq_length,
                                  return_tensors="np")  # fmt: skip
        return {name: encoded[name] for name in names if name in encoded}

    dataset = nncf.Dataset([feed(t) for t in calibration[:300]])
    int8 = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=300)
    ov.save_model(int8, str(folder / "openvino" / "openvino_model_qint8_quantized.xml"))
    quantized = SentenceTransformer(
        str(folder), backend="openvino", device="cpu",
        model_kwargs={**config, "file_name": "openvino/openvino_model_qint8_quantized.xml"},
    )  # fmt: skip
    what = "OpenVINO backend, int8 by NNCF (SmoothQuant), calibrated on the catalogue"
    file = "openvino/openvino_model_qint8_quantized.bin"
    peers.append((quantized, "st-openvino-int8", file, time.perf_counter() - t0, what))
    return peers


def _peer(peer: Peer, folder: Path, dim: int, max_length: int, version: str) -> Subject:
    model, name, file, secs, what = peer
    model.max_seq_length = max_length  # the same truncation as the bundles' text graph
    encoder = SentenceTransformerEncoder(model, dim)
    return Subject(
        name=name,
        kind="peer",
        description=f"sentence-transformers {version} {what}",
        text_encoder=encoder,
        item_encoder=encoder,
        engine=None,
        size_bytes=(folder / file).stat().st_size,
        load_s=secs,
        path=str(folder / file),
        text_max_length=max_length,
        precision="int8" if "int8" in name else "fp32",
        extra={
            "load_includes": ("OpenVINO" if "openvino" in name else "ONNX")
            + " export"
            + (" and quantization" if "int8" in name else "")
        },
    )


def encoder_only(checkpoint: Checkpoint, *, threads: int, device: str = "cpu") -> Encoder:
    """The checkpoint's request-side encoder without any head, fp32: what the peers reproduce."""
    torch.set_num_threads(threads)
    config = checkpoint.config
    model = checkpoint.model
    tower = model.user if config.user_tower is UserTowerKind.TEXT else model.item
    bare = TextTower(tower.encoder, config.pooling)
    tokenizer = TextTokenizer(
        Tokenizer.from_str(checkpoint.tokenizer_json),
        max_length=config.user_max_length,
        pad_token=config.pad_token,
    )
    return TorchTextEncoder(
        bare,
        tokenizer,
        dim=int(tower.encoder.config.hidden_size),
        dtype=torch.float32,
        device=torch_device(device),
    )
