"""``stagedx build-engine``: one TensorRT engine per neural model of a bundle.

TensorRT is imported lazily (``stagedx[trt]``, NVIDIA's index, a CUDA machine). Precision
comes from the exported graph's dtype: the network is strongly typed (TensorRT 10 takes the
``STRONGLY_TYPED`` flag; TensorRT 11 has only strongly typed networks and no FP16 flag).
Engines are written atomically into ``BUNDLE/engines/`` and recorded in the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import StagedxError
from ..files import sha256_file, utc_now, write_atomic
from ..manifest import (
    ROLES,
    EngineEntry,
    Manifest,
    ModelEntry,
    load_manifest,
    update_manifest,
)
from ..runtime.backends.trt import GpuInfo, gpu_info, import_cudart, import_tensorrt
from .profiles import ProfileSpec, check_spec, profile_shapes, shapes_as_dict

ENGINES_DIR = "engines"


@dataclass(frozen=True)
class BuildConfig:
    bundle: Path
    max_tree: int = 64
    max_context: int | None = None  # None: the smaller of 2048 and the model's positions
    timing_cache: Path | None = None  # None: BUNDLE/engines/timing-<trt>-sm<cc>.cache
    workspace_gb: float = 4.0
    roles: tuple[str, ...] = ROLES


def resolve_spec(cfg: BuildConfig, manifest: Manifest) -> ProfileSpec:
    """Profile ranges for this bundle, validated (raises ``StagedxError``)."""
    max_positions = min(e.arch.max_positions for e in manifest.models.values())
    max_context = cfg.max_context if cfg.max_context is not None else min(2048, max_positions)
    spec = ProfileSpec(cfg.max_tree, max_context, manifest.reserved_slots("tensorrt"))
    check_spec(spec, max_positions)
    if not 0 < cfg.workspace_gb < float("inf"):
        raise StagedxError(f"--workspace must be positive (got {cfg.workspace_gb} GB)")
    quantized = [r for r in cfg.roles if manifest.models[r].quantization is not None]
    if quantized:
        raise StagedxError(
            f"{' and '.join(quantized)} holds ONNX Runtime MatMulNBits weights (--quantize), "
            "which TensorRT cannot parse: export without --quantize to build engines"
        )
    return spec


def network_flags(trt_version: str, strongly_typed_flag: int | None) -> int:
    """``create_network`` flags: strongly typed on TensorRT 10 (where the flag exists),
    nothing on 11+ (always strongly typed)."""
    major = int(trt_version.split(".")[0])
    if major >= 11 or strongly_typed_flag is None:
        return 0
    return 1 << int(strongly_typed_flag)


def engine_file_name(role: str, gpu: GpuInfo, trt_version: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"
    return f"{ENGINES_DIR}/{role}.{slug}.sm{gpu.compute_capability.replace('.', '')}.trt{trt_version}.plan"


def engine_record(
    entry: ModelEntry, spec: ProfileSpec, file_sha: tuple[str, str], gpu: GpuInfo, trt_version: str
) -> EngineEntry:
    """The manifest ``engines`` entry for one built engine."""
    file, sha = file_sha
    return EngineEntry(
        role=entry.role,
        file=file,
        sha256=sha,
        onnx_sha256=entry.sha256,
        tensorrt_version=trt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=entry.dtype,
        max_tree=spec.max_tree,
        max_context=spec.max_context,
        reserved_slots=spec.reserved,
        profiles=(shapes_as_dict(profile_shapes(entry, spec)),),
        built_utc=utc_now(),
    )


def merge_records(old: tuple | list, new: list[EngineEntry]) -> list[EngineEntry]:
    """Replace records for the same (role, GPU, TensorRT version); keep every other one."""

    def key(r: EngineEntry) -> tuple:
        return (r.role, r.gpu_name, r.compute_capability, r.tensorrt_version)

    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + list(new)


def build_engines(cfg: BuildConfig, log=print) -> list[EngineEntry]:
    """Build, write and record every engine; returns the new manifest records."""
    bundle = Path(cfg.bundle)
    manifest = load_manifest(bundle)
    spec = resolve_spec(cfg, manifest)
    trt = import_tensorrt("build-engine")
    gpu = gpu_info(import_cudart("build-engine"))
    version = str(trt.__version__)
    (bundle / ENGINES_DIR).mkdir(exist_ok=True)
    cache_path = cfg.timing_cache or bundle / ENGINES_DIR / (
        f"timing-{version}-sm{gpu.compute_capability.replace('.', '')}.cache"
    )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_bytes = _read_cache(Path(cache_path))
    records = []
    for role in cfg.roles:
        entry = manifest.models[role]
        log(
            f"building {role} engine ({entry.dtype}, T 1..{spec.max_tree}, "
            f"context {spec.max_context}) on {gpu.name} with TensorRT {version}"
        )
        plan, cache_bytes = _build_one(
            trt, (builder, logger), bundle / entry.file, profile_shapes(entry, spec), (cfg, cache_bytes)
        )
        rel = engine_file_name(role, gpu, version)
        write_atomic(bundle / rel, plan)
        records.append(engine_record(entry, spec, (rel, sha256_file(bundle / rel)), gpu, version))
        log(f"  wrote {rel} ({len(plan) / 2**20:.1f} MiB)")
    if cache_bytes:
        write_atomic(Path(cache_path), cache_bytes)
    update_manifest(bundle, engines=tuple(merge_records(manifest.engines, records)))
    return records


def _build_one(trt, builder_logger, onnx_path: Path, shapes: dict, cfg_cache) -> tuple[bytes, bytes]:
    builder, logger = builder_logger
    cfg, cache_bytes = cfg_cache
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(network_flags(str(trt.__version__), flag))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (oracle.onnx.data) next to the model file.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StagedxError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = sorted(set(inputs) - set(shapes))
    if missing:
        raise StagedxError(f"{onnx_path.name} has inputs outside the graph contract: {missing}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gb * 2**30))
    cache = config.create_timing_cache(cache_bytes or b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise StagedxError(
            "the timing cache was made by another TensorRT version or GPU; pass a fresh --timing-cache path"
        )
    profile = builder.create_optimization_profile()
    for name in inputs:
        r = shapes[name]
        profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise StagedxError(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    new_cache = config.get_timing_cache().serialize()
    return bytes(plan), bytes(new_cache)


def _read_cache(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise StagedxError(f"cannot read timing cache {path}: {exc}") from exc
