"""Choosing ONNX Runtime execution providers honestly.

A device is ``auto``, ``cpu``, ``cuda`` or ``tensorrt``, the GPU ones optionally with an index
(``cuda:1``). A GPU device that was asked for either really runs the graphs or raises
:class:`DeviceUnavailableError` saying why. ``auto`` runs on CUDA when the GPU build of ONNX
Runtime can; when that build is installed and CUDA cannot run, it falls back to the CPU with a
WARNING and keeps the reason (:attr:`Placement.fallback`) so that a service can show it. With
the CPU build alone, ``auto`` simply means the CPU. The
device finally used is reported, never assumed.

ONNX Runtime itself is imported on first use, so that ``import recsys_infer`` works (and stays
fast) before either runtime build is installed; using the engine without one is a one-line
error naming the ``pip install`` to run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys_infer.enums import Device, Precision, Spin
from recsys_infer.errors import BundleError, ConfigError, DeviceUnavailableError, MissingDependencyError

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
_GPU_PROVIDERS = {Device.CUDA: CUDA_PROVIDER, Device.TENSORRT: TENSORRT_PROVIDER}
_RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
#: What to install when no ONNX Runtime build is there (the package's own extras pick the build).
INSTALL_HINT = "pip install 'recsys-infer[cpu]' (or 'recsys-infer[gpu]' on a machine with an NVIDIA GPU)"


def onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module; :class:`MissingDependencyError` when no build is installed."""
    try:
        import onnxruntime as module
    except ImportError as e:
        raise MissingDependencyError(
            "onnxruntime",
            message=f"ONNX Runtime is not installed; its CPU and GPU builds are extras: {INSTALL_HINT}",
        ) from e
    return module  # type: ignore[no-any-return]  # onnxruntime ships no type information


def installed_runtime_distributions() -> list[str]:
    """Names and versions of the ONNX Runtime distributions installed (normally exactly one)."""
    found = []
    for name in _RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def _names(dists: list[str]) -> set[str]:
    return {d.split()[0] for d in dists}


def runtime_problem(dists: list[str]) -> str | None:
    """Why the installed ONNX Runtime builds (``dists``, as listed by
    :func:`installed_runtime_distributions`) are in a broken state, or None."""
    names = _names(dists)
    if "onnxruntime" in names and "onnxruntime-gpu" in names:
        return (
            f"both onnxruntime and onnxruntime-gpu are installed ({'; '.join(dists)}); they overwrite "
            "each other's files, so which one runs depends on install order. Fix: pip uninstall -y "
            "onnxruntime onnxruntime-gpu && pip install 'recsys-infer[gpu]' (or '[cpu]')"
        )
    return None


@dataclass(frozen=True)
class Placement:
    """Where a bundle's graphs run: ``device`` (never ``auto``), the GPU's ``index`` for CUDA
    and TensorRT, the options passed to the GPU provider, and, when ``auto`` asked for a GPU
    and got the CPU, the reason (``fallback``)."""

    device: Device
    index: int = 0
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    fallback: str | None = None

    def __str__(self) -> str:
        return str(self.device) if self.device is Device.CPU else f"{self.device}:{self.index}"

    def providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        """The ``providers`` argument of ``InferenceSession``: the GPU provider with its options
        first (TensorRT falls back to CUDA for the nodes it cannot take), the CPU last."""
        if self.device is Device.CPU:
            return [CPU_PROVIDER]
        gpu = {"device_id": self.index}
        cuda = (CUDA_PROVIDER, {**gpu, **(self.provider_options if self.device is Device.CUDA else {})})
        if self.device is Device.CUDA:
            return [cuda, CPU_PROVIDER]
        return [(TENSORRT_PROVIDER, {**gpu, **self.provider_options}), cuda, CPU_PROVIDER]


def parse_device(spec: Device | str) -> tuple[Device, int | None]:
    """``"cuda:1"`` -> ``(Device.CUDA, 1)``; ``"cpu"`` -> ``(Device.CPU, None)``."""
    text = str(spec).strip().lower()
    name, colon, index = text.partition(":")
    try:
        device = Device(name)
    except ValueError:
        device = None
    if device is None or (colon and (device in (Device.CPU, Device.AUTO) or not index.isdigit())):
        raise ConfigError(
            f"unknown device {str(spec)!r}: use auto, cpu, cuda, cuda:N (the N-th GPU), tensorrt "
            "or tensorrt:N"
        )
    return device, int(index) if index else None


def _gpu_missing_reason(device: Device, available: Iterable[str], dists: list[str]) -> str:
    names = _names(dists)
    available_list = ", ".join(available)
    problem = runtime_problem(dists)
    if problem:
        return f"{problem}. Available providers: {available_list}"
    if "onnxruntime-gpu" not in names:
        return (
            f"the installed ONNX Runtime ({'; '.join(dists) or 'unknown'}) is a CPU build. For a GPU: "
            "pip uninstall -y onnxruntime && pip install 'recsys-infer[gpu]'. "
            f"Available providers: {available_list}"
        )
    if device is Device.TENSORRT:
        return (
            "onnxruntime-gpu is installed but its TensorRT provider is not available: install TensorRT "
            f"(the version this onnxruntime-gpu was built for), or use device='cuda'. Available providers: "
            f"{available_list}"
        )
    return (
        "onnxruntime-gpu is installed but its CUDA provider is not available: check the NVIDIA "
        "driver and that the CUDA and cuDNN libraries it was built for can be loaded. "
        f"Available providers: {available_list}"
    )


def plan_placement(
    requested: Device | str,
    precisions: Iterable[Precision],
    *,
    provider_options: Mapping[str, Any] | None = None,
) -> Placement:
    """Where to run graphs of these precisions for the ``requested`` device.

    Raises :class:`DeviceUnavailableError` when a GPU device was asked for and cannot work;
    ``auto`` falls back to the CPU with a WARNING and the reason in :attr:`Placement.fallback`.
    """
    device, index = parse_device(requested)
    dists = installed_runtime_distributions()
    problem = runtime_problem(dists)
    if problem:
        logger.warning("%s", problem)
    options = dict(provider_options or {})
    if options and device is Device.CPU:
        raise ConfigError(
            "provider options are for the GPU providers (cuda, tensorrt); device 'cpu' takes none"
        )
    if device is Device.CPU:
        return Placement(Device.CPU)
    gpu = Device.CUDA if device is Device.AUTO else device
    available = onnxruntime().get_available_providers()
    reason = None
    if _GPU_PROVIDERS[gpu] not in available:
        reason = _gpu_missing_reason(gpu, available, dists)
    elif Precision.INT8 in set(precisions):
        reason = (
            "this bundle has int8 graphs, which ONNX Runtime's GPU providers do not run fast (dynamic "
            "int8 has no CUDA kernels). On the GPU serve the fp32 bundle, or an fp16 one: recsys-infer "
            "quantize FP32_BUNDLE --mode fp16 --out BUNDLE-fp16; keep int8 bundles for device='cpu'"
        )
    if reason is None:
        return Placement(gpu, index or 0, options)
    if device is not Device.AUTO:
        raise DeviceUnavailableError(f"device {str(requested)!r} was requested but cannot be used: {reason}")
    if "onnxruntime-gpu" not in _names(dists):
        # The CPU build alone: 'auto' has no GPU to fall back from, so this is no warning.
        logger.info("device 'auto': the CPU build of ONNX Runtime is installed, running on the CPU")
        return Placement(Device.CPU)
    logger.warning("device 'auto': running on the CPU because %s", reason)
    return Placement(Device.CPU, fallback=reason)


def plan_device(requested: Device | str, precisions: Iterable[Precision]) -> Device:
    """The device kind :func:`plan_placement` picks (``cpu``, ``cuda`` or ``tensorrt``)."""
    return plan_placement(requested, precisions).device


#: ONNX Runtime graph optimisers a CPU session runs without. SkipLayerNormFusion folds each
#: residual Add into the LayerNormalization after it, and ONNX Runtime's CPU kernel for the fused
#: operator is slower than the two it replaces (measured in benchmarks/studies/README.md,
#: layer_norm_fusion). GPU sessions keep it.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(
    *, threads: int | None = None, spin: Spin | bool = True, cpu: bool = True
) -> ort.SessionOptions:
    """The session options every graph here runs with: all graph optimisations (on the ``cpu``,
    less :data:`CPU_DISABLED_OPTIMIZERS`), one inter-op thread, ``threads`` intra-op threads
    (None: ONNX Runtime's choice), and when those threads busy-wait (``spin``: a :class:`Spin`
    or a bool, see :func:`create_session`)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cpu:
        options.add_session_config_entry(
            "optimization.disable_specified_optimizers", ",".join(CPU_DISABLED_OPTIMIZERS)
        )
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {threads}")
        options.intra_op_num_threads = threads
    mode = Spin.of(spin)
    if mode is Spin.NEVER:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    elif mode is Spin.RUN:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def create_session(
    path: Path, placement: Placement | Device, *, threads: int | None = None, spin: Spin | bool = True
) -> ort.InferenceSession:
    """An inference session for one graph at ``placement`` (already planned; a bare
    :class:`Device` means its first GPU, or the CPU).

    ``spin`` (a :class:`Spin`; ``True`` is ``always``, ``False`` ``never``): ``always``, ONNX
    Runtime's default, lets the intra-op threads busy-wait for the next piece of work, also for
    a while after each run, so an idle session takes CPU from other sessions and processes
    sharing the cores (benchmarks/README.md, "The tail"). ``run`` lets them spin only while a
    run lasts, and ``never`` makes them sleep, which costs a short request a wake-up per
    operator that splits its work.

    ONNX Runtime quietly drops a provider it cannot initialise; that is checked here and turned
    into a :class:`DeviceUnavailableError`.
    """
    if not isinstance(placement, Placement):
        placement = Placement(Device(placement))
    options = session_options(threads=threads, spin=spin, cpu=placement.device is Device.CPU)
    try:
        session = onnxruntime().InferenceSession(
            str(path), sess_options=options, providers=placement.providers()
        )
    except Exception as e:  # ONNX Runtime's own errors (InvalidProtobuf, Fail, ...) are not ours
        raise BundleError(
            f"ONNX Runtime could not load {path.name} ({type(e).__name__}: {str(e)[:300]}). If the file is "
            "damaged, rebuild the bundle."
        ) from e
    if placement.device is not Device.CPU:
        wanted = _GPU_PROVIDERS[placement.device]
        if wanted not in session.get_providers():
            raise DeviceUnavailableError(
                f"ONNX Runtime could not start its {wanted} for {path.name} on GPU {placement.index} (it "
                f"fell back to {', '.join(session.get_providers())}); check that the GPU exists, the NVIDIA "
                "driver, and the CUDA/cuDNN (and, for tensorrt, TensorRT) libraries onnxruntime-gpu needs"
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
    if {CUDA_PROVIDER, TENSORRT_PROVIDER} & set(session.get_providers()):
        gpu = int(session.get_provider_options().get(CUDA_PROVIDER, {}).get("device_id", 0))
        binding.bind_output(output, "cuda", gpu)
    else:
        binding.bind_output(output, "cpu")
    session.run_with_iobinding(binding)
    return np.asarray(binding.copy_outputs_to_cpu()[0])
