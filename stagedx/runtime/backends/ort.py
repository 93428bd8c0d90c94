"""The ONNX Runtime runner: the runner interface (``runner.py``) on an ``InferenceSession``.

Every call goes through one reused IOBinding, bound by raw pointer, so nothing is copied on
the way in and the graph writes its outputs straight into buffers this runner owns:

- inputs: ``input_ids`` / ``position_ids`` (the caller's int64 arrays), ``tree_mask`` (a view
  of a preallocated buffer, ``[T, R + P + T]``: reserved columns False, committed prefix True,
  the new tokens' part = the caller's ``[T, T]`` mask), ``past_*.{l}`` = the KV store's live
  prefix ``[R + length, H, D]`` (a view, no copy);
- outputs: ``topk_*`` into preallocated ``[T_cap, K]`` buffers (copied out, small),
  ``new_*.{l}`` into scratch ``[L, T_cap, H, D]`` kept for ``commit(rows)``; ``logits`` is
  only bound (into a fresh ``[T, V]`` array) when asked for.

On CPU the KV store is the NumPy ``KVCache`` (``kv.py``). On CUDA it is ``DeviceKV``
(``ort_device.py``): device OrtValues that never leave the GPU between calls.
Buffers grow (doubling) when a call needs more rows than any call before it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ...errors import ContractError, StagedxError
from ...manifest import GraphIO, ModelEntry
from ..device import DeviceChoice, check_providers, resolve_device
from ..runner import FETCH_LOGITS, FETCH_TOPK, RunOutput
from .kv import NP_DTYPES, KVCache, KVShape

BACKEND = "onnxruntime"


_GLOBAL_POOL: dict = {}  # {"threads": n} once use_global_thread_pool() succeeded


def use_global_thread_pool(threads: int) -> bool:
    """Opt in to one process-wide ONNX Runtime thread pool shared by every session.

    Oracle and draft sessions alternate several times per token. With a pool each, the
    workers of one spin after its run and steal the cores the other needs next (measured on
    2 cores: oracle T=16 + 2 draft calls of T=12 took 17 ms with spinning per-session pools,
    9 ms without spinning, 8.5 ms with one shared pool; a lone T=1 oracle call 3.3 / 3.5 /
    3.3 ms). ORT allows a global pool only before its environment exists, and then EVERY
    session in the process must use it, so only a program that owns its process should call
    this (the ``stagedx generate`` and ``stagedx bench`` commands do). Returns whether the
    pool is in use. Without it, sessions get their own pools with spinning disabled.
    """
    if "threads" not in _GLOBAL_POOL:
        try:
            ort.set_global_thread_pool_sizes(int(threads), 1)
            _GLOBAL_POOL["threads"] = int(threads)
        except Exception:  # noqa: BLE001 - ORT's environment already exists in this process
            _GLOBAL_POOL["threads"] = 0
    return bool(_GLOBAL_POOL["threads"])


def process_owner_thread_pool(threads: int | None) -> bool:
    """For commands that own their process (``generate``, ``bench``, ``tune``): use the global
    pool unless ``STAGEDX_ORT_GLOBAL_POOL=0`` (set by the test suite, which also runs other
    ONNX Runtime sessions in the same process)."""
    if os.environ.get("STAGEDX_ORT_GLOBAL_POOL", "1") == "0":
        return False
    return use_global_thread_pool(int(threads or os.cpu_count() or 1))


def make_session(path: Path, choice: DeviceChoice, threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    n = int(threads or os.cpu_count() or 1)
    if _GLOBAL_POOL.get("threads"):
        opts.use_per_session_threads = False
    else:
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(choice.providers))
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise StagedxError(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0]}") from exc


class Binder:
    """Bind-by-pointer on one IOBinding, via the C-level object when this ORT exposes it
    (the public wrapper rebuilds an OrtDevice and runs capture checks on every call)."""

    def __init__(self, session: ort.InferenceSession, device_type: str, device_id: int):
        self.session = session
        self.io = session.io_binding()
        self._c_io = getattr(self.io, "_iobinding", None)
        self._c_sess = getattr(session, "_sess", None)
        self.fast = self._c_io is not None and self._c_sess is not None
        self.dev = {d: ort.OrtDevice.make(d, device_id if d != "cpu" else 0) for d in {"cpu", device_type}}
        self._c_dev = {d: dev._get_c_device() for d, dev in self.dev.items()} if self.fast else {}
        self.device_type, self.device_id = device_type, device_id

    def input(self, name: str, where: str, dtype, shape, ptr: int) -> None:
        if self.fast:
            self._c_io.bind_input(name, self._c_dev[where], dtype, shape, ptr)
        else:
            self.io.bind_input(name, where, self._id(where), dtype, shape, ptr)

    def output(self, name: str, where: str, dtype, shape, ptr: int) -> None:
        if self.fast:
            self._c_io.bind_output(name, self._c_dev[where], dtype, shape, ptr)
        else:
            self.io.bind_output(name, where, self._id(where), dtype, shape, ptr)

    def array_output(self, name: str, arr: np.ndarray) -> None:
        self.output(name, "cpu", arr.dtype.type, arr.shape, arr.ctypes.data)

    def clear_outputs(self) -> None:
        self.io.clear_binding_outputs()

    def run(self) -> None:
        if self.fast:
            self._c_sess.run_with_iobinding(self._c_io, None)
        else:
            self.session.run_with_iobinding(self.io)

    def _id(self, where: str) -> int:
        return 0 if where == "cpu" else self.device_id


class HostKV:
    """KV store on the host: a ``KVCache`` plus scratch for the last run's new rows. Layer
    base addresses are computed once (and again when the scratch grows): binding is then a
    handful of integer operations per layer."""

    where = "cpu"

    def __init__(self, shape: KVShape):
        self.cache = KVCache(shape)
        self.shape = shape
        self._k_ptr = _layer_ptrs(self.cache.keys)
        self._v_ptr = _layer_ptrs(self.cache.values)
        self.scratch_k = self.scratch_v = np.zeros((shape.n_layers, 0, shape.n_heads, shape.head_dim), shape.np_dtype)

    @property
    def length(self) -> int:
        return self.cache.length

    def ensure(self, t: int) -> None:
        if self.scratch_k.shape[1] < t:
            cap = max(t, 2 * self.scratch_k.shape[1], 16)
            s = self.shape
            self.scratch_k = np.zeros((s.n_layers, cap, s.n_heads, s.head_dim), s.np_dtype)  # [L, cap, H, D]
            self.scratch_v = np.zeros_like(self.scratch_k)
            self._sk_ptr, self._sv_ptr = _layer_ptrs(self.scratch_k), _layer_ptrs(self.scratch_v)

    def bind_past(self, binder: Binder, names: GraphIO) -> None:
        """Past = the live prefix of each layer (its shape changes with every commit)."""
        s, dt = self.shape, self.shape.np_dtype
        past = (s.reserved + self.cache.length, s.n_heads, s.head_dim)
        bin_ = binder.input
        for layer in range(s.n_layers):
            bin_(names.past_key[layer], "cpu", dt, past, self._k_ptr[layer])
            bin_(names.past_value[layer], "cpu", dt, past, self._v_ptr[layer])

    def bind_new(self, binder: Binder, names: GraphIO, t: int) -> None:
        """New rows -> scratch ``[:, :t]`` (unchanged while T and the scratch are)."""
        s, dt = self.shape, self.shape.np_dtype
        new = (t, s.n_heads, s.head_dim)
        bout = binder.output
        for layer in range(s.n_layers):
            bout(names.new_key[layer], "cpu", dt, new, self._sk_ptr[layer])
            bout(names.new_value[layer], "cpu", dt, new, self._sv_ptr[layer])

    def commit(self, rows: np.ndarray, t: int) -> None:
        self.cache.commit(self.scratch_k[:, :t], self.scratch_v[:, :t], rows)

    def truncate(self, n: int) -> None:
        self.cache.truncate(n)


def _layer_ptrs(a: np.ndarray) -> list[int]:
    """Address of ``a[l]`` for every layer ``l`` of a C-contiguous ``[L, ...]`` array."""
    assert a.flags.c_contiguous
    base = a.ctypes.data
    return [base + layer * a.strides[0] for layer in range(a.shape[0])]


def check_io(io: GraphIO, session: ort.InferenceSession, what: str) -> None:
    """Every input and output of the graph contract must be in the session."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    want_in, want_out = set(io.inputs), set(io.outputs)
    if want_in - have_in or want_out - have_out:
        raise StagedxError(
            f"{what} does not follow the graph contract: missing inputs "
            f"{sorted(want_in - have_in)}, missing outputs {sorted(want_out - have_out)}"
        )


class OrtRunner:
    """Runner interface on ONNX Runtime (CPU EP by default; CUDA / TensorRT EPs when installed)."""

    backend = BACKEND

    def __init__(
        self,
        bundle_dir: str | Path,
        entry: ModelEntry,
        device: str = "cpu",
        threads: int | None = None,
        max_context: int | None = None,
        reserved_slots: int = 0,
    ):
        self.entry = entry
        path = Path(bundle_dir) / entry.file
        if not path.is_file():
            raise StagedxError(f"bundle file missing: {path}")
        choice = resolve_device(device)
        self.session = make_session(path, choice, threads)
        self.threads = _GLOBAL_POOL.get("threads") or int(threads or os.cpu_count() or 1)  # really used
        choice = check_providers(choice, self.session.get_providers())
        self.device = choice.name
        self.names = entry.graph_io
        check_io(self.names, self.session, entry.file)
        a = entry.arch
        limit = a.max_positions
        self.max_context = limit if max_context is None else max(1, min(int(max_context), limit))
        self.reserved = int(reserved_slots)
        shape = KVShape(a.n_layers, a.n_kv_heads, a.head_dim, self.max_context, self.reserved, entry.dtype)
        self._dtype = NP_DTYPES[entry.dtype]
        self._binder = Binder(self.session, "cpu" if choice.kind == "cpu" else "cuda", choice.index)
        self._kv = HostKV(shape) if choice.kind == "cpu" else _device_kv(shape, self._binder, choice.providers)
        self._cap = 0  # tokens per call the buffers below hold
        self._out_key = self._in_key = None  # what the bound outputs / ids and positions fit
        self._grow(16)
        self._last_t: int | None = None  # rows of the last run, awaiting commit

    # -- runner interface ----------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self._open().length

    def _open(self):
        """The KV cache, or a ContractError once ``close()`` released it."""
        if self._kv is None:
            raise ContractError(f"the {self.entry.role} runner was closed; it cannot be used again")
        return self._kv

    def run(
        self,
        tokens: np.ndarray,  # [T] int64
        positions: np.ndarray,  # [T] int64
        tree_mask: np.ndarray,  # [T, T] bool
        fetch: Sequence[str] = (FETCH_TOPK,),
    ) -> RunOutput:
        self._open()
        t = len(tokens)
        if t == 0 or np.shape(tokens) != (t,) or np.shape(positions) != (t,) or np.shape(tree_mask) != (t, t):
            raise ContractError(
                f"run shapes disagree: tokens {np.shape(tokens)}, positions {np.shape(positions)}, "
                f"tree_mask {np.shape(tree_mask)}"
            )
        if t > self._cap:
            self._grow(t)
        self._ids[:t] = tokens  # copies into the bound buffers (int64)
        self._pos[:t] = positions
        past = self.reserved + self._kv.length
        width = past + t
        mask = self._mask[: t * width].reshape(t, width)  # [T, R + P + T]
        mask[:, : self.reserved] = False
        mask[:, self.reserved : past] = True
        mask[:, past:] = tree_mask
        b, nm, p = self._binder, self.names, self._ptr
        topv, topi = self._topv[:t], self._topi[:t]
        want_topk, want_logits = FETCH_TOPK in fetch, FETCH_LOGITS in fetch
        # Bindings persist between runs: outputs and ids / positions are rebound only when
        # T, the fetch set or the buffers changed (a baseline decode rebinds mask and past only).
        out_key = (t, want_topk, self._cap)
        if want_logits or out_key != self._out_key:
            b.clear_outputs()
            self._kv.bind_new(b, nm, t)
            if want_topk:
                b.output(nm.topk_values, "cpu", self._dtype, topv.shape, p["topv"])
                b.output(nm.topk_indices, "cpu", np.int64, topi.shape, p["topi"])
            self._out_key = None if want_logits else out_key  # a fresh logits array each call
        if (t, self._cap) != self._in_key:
            b.input(nm.input_ids, "cpu", np.int64, (t,), p["ids"])
            b.input(nm.position_ids, "cpu", np.int64, (t,), p["pos"])
            self._in_key = (t, self._cap)
        b.input(nm.tree_mask, "cpu", np.bool_, (t, width), p["mask"])
        self._kv.bind_past(b, nm)
        logits = None
        if want_logits:
            logits = np.empty((t, self.entry.arch.vocab_size), self._dtype)  # [T, V]
            b.array_output(nm.logits, logits)
        self._last_t = None
        b.run()
        self._last_t = t
        if not want_topk:
            return RunOutput(logits=_f32(logits))
        return RunOutput(
            topk_values=topv.astype(np.float32),  # copies: the buffers are reused next call
            topk_indices=topi.copy(),
            logits=_f32(logits),
        )

    def commit(self, rows: Sequence[int] | np.ndarray) -> None:
        kv = self._open()
        if self._last_t is None:
            raise ContractError("commit() needs a run() first")
        kv.commit(np.asarray(rows, dtype=np.int64).reshape(-1), self._last_t)

    def truncate(self, length: int) -> None:
        self._open().truncate(length)

    def close(self) -> None:
        """Release the session, its bindings and the KV cache; idempotent. A closed runner
        cannot run again (``run``, ``commit``, ``truncate`` raise ContractError)."""
        self.session = self._binder = self._kv = None
        self._ids = self._pos = self._mask = self._topv = self._topi = None
        self._last_t = None

    # -- buffers -------------------------------------------------------------------------------
    def _grow(self, t: int) -> None:
        """(Re)allocate the per-call buffers for calls of up to ``t`` tokens (doubling)."""
        cap = max(t, 2 * self._cap)
        self._kv.ensure(cap)
        self._ids = np.zeros(cap, np.int64)  # [T_cap]
        self._pos = np.zeros(cap, np.int64)  # [T_cap]
        self._mask = np.zeros(cap * (self.reserved + self.max_context + cap), dtype=bool)  # [T, R+P+T] flat
        self._topv = np.zeros((cap, self.entry.topk), self._dtype)  # [T_cap, K]
        self._topi = np.zeros((cap, self.entry.topk), np.int64)  # [T_cap, K]
        arrays = {"ids": self._ids, "pos": self._pos, "mask": self._mask, "topv": self._topv, "topi": self._topi}
        self._ptr = {k: a.ctypes.data for k, a in arrays.items()}
        self._cap = cap


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return a if a is None or a.dtype == np.float32 else a.astype(np.float32)


def _device_kv(shape: KVShape, binder: Binder, providers):
    from .ort_device import DeviceKV  # only GPU sessions need it

    return DeviceKV(shape, binder, providers)
