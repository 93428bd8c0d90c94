"""``stagedx validate BUNDLE``: every available backend against the transformers reference.

Export saved the transformers (fp32) inputs and outputs in ``reference.npz``; each backend
(ONNX Runtime always, TensorRT where it and engines for this GPU are present) is run through
Polygraphy's runner API on those inputs (ONNX Runtime on the CPU EP, and on the CUDA EP
where onnxruntime-gpu is installed, as backend ``ort-cuda``) and its ``logits`` / ``topk_values`` are compared to
the reference with the manifest's tolerance for the graph's dtype. The error measure is
``max|ours - ref| / max|ref|``. ONNX Runtime is never compared with itself.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from ..manifest import NUMPY_DTYPE, TOLERANCE, Manifest, ModelEntry, load_manifest
from ..numerics import rel_error

COMPARED = ("logits", "topk_values")
CUDA_EP = "CUDAExecutionProvider"
CUDA_BACKEND = "ort-cuda"  # ONNX Runtime's CUDA execution provider


@dataclass(frozen=True)
class Check:
    backend: str
    role: str
    dtype: str
    output: str
    max_rel_error: float | None  # None when skipped
    tolerance: float
    note: str = ""

    @property
    def skipped(self) -> bool:
        return self.max_rel_error is None

    @property
    def passed(self) -> bool:
        return self.skipped or bool(self.max_rel_error <= self.tolerance)


def precision(entry: ModelEntry) -> str:
    """The key of ``entry``'s tolerance: its quantization (int8 / int4) or its dtype."""
    return entry.quantization.kind if entry.quantization is not None else entry.dtype


def tolerance_for(manifest: Manifest, dtype: str) -> float:
    """The manifest's tolerance for ``dtype`` (a precision), else the contract's default."""
    if manifest.reference is None:
        return TOLERANCE[dtype]
    return manifest.reference.tolerance_for(dtype)


def reference_feeds(ref, entry: ModelEntry, reserved: int = 0) -> dict[str, np.ndarray]:
    """Graph inputs for ``entry.role`` from ``reference.npz``, with ``reserved`` masked dummy
    past rows in front (as the TensorRT runtime binds them)."""
    r, a, io = entry.role, entry.arch, entry.graph_io
    dtype = np.dtype(NUMPY_DTYPE[entry.dtype])
    mask = np.asarray(ref[f"{r}.tree_mask"], dtype=bool)  # [T, P+T]
    feeds = {
        io.input_ids: np.asarray(ref[f"{r}.input_ids"], dtype=np.int64),  # [T]
        io.position_ids: np.asarray(ref[f"{r}.position_ids"], dtype=np.int64),  # [T]
        io.tree_mask: np.concatenate([np.zeros((mask.shape[0], reserved), dtype=bool), mask], axis=1),  # [T, R+P+T]
    }
    dummy = np.zeros((reserved, a.n_kv_heads, a.head_dim), dtype=dtype)  # [R, H, D]
    for i in range(a.n_layers):
        for kind, name in (("past_key", io.past_key[i]), ("past_value", io.past_value[i])):
            past = np.asarray(ref[f"{r}.{kind}.{i}"], dtype=dtype)  # [P, H, D]
            feeds[name] = np.concatenate([dummy, past], axis=0)  # [R+P, H, D]
    return feeds


def compare_outputs(outputs: dict, ref, entry: ModelEntry, label_tol: tuple[str, float]) -> list[Check]:
    """Checks of one backend's outputs for ``entry`` against the reference logits."""
    backend, tol = label_tol
    ref_logits = np.asarray(ref[f"{entry.role}.logits"], dtype=np.float32)
    k = entry.topk
    ref_topk = -np.sort(-ref_logits, axis=-1)[:, :k]
    expected = {"logits": ref_logits, "topk_values": ref_topk}
    checks = []
    for key in COMPARED:
        ours = outputs.get(getattr(entry.graph_io, key))
        err = float("inf") if ours is None else rel_error(ours, expected[key])
        note = "" if ours is not None else "output missing"
        checks.append(Check(backend, entry.role, entry.dtype, key, err, tol, note))
    return checks


def _run_polygraphy(runner, feeds: dict) -> dict:
    with runner:
        out = runner.infer(feeds)
    return {name: np.asarray(v) for name, v in out.items()}


def _onnxrt_checks(bundle: Path, manifest: Manifest, ref) -> list[Check]:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    checks = []
    reserved = manifest.reserved_slots("tensorrt")
    for role, entry in manifest.models.items():
        tol = tolerance_for(manifest, precision(entry))
        session = SessionFromOnnx(str(bundle / entry.file), providers=["CPUExecutionProvider"])
        runner = OnnxrtRunner(session, name=f"onnxrt-{role}")
        # as ONNX Runtime runs it, then with the masked dummy KV rows the TensorRT runtime adds
        variants = [("onnxruntime", 0)] + ([(f"onnxruntime+{reserved}dummy", reserved)] if reserved else [])
        for label, r in variants:
            outputs = _run_polygraphy(runner, reference_feeds(ref, entry, reserved=r))
            checks += compare_outputs(outputs, ref, entry, (label, tol))
    return checks


def _cuda_checks(bundle: Path, manifest: Manifest, ref) -> list[Check]:
    """ONNX Runtime's CUDA EP (onnxruntime-gpu) on the same reference feeds; no TensorRT
    involved. Skipped, saying why, without onnxruntime-gpu or when the CUDA EP does not load."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner

    if CUDA_EP not in ort.get_available_providers():
        return _skipped(CUDA_BACKEND, manifest, "onnxruntime-gpu not installed")
    checks = []
    for role, entry in manifest.models.items():
        tol = tolerance_for(manifest, precision(entry))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(bundle / entry.file), opts, providers=[CUDA_EP, "CPUExecutionProvider"])
        if session.get_providers()[0] != CUDA_EP:
            note = "the CUDA EP did not load (CUDA / cuDNN libraries)"
            checks.append(Check(CUDA_BACKEND, role, entry.dtype, "-", None, tol, note))
            continue
        outputs = _run_polygraphy(OnnxrtRunner(session, name=f"{CUDA_BACKEND}-{role}"), reference_feeds(ref, entry))
        checks += compare_outputs(outputs, ref, entry, (CUDA_BACKEND, tol))
    return checks


def _skipped(backend: str, manifest: Manifest, note: str) -> list[Check]:
    return [
        Check(backend, role, e.dtype, "-", None, tolerance_for(manifest, precision(e)), note)
        for role, e in manifest.models.items()
    ]


def _tensorrt_checks(bundle: Path, manifest: Manifest, ref) -> list[Check]:
    if not manifest.engines:
        return _skipped("tensorrt", manifest, "no engines in the bundle")
    from ..runtime.backends.trt import gpu_info, import_cudart, import_tensorrt, select_engine
    from .profiles import fits_profile

    try:
        trt = import_tensorrt("validating engines")
        gpu = gpu_info(import_cudart("validating engines"))
    except StagedxError as exc:
        return _skipped("tensorrt", manifest, str(exc).split(";")[0])
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    checks = []
    for role, entry in manifest.models.items():
        tol = tolerance_for(manifest, precision(entry))
        try:
            record = select_engine(manifest, role, gpu, str(trt.__version__))
        except StagedxError as exc:
            checks.append(Check("tensorrt", role, entry.dtype, "-", None, tol, str(exc).split(";")[0]))
            continue
        feeds = reference_feeds(ref, entry, reserved=int(record.reserved_slots))
        why = fits_profile(record.profiles[0], {k: v.shape for k, v in feeds.items()})
        if why is not None:
            checks.append(Check("tensorrt", role, entry.dtype, "-", None, tol, why))
            continue
        engine = EngineFromBytes((bundle / record.file).read_bytes())
        outputs = _run_polygraphy(TrtRunner(engine, name=f"trt-{role}"), feeds)
        checks += compare_outputs(outputs, ref, entry, ("tensorrt", tol))
    return checks


def validate_bundle(bundle: str | Path) -> list[Check]:
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if manifest.reference is None:
        raise StagedxError(f"{bundle} has no reference.npz to validate against; re-export it")
    try:
        import polygraphy  # noqa: F401
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        raise StagedxError("validate needs Polygraphy: pip install 'stagedx[validate]'") from exc
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        with np.load(bundle / manifest.reference.file, allow_pickle=False) as npz:
            ref = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # empty / truncated / not npz
        raise StagedxError(f"cannot read {manifest.reference.file}: {type(exc).__name__}: {exc}") from exc
    missing = [f"{r}.logits" for r in manifest.models if f"{r}.logits" not in ref]
    if missing:
        raise StagedxError(f"reference.npz lacks {missing}; re-export the bundle")
    checks = _onnxrt_checks(bundle, manifest, ref) + _cuda_checks(bundle, manifest, ref)
    return checks + _tensorrt_checks(bundle, manifest, ref)


def format_table(checks: list[Check]) -> str:
    head = ("backend", "role", "dtype", "output", "max_rel_err", "tolerance", "result")
    rows = [head]
    for c in checks:
        err = "-" if c.skipped else f"{c.max_rel_error:.3g}"
        result = f"skipped: {c.note}" if c.skipped else ("pass" if c.passed else "FAIL")
        rows.append((c.backend, c.role, c.dtype, c.output, err, f"{c.tolerance:.0e}", result))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows)
