"""Open a bundle and build the runner each model gets (ONNX Runtime, or TensorRT engines)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StagedxError
from ..manifest import ROLES, Manifest, load_manifest
from .device import parse_device


def open_bundle(path: str | os.PathLike, check: bool = True) -> tuple[Path, Manifest]:
    """``(bundle folder, manifest)``; with ``check`` every file's sha256 is verified. A missing
    folder, a modified file or a manifest from a newer schema raise a StagedxError."""
    bundle = Path(path)
    return bundle, load_manifest(bundle, check_files=check)


def has_engine(manifest: Manifest, role: str) -> bool:
    return any(e.get("role") == role for e in manifest.engines)


def make_runner(
    bundle_dir: str | os.PathLike,
    manifest: Manifest,
    role: str,
    device: str = "auto",
    threads: int | None = None,
    max_context: int | None = None,
):
    """The runner for ``role``: ``device="tensorrt"`` with engines built for that role uses the
    TensorRT runner (loaded lazily: tensorrt and cuda-python are optional); every other device
    runs the ONNX graph on ONNX Runtime (``auto``: CUDA EP when installed, else CPU)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    kind, index = parse_device(device)
    if _use_engines(manifest, kind):
        return _trt_runner(bundle_dir, manifest, role, max_context, index)
    from .ort_runner import OrtRunner  # noqa: PLC0415 - keeps `import stagedx.runtime` light

    return OrtRunner(
        bundle_dir,
        manifest.models[role],
        device=device,
        threads=threads,
        max_context=max_context,
        reserved_slots=manifest.reserved_slots("onnxruntime"),
    )


def _use_engines(manifest: Manifest, kind: str) -> bool:
    """TensorRT engines run both models or neither: ``tensorrt`` uses them when the bundle has
    engines (else ONNX Runtime's TensorRT EP), ``auto`` when they are usable on this machine."""
    built = [r for r in ROLES if has_engine(manifest, r)]
    if kind not in ("tensorrt", "auto") or not built:
        return False
    if len(built) != len(ROLES):
        raise StagedxError(f"the bundle has TensorRT engines for {', '.join(built)} only: rerun stagedx build-engine")
    if kind == "tensorrt":
        return True
    try:
        from .trt_runner import tensorrt_unusable  # noqa: PLC0415 - TensorRT is optional
    except ImportError:
        return False
    return tensorrt_unusable(manifest) is None


def _trt_runner(bundle_dir, manifest: Manifest, role: str, max_context: int | None, index: int):
    try:
        from .trt_runner import TrtRunner  # noqa: PLC0415 - TensorRT is optional
    except ImportError as exc:
        raise StagedxError(f"the TensorRT runner is unavailable in this install ({exc}); "
                           "use --device cuda or --device cpu") from exc
    return TrtRunner(bundle_dir, role, max_context=max_context, device_index=index, manifest=manifest)
