"""Choosing ONNX Runtime execution providers honestly.

``cuda`` means the CUDA provider really runs the graph; when it cannot, the caller gets a
:class:`DeviceUnavailableError` that says why. ``auto`` tries CUDA and falls back to the CPU
with a log line. The device finally used is reported, never assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from recsys_infer.enums import Device, Precision
from recsys_infer.errors import ConfigError, DeviceUnavailableError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def installed_runtime_distributions() -> list[str]:
    """Names and versions of the ONNX Runtime distributions installed (normally exactly one)."""
    found = []
    for name in _RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def _cuda_missing_reason(available: Iterable[str]) -> str:
    dists = installed_runtime_distributions()
    names = [d.split()[0] for d in dists]
    available_list = ", ".join(available)
    if "onnxruntime" in names and "onnxruntime-gpu" in names:
        return (
            f"both onnxruntime and onnxruntime-gpu are installed ({'; '.join(dists)}); they "
            "overwrite each other's files. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && "
            f"pip install 'onnxruntime-gpu>=1.19,<2'. Available providers: {available_list}"
        )
    if "onnxruntime-gpu" not in names:
        return (
            f"the installed ONNX Runtime ({'; '.join(dists) or 'unknown'}) is a CPU build. For CUDA: "
            "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.19,<2'. "
            f"Available providers: {available_list}"
        )
    return (
        "onnxruntime-gpu is installed but its CUDA provider is not available: check the NVIDIA "
        "driver and that the CUDA and cuDNN libraries it was built for can be loaded. "
        f"Available providers: {available_list}"
    )


def plan_device(requested: Device, precisions: Iterable[Precision]) -> Device:
    """The device to try first for ``requested``, given the graphs' precisions.

    Raises :class:`DeviceUnavailableError` for ``cuda`` when CUDA cannot work at all.
    """
    requested = Device(requested)
    if requested is Device.CPU:
        return Device.CPU
    available = ort.get_available_providers()
    reason = None
    if CUDA_PROVIDER not in available:
        reason = _cuda_missing_reason(available)
    elif Precision.INT8 in set(precisions):
        reason = (
            "this bundle has int8 graphs, which ONNX Runtime's CUDA provider cannot run; use an "
            "fp32 or fp16 bundle on the GPU, or device='cpu' for int8"
        )
    if reason is None:
        return Device.CUDA
    if requested is Device.CUDA:
        raise DeviceUnavailableError(f"device 'cuda' was requested but cannot be used: {reason}")
    logger.info("device 'auto': running on the CPU because %s", reason)
    return Device.CPU


def create_session(path: Path, device: Device, *, threads: int | None = None) -> ort.InferenceSession:
    """An inference session for one graph on ``device`` (``cpu`` or ``cuda``, already planned).

    ONNX Runtime quietly drops a provider it cannot initialise; that is checked here and turned
    into a :class:`DeviceUnavailableError`.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {threads}")
        options.intra_op_num_threads = threads
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if device is Device.CUDA else [CPU_PROVIDER]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if device is Device.CUDA and CUDA_PROVIDER not in session.get_providers():
        raise DeviceUnavailableError(
            f"ONNX Runtime could not start its CUDA provider for {path.name} (it fell back to "
            f"{', '.join(session.get_providers())}); check the NVIDIA driver and the CUDA/cuDNN "
            "libraries onnxruntime-gpu needs"
        )
    return session


def run_graph(
    session: ort.InferenceSession, output: str, feed: dict[str, np.ndarray], *, io_binding: bool = False
) -> np.ndarray:
    """One run of ``session``. With ``io_binding`` the inputs are bound once and the output is
    allocated by ONNX Runtime on the session's device, then copied back: on CUDA this spares
    the per-run staging copies of ``session.run``. Both ways return the same array."""
    if not io_binding:
        (out,) = session.run([output], feed)
        return np.asarray(out)
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    device = "cuda" if CUDA_PROVIDER in session.get_providers() else "cpu"
    binding.bind_output(output, device)
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0])
