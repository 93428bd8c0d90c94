"""The TensorRT runner: the runner interface on a TensorRT engine with device-resident KV.

NOT YET RUN ON HARDWARE: written against the TensorRT 10.x/11.x and cuda-python APIs as
documented; its device-independent logic (engine selection, chunking, masks, bindings, commit
planning) is unit-tested on CPU, and its calls are exercised against a stand-in in the tests.

Layout. Each layer's K and V caches are one device allocation of ``R + max_context`` rows of
``[H, D]`` (``R = kv_reserved_slots["tensorrt"]`` zero-filled dummy rows, always masked out,
so the past bound is never empty). A run of T tokens on top of ``length`` committed rows binds
``past_* = cache[0 : R + length]`` (a prefix view: the base pointer and shape, no copy) and
writes ``new_* `` straight into ``cache[R + length : R + length + T]``. ``commit(rows)`` then
moves only the accepted rows down into ``[R + length, R + length + len(rows))`` device to
device, one ``cudaMemcpyAsync`` per run of consecutive rows; rows already in place are not
copied (a prefill commits with no copy at all). Runs longer than ``max_tree`` (prompts) are
fed in chunks whose past includes the earlier chunks' rows. Only top-k values / indices (and
logits when asked) come back to the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ContractError, StagedxError
from ...manifest import EngineEntry, Manifest, ModelEntry, load_manifest
from ..runner import FETCH_LOGITS, FETCH_TOPK, RunOutput
from .kv import NP_DTYPES

BACKEND = "tensorrt"
INSTALL_HINT = (
    "on a machine with an NVIDIA GPU and CUDA: pip install 'stagedx[trt]' --extra-index-url https://pypi.nvidia.com"
)


# -- lazy imports and device facts ------------------------------------------------------------
def import_tensorrt(what: str):
    try:
        import tensorrt  # lazy by design
    except (ImportError, OSError) as exc:
        raise StagedxError(
            f"{what} needs TensorRT, which is not installed here ({exc}); install it {INSTALL_HINT}"
        ) from exc
    return tensorrt


def import_cudart(what: str):
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (12.6+ / 13) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except (ImportError, OSError) as exc:
            raise StagedxError(
                f"{what} needs cuda-python, which is not installed here ({exc}); install it {INSTALL_HINT}"
            ) from exc
    return cudart


def cuda_check(cudart, result, what: str):
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on an error code."""
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise StagedxError(f"CUDA error in {what}: {err}")
    return values[0] if len(values) == 1 else (values or None)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"


def gpu_info(cudart, device: int = 0) -> GpuInfo:
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        raise StagedxError(
            f"no CUDA GPU is visible ({err}); TensorRT engines need one: run on a CUDA machine ({INSTALL_HINT})"
        )
    if device >= count:
        raise StagedxError(f"CUDA device {device} requested but only {count} visible")
    prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return GpuInfo(str(name).strip(), f"{prop.major}.{prop.minor}")


# -- engine records ------------------------------------------------------------------------
def engine_mismatch(record: EngineEntry, gpu: GpuInfo, trt_version: str) -> str | None:
    """Why ``record`` cannot run here (one line), or ``None`` when it can."""
    built = f"{record.gpu_name} (sm {record.compute_capability})"
    if record.tensorrt_version != trt_version:
        return (
            f"{record.role} engine {record.file} was built with TensorRT "
            f"{record.tensorrt_version}, this machine has TensorRT {trt_version}"
        )
    if record.gpu_name != gpu.name or record.compute_capability != gpu.compute_capability:
        return (
            f"{record.role} engine {record.file} was built for {built}, "
            f"this machine has {gpu.name} (sm {gpu.compute_capability})"
        )
    return None


def select_engine(manifest: Manifest, role: str, gpu: GpuInfo, trt_version: str) -> EngineEntry:
    """The manifest's engine for ``role`` on this GPU and TensorRT, or a clear refusal."""
    records = [r for r in manifest.engines if r.role == role]
    if not records:
        raise StagedxError(
            f"the bundle has no TensorRT engine for the {role}; run `stagedx build-engine BUNDLE` on this machine"
        )
    reasons = []
    for r in records:
        why = engine_mismatch(r, gpu, trt_version)
        if why is None:
            return r
        reasons.append(why)
    raise StagedxError(f"{reasons[0]}; rebuild with `stagedx build-engine BUNDLE` here")


def tensorrt_unusable(manifest: Manifest, roles: Sequence[str] = ("oracle", "draft")) -> str | None:
    """``None`` when TensorRT, cuda-python, a GPU and engines for it are all present (what
    ``device="auto"`` asks before picking TensorRT), else the first reason why not."""
    try:
        trt, rt = _import_api("the TensorRT runner")
        gpu = gpu_info(rt)
        for role in roles:
            select_engine(manifest, role, gpu, str(trt.__version__))
    except StagedxError as exc:
        return str(exc)
    return None


# -- pure planning ------------------------------------------------------------------------------
def plan_chunks(t: int, max_tree: int) -> list[tuple[int, int]]:
    """``[start, stop)`` pieces of at most ``max_tree`` new tokens."""
    if t < 1:
        raise ContractError("a run needs at least one token")
    return [(s, min(s + max_tree, t)) for s in range(0, t, max_tree)]


def chunk_mask(tree_mask: np.ndarray, span: tuple[int, int], length: int, reserved: int) -> np.ndarray:
    """The graph's ``[t, R + length + stop]`` mask for rows ``[start, stop)`` of a run:
    reserved columns masked, committed columns visible, run columns from ``tree_mask``."""
    start, stop = span
    t = stop - start
    m = np.zeros((t, reserved + length + stop), dtype=bool)
    m[:, reserved : reserved + length] = True
    m[:, reserved + length :] = tree_mask[start:stop, :stop]
    return m


@dataclass(frozen=True)
class CopyRun:
    src: int  # first source row (absolute cache row)
    dst: int  # first destination row
    n: int  # rows


def plan_commit(rows: Sequence[int], base: int, t: int) -> list[CopyRun]:
    """Device-to-device copies that move run rows ``rows`` (strictly increasing tree indices,
    path order) from ``base + rows[j]`` to ``base + j``. Rows already in place are skipped;
    every copy's source and destination are disjoint, and no copy reads a row an earlier copy
    wrote (sources only move down)."""
    rows = [int(r) for r in rows]
    if any(not 0 <= r < t for r in rows):
        raise ContractError(f"commit rows {rows} outside the last run's {t} rows")
    if any(b <= a for a, b in zip(rows, rows[1:])):
        raise ContractError(f"commit rows must be strictly increasing (path order), got {rows}")
    plan: list[CopyRun] = []
    j = 0
    while j < len(rows):
        k = j
        while k + 1 < len(rows) and rows[k + 1] == rows[k] + 1:
            k += 1
        src, dst, n = base + rows[j], base + j, k - j + 1
        shift = src - dst
        if shift:  # split so that no piece overlaps itself (cudaMemcpy needs disjoint ranges)
            for off in range(0, n, shift):
                plan.append(CopyRun(src + off, dst + off, min(shift, n - off)))
        j = k + 1
    return plan


@dataclass(frozen=True)
class DeviceLayout:
    """Device addresses and sizes the runner allocated (plain integers)."""

    k_cache: tuple[int, ...]  # one base pointer per layer
    v_cache: tuple[int, ...]
    row_bytes: int  # bytes of one [H, D] KV row
    inputs: dict  # io key ("input_ids", "position_ids", "tree_mask") -> pointer
    outputs: dict  # io key ("logits", "topk_values", "topk_indices") -> pointer


def plan_bindings(entry: ModelEntry, layout: DeviceLayout, past_rows: int, t: int) -> dict:
    """``name -> (address, shape or None)`` for one execution: the past is the cache prefix of
    ``past_rows`` rows (pointer = cache base), new K/V land right after it. Shapes are given
    for inputs only (``set_input_shape``)."""
    a, io = entry.arch, entry.graph_io
    kv = (a.n_kv_heads, a.head_dim)
    plan = {
        io.input_ids: (layout.inputs["input_ids"], (t,)),  # [T]
        io.position_ids: (layout.inputs["position_ids"], (t,)),  # [T]
        io.tree_mask: (layout.inputs["tree_mask"], (t, past_rows + t)),  # [T, P+T]
    }
    for key in ("logits", "topk_values", "topk_indices"):
        plan[getattr(io, key)] = (layout.outputs[key], None)
    new_off = past_rows * layout.row_bytes
    for i in range(a.n_layers):
        for past, new, base in (
            (io.past_key[i], io.new_key[i], layout.k_cache[i]),
            (io.past_value[i], io.new_value[i], layout.v_cache[i]),
        ):
            plan[past] = (base, (past_rows, *kv))  # [P, H, D]
            plan[new] = (base + new_off, None)  # [T, H, D] right after the past
    return plan


# -- the runner -----------------------------------------------------------------------------
def _import_api(what: str):
    """(tensorrt, cudart) - the only place the runner imports them."""
    return import_tensorrt(what), import_cudart(what)


class TrtRunner:
    """Runner interface (see ``runner.py``) on a TensorRT engine; ``device="tensorrt"``."""

    backend = BACKEND

    def __init__(
        self,
        bundle: str | Path,
        role: str,
        max_context: int | None = None,
        device_index: int = 0,
        manifest: Manifest | None = None,
    ):
        self._trt, self._rt = _import_api("the TensorRT runner")
        self.bundle = Path(bundle)
        manifest = manifest or load_manifest(self.bundle)
        self.entry: ModelEntry = manifest.models[role]
        rt = self._rt
        cuda_check(rt, rt.cudaSetDevice(device_index), "cudaSetDevice")
        gpu = gpu_info(rt, device_index)
        self.record = select_engine(manifest, role, gpu, str(self._trt.__version__))
        self.device = f"cuda:{device_index}"
        self.reserved = int(self.record.reserved_slots)
        self.max_tree = int(self.record.max_tree)
        limit = int(self.record.max_context)
        self.max_context = limit if max_context is None else min(int(max_context), limit)
        self._length = 0
        self._last: tuple[int, int] | None = None  # (length at run, T) awaiting commit
        self._allocs: list[int] = []
        self._engine, self._context = self._load_engine()
        self._np_dtype = NP_DTYPES[self.entry.dtype]
        self.stream = cuda_check(rt, rt.cudaStreamCreate(), "cudaStreamCreate")
        self.layout = self._allocate()

    # -- setup ---------------------------------------------------------------------------------
    def _load_engine(self):
        trt = self._trt
        data = (self.bundle / self.record.file).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise StagedxError(
                f"TensorRT could not deserialize {self.record.file}; rebuild "
                "it with `stagedx build-engine BUNDLE` on this machine"
            )
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        expected = set(plan_bindings(self.entry, _dummy_layout(self.entry), 1, 1))
        if names != expected:
            raise StagedxError(
                f"engine {self.record.file} I/O does not match the graph "
                f"contract: missing {sorted(expected - names)}, extra "
                f"{sorted(names - expected)}"
            )
        context = engine.create_execution_context()
        if context is None:
            raise StagedxError("TensorRT could not create an execution context (out of GPU memory?)")
        return engine, context

    def _malloc(self, nbytes: int) -> int:
        ptr = int(cuda_check(self._rt, self._rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))
        self._allocs.append(ptr)
        return ptr

    def _allocate(self) -> DeviceLayout:
        a, rt = self.entry.arch, self._rt
        item = np.dtype(self._np_dtype).itemsize
        row_bytes = a.n_kv_heads * a.head_dim * item
        rows = self.reserved + self.max_context
        caches = []
        for _ in range(2 * a.n_layers):
            ptr = self._malloc(rows * row_bytes)
            # dummy rows must hold finite values: masked scores times NaN would still be NaN
            cuda_check(rt, rt.cudaMemset(ptr, 0, rows * row_bytes), "cudaMemset")
            caches.append(ptr)
        tm, k = self.max_tree, self.entry.topk
        inputs = {
            "input_ids": self._malloc(tm * 8),
            "position_ids": self._malloc(tm * 8),
            "tree_mask": self._malloc(tm * (rows + tm)),
        }
        outputs = {
            "logits": self._malloc(tm * a.vocab_size * item),
            "topk_values": self._malloc(tm * k * item),
            "topk_indices": self._malloc(tm * k * 8),
        }
        return DeviceLayout(tuple(caches[0::2]), tuple(caches[1::2]), row_bytes, inputs, outputs)

    # -- runner interface ------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self._length

    def _check_open(self) -> None:
        if not self._allocs:
            raise ContractError(f"the {self.entry.role} runner was closed; it cannot be used again")

    def run(self, tokens, positions, tree_mask, fetch: Sequence[str] = (FETCH_TOPK,)) -> RunOutput:
        self._check_open()
        tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        tree_mask = np.asarray(tree_mask, dtype=bool)
        t = tokens.shape[0]
        if positions.shape != (t,) or tree_mask.shape != (t, t):
            raise ContractError(
                f"run shapes disagree: tokens {tokens.shape}, positions {positions.shape}, tree_mask {tree_mask.shape}"
            )
        if self._length + t > self.max_context:
            raise ContractError(
                f"run of {t} tokens on {self._length} committed rows exceeds the "
                f"TensorRT runner's context of {self.max_context}"
            )
        want_logits = FETCH_LOGITS in fetch
        host = self._host_outputs(t, want_logits)
        keep = []  # host inputs must outlive their async copies
        for span in plan_chunks(t, self.max_tree):
            keep.append(self._run_chunk((tokens, positions, tree_mask), span, host, want_logits))
        cuda_check(self._rt, self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        self._last = (self._length, t)
        return RunOutput(
            topk_values=host["topk_values"].astype(np.float32),
            topk_indices=host["topk_indices"],
            logits=host["logits"].astype(np.float32) if want_logits else None,
        )

    def _host_outputs(self, t: int, want_logits: bool) -> dict:
        k, v = self.entry.topk, self.entry.arch.vocab_size
        out = {"topk_values": np.empty((t, k), self._np_dtype), "topk_indices": np.empty((t, k), np.int64)}
        out["logits"] = np.empty((t, v), self._np_dtype) if want_logits else None
        return out

    def _run_chunk(self, inputs, span, host: dict, want_logits: bool) -> list:
        tokens, positions, tree_mask = inputs
        start, stop = span
        t = stop - start
        past_rows = self.reserved + self._length + start
        feeds = {
            "input_ids": np.ascontiguousarray(tokens[start:stop]),
            "position_ids": np.ascontiguousarray(positions[start:stop]),
            "tree_mask": chunk_mask(tree_mask, span, self._length, self.reserved),
        }
        for key, arr in feeds.items():
            self._copy(self.layout.inputs[key], arr.ctypes.data, arr.nbytes, "HostToDevice")
        ctx = self._context
        for name, (addr, shape) in plan_bindings(self.entry, self.layout, past_rows, t).items():
            if shape is not None and not ctx.set_input_shape(name, shape):
                raise StagedxError(
                    f"TensorRT rejected shape {shape} for {name} (outside the "
                    "engine's profile; rebuild with larger --max-context)"
                )
            if not ctx.set_tensor_address(name, addr):
                raise StagedxError(f"TensorRT rejected the address of {name}")
        if not ctx.execute_async_v3(int(self.stream)):
            raise StagedxError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        keys = ("topk_values", "topk_indices") + (("logits",) if want_logits else ())
        for key in keys:
            dst = host[key][start:stop]
            self._copy(dst.ctypes.data, self.layout.outputs[key], dst.nbytes, "DeviceToHost")
        return list(feeds.values())

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        rt = self._rt
        kind_enum = getattr(rt.cudaMemcpyKind, f"cudaMemcpy{kind}")
        cuda_check(rt, rt.cudaMemcpyAsync(dst, src, nbytes, kind_enum, self.stream), "cudaMemcpyAsync")

    def commit(self, rows) -> None:
        self._check_open()
        if self._last is None or self._last[0] != self._length:
            raise ContractError("commit() needs a run() since the last commit/truncate")
        _, t = self._last
        rows = list(np.asarray(rows, dtype=np.int64).reshape(-1))
        base = self.reserved + self._length
        rb = self.layout.row_bytes
        for run in plan_commit(rows, base, t):
            for cache in self.layout.k_cache + self.layout.v_cache:
                self._copy(cache + run.dst * rb, cache + run.src * rb, run.n * rb, "DeviceToDevice")
        self._length += len(rows)
        self._last = None

    def truncate(self, length: int) -> None:
        self._check_open()
        if not 0 <= length <= self._length:
            raise ContractError(f"cannot truncate to {length}: {self._length} rows are committed")
        self._length = int(length)
        self._last = None

    def close(self) -> None:
        """Free the GPU buffers and the stream; idempotent. A closed runner cannot run again
        (``run``, ``commit``, ``truncate`` raise ContractError)."""
        rt = self._rt
        if self._allocs:
            rt.cudaStreamSynchronize(self.stream)
            for ptr in self._allocs:
                rt.cudaFree(ptr)
            self._allocs = []
            rt.cudaStreamDestroy(self.stream)

    def __del__(self):  # best effort; close() is the explicit way
        with contextlib.suppress(Exception):
            self.close()


def _dummy_layout(entry: ModelEntry) -> DeviceLayout:
    n = entry.arch.n_layers
    zero = dict.fromkeys(("input_ids", "position_ids", "tree_mask"), 0)
    outs = dict.fromkeys(("logits", "topk_values", "topk_indices"), 0)
    return DeviceLayout((0,) * n, (0,) * n, 0, zero, outs)
