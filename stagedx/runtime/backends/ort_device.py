"""Device-resident KV store for ONNX Runtime on CUDA: the caches never leave the GPU.

Keys and values are each one device OrtValue ``[L, R + max_context, H, D]`` (zero-filled);
layer ``l``'s live prefix starts at ``base + l * rows * row_bytes``, so the past is bound by
pointer. New rows land in a device scratch ``[L, T_cap, H, D]``. ``commit(rows)`` moves only
the accepted rows, device to device, with a tiny ONNX graph run on the same execution
provider: ``out.{i} = Gather(src.{i}, rows, axis=0)`` for every layer's K and V, its inputs
bound to the scratch and its outputs bound straight into the cache at ``R + length``.

The ONNX Python package is not a runtime dependency, so that graph is serialised here by hand
(a few protobuf fields). The same code runs on CPU OrtValues, which is how it is tested
without a GPU.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ...errors import ContractError, StagedxError
from .kv import KVShape

ONNX_ELEM = {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.float16): 10}


# -- a minimal protobuf writer for the gather graph ------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _msg(field: int, data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, elem: int, dims: tuple) -> bytes:
    shape = b"".join(_msg(1, _msg(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor = _int(1, elem) + _msg(2, shape)  # TypeProto.Tensor{elem_type, shape}
    return _msg(1, name) + _msg(2, _msg(1, tensor))  # ValueInfoProto{name, TypeProto{tensor}}


def gather_model(n_tensors: int, dtype, row_shape: tuple[int, int]) -> bytes:
    """ModelProto bytes: inputs ``src.{i}`` [T, H, D] and ``rows`` [N] int64, outputs
    ``out.{i}`` = Gather(src.{i}, rows, axis=0) [N, H, D] (opset 13, IR 8)."""
    elem = ONNX_ELEM[np.dtype(dtype)]
    nodes = b"".join(
        _msg(1, _msg(1, f"src.{i}") + _msg(1, "rows") + _msg(2, f"out.{i}") + _msg(4, "Gather"))
        for i in range(n_tensors)
    )
    inputs = b"".join(_msg(11, _value_info(f"src.{i}", elem, ("T", *row_shape))) for i in range(n_tensors))
    inputs += _msg(11, _value_info("rows", ONNX_ELEM[np.dtype(np.int64)], ("N",)))
    outputs = b"".join(_msg(12, _value_info(f"out.{i}", elem, ("N", *row_shape))) for i in range(n_tensors))
    graph = nodes + _msg(2, "stagedx_kv_gather") + inputs + outputs
    opset = _msg(1, "") + _int(2, 13)
    return _int(1, 8) + _msg(7, graph) + _msg(8, opset)


def gather_providers(providers) -> list:
    """The gather graph's providers: the model session's own, with their options (the
    ``device_id`` above all: the gather must run on the GPU that holds the cache), minus
    TensorRT (a Gather needs no engine build, and TensorRT may be absent: CUDA EP runs it)."""
    return [p for p in providers if (p if isinstance(p, str) else p[0]) != "TensorrtExecutionProvider"]


class DeviceKV:
    """KV store as device OrtValues, bound by pointer; same protocol as ``HostKV``.
    ``providers``: the model session's providers list as it was asked for (names with
    options); by default the names the session reports."""

    def __init__(self, shape: KVShape, binder, providers=None):
        self.shape = shape
        self.where, self.dev_id = binder.device_type, binder.device_id
        full = (shape.n_layers, shape.rows, shape.n_heads, shape.head_dim)
        # Zero-filled (masked rows must hold finite values). A GPU OrtValue is a copy of the
        # zeros, which are then dropped; a CPU OrtValue aliases them, so they are kept alive.
        zeros_k = np.zeros(full, shape.np_dtype)
        zeros_v = np.zeros(full, shape.np_dtype) if self.where == "cpu" else zeros_k
        self.keys = ort.OrtValue.ortvalue_from_numpy(zeros_k, self.where, self.dev_id)
        self.values = ort.OrtValue.ortvalue_from_numpy(zeros_v, self.where, self.dev_id)
        self._host_alias = (zeros_k, zeros_v) if self.where == "cpu" else ()
        self.row_bytes = shape.n_heads * shape.head_dim * np.dtype(shape.np_dtype).itemsize
        layer_bytes = shape.rows * self.row_bytes
        self._k_ptr = [self.keys.data_ptr() + i * layer_bytes for i in range(shape.n_layers)]
        self._v_ptr = [self.values.data_ptr() + i * layer_bytes for i in range(shape.n_layers)]
        self._cap = 0
        self._length = 0
        model = gather_model(2 * shape.n_layers, shape.np_dtype, (shape.n_heads, shape.head_dim))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        providers = gather_providers(binder.session.get_providers() if providers is None else providers)
        self._gather = ort.InferenceSession(model, sess_options=opts, providers=providers)
        self._gbind = type(binder)(self._gather, self.where, self.dev_id)

    @property
    def length(self) -> int:
        return self._length

    def ensure(self, t: int) -> None:
        if self._cap < t:
            cap = max(t, 2 * self._cap, 16)
            s = self.shape
            dims = [s.n_layers, cap, s.n_heads, s.head_dim]
            self.scratch_k = ort.OrtValue.ortvalue_from_shape_and_type(dims, s.np_dtype, self.where, self.dev_id)
            self.scratch_v = ort.OrtValue.ortvalue_from_shape_and_type(dims, s.np_dtype, self.where, self.dev_id)
            layer = cap * self.row_bytes
            self._sk_ptr = [self.scratch_k.data_ptr() + i * layer for i in range(s.n_layers)]
            self._sv_ptr = [self.scratch_v.data_ptr() + i * layer for i in range(s.n_layers)]
            self._cap = cap

    def bind_past(self, binder, names) -> None:
        s, dt, w = self.shape, self.shape.np_dtype, self.where
        past = (s.reserved + self._length, s.n_heads, s.head_dim)
        for layer in range(s.n_layers):
            binder.input(names.past_key[layer], w, dt, past, self._k_ptr[layer])
            binder.input(names.past_value[layer], w, dt, past, self._v_ptr[layer])

    def bind_new(self, binder, names, t: int) -> None:
        s, dt, w = self.shape, self.shape.np_dtype, self.where
        new = (t, s.n_heads, s.head_dim)
        for layer in range(s.n_layers):
            binder.output(names.new_key[layer], w, dt, new, self._sk_ptr[layer])
            binder.output(names.new_value[layer], w, dt, new, self._sv_ptr[layer])

    def commit(self, rows: np.ndarray, t: int) -> None:
        """Gather scratch rows ``rows`` (path order) into cache rows ``[length, length + n)``."""
        n = rows.shape[0]
        if n and (rows.min() < 0 or rows.max() >= t):
            raise ContractError(f"commit rows {rows.tolist()} outside the last run's {t} rows")
        if self._length + n > self.shape.max_context:
            raise StagedxError(
                f"context limit reached: {self._length + n} rows do not fit the KV cache of {self.shape.max_context}"
            )
        if n == 0:
            return
        s, dt, w, g = self.shape, self.shape.np_dtype, self.where, self._gbind
        src, dst = (t, s.n_heads, s.head_dim), (n, s.n_heads, s.head_dim)
        offset = (s.reserved + self._length) * self.row_bytes
        g.clear_outputs()
        idx = np.ascontiguousarray(rows, dtype=np.int64)
        g.input("rows", "cpu", np.int64, (n,), idx.ctypes.data)
        for layer in range(s.n_layers):
            for j, (sp, cp) in enumerate(((self._sk_ptr, self._k_ptr), (self._sv_ptr, self._v_ptr))):
                i = 2 * layer + j
                g.input(f"src.{i}", w, dt, src, sp[layer])
                g.output(f"out.{i}", w, dt, dst, cp[layer] + offset)
        g.run()
        self._length += n

    def truncate(self, n: int) -> None:
        n = int(n)
        if not 0 <= n <= self._length:
            raise ContractError(f"cannot truncate to {n}: {self._length} rows committed")
        self._length = n

    def prefix_host(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the live prefix ``[L, R + length, H, D]`` (for tests and debugging)."""
        end = self.shape.reserved + self._length
        return self.keys.numpy()[:, :end], self.values.numpy()[:, :end]
