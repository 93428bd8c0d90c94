"""Resolve a user's ``--device`` against the ONNX Runtime execution providers installed here."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import StagedxError

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
GPU_HINT = "install onnxruntime-gpu (pip install 'stagedx[gpu]') on a machine with an NVIDIA GPU"


@dataclass(frozen=True)
class DeviceChoice:
    kind: str  # "cpu" | "cuda" | "tensorrt"
    index: int  # GPU ordinal (0 on CPU)
    providers: tuple  # ONNX Runtime providers list, in priority order
    explicit: bool  # the user named it (a CPU fallback is then an error)

    @property
    def name(self) -> str:
        """What the runner reports as its device: "cpu" or "cuda:N"."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads, option: str = "threads") -> None:
    """``None`` (the backend's default) or an integer in [1, available cores]: more threads
    than cores only makes the workers fight for them (999 would start ~1000 threads)."""
    if threads is None:
        return
    cores = available_cores()
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or not 1 <= threads <= cores:
        raise StagedxError(f"{option} must be an integer in [1, {cores}] (the CPU cores available), got {threads!r}")


def parse_device(device: str) -> tuple[str, int]:
    """``"cuda:1"`` -> ("cuda", 1); unknown names raise a StagedxError listing the valid ones."""
    text = (device or "auto").strip().lower()
    kind, _, idx = text.partition(":")
    if kind not in DEVICES or (idx and (not idx.isdigit() or kind in ("auto", "cpu"))):
        raise StagedxError(f"unknown device {device!r}; valid: {', '.join(DEVICES)} (cuda:N / tensorrt:N for a GPU)")
    return kind, int(idx or 0)


def resolve_device(device: str, available: list[str] | tuple[str, ...] | None = None) -> DeviceChoice:
    """``auto`` is CUDA when the CUDA EP is installed, else CPU; ``cuda`` / ``tensorrt`` need
    their EP installed (checked again after the session is created, see ``check_providers``)."""
    if available is None:
        import onnxruntime  # keep this module importable for parsing alone

        available = onnxruntime.get_available_providers()
    kind, index = parse_device(device)
    explicit = kind != "auto"
    if kind == "auto":
        kind = "cuda" if CUDA_EP in available else "cpu"
    if kind == "cpu":
        return DeviceChoice("cpu", 0, (CPU_EP,), explicit)
    need = CUDA_EP if kind == "cuda" else TRT_EP
    if need not in available:
        raise StagedxError(
            f"device {device!r} needs ONNX Runtime's {need}, not installed here (available: "
            f"{', '.join(available)}); {GPU_HINT}, or use --device cpu"
        )
    gpu = {"device_id": index}
    providers = [(CUDA_EP, gpu), CPU_EP]
    if kind == "tensorrt":
        providers.insert(0, (TRT_EP, gpu))
    return DeviceChoice(kind, index, tuple(providers), explicit)


def check_providers(choice: DeviceChoice, used: list[str]) -> DeviceChoice:
    """Compare what the session really uses with what was asked. ORT silently falls back to
    CPU when the CUDA libraries cannot load: an explicit GPU device then fails; ``auto``
    reports the CPU."""
    first = used[0] if used else CPU_EP
    wanted = choice.providers[0] if isinstance(choice.providers[0], str) else choice.providers[0][0]
    if first == wanted:
        return choice
    if choice.kind == "tensorrt" and first == CUDA_EP:
        if choice.explicit:
            raise StagedxError(
                "ONNX Runtime could not load the TensorRT execution provider (it fell back to "
                "CUDA); check the TensorRT libraries, or use --device cuda"
            )
        return DeviceChoice("cuda", choice.index, choice.providers[1:], False)
    if choice.explicit:
        raise StagedxError(
            f"ONNX Runtime could not use {wanted} (the CUDA / cuDNN libraries did not load) and "
            f"fell back to {first}; fix the GPU install, or use --device cpu"
        )
    return DeviceChoice("cpu", 0, (CPU_EP,), False)
