"""GGUF block-quantized weights carried into ONNX Runtime's ``MatMulNBits`` as they are.

``--quantize gguf`` (a GGUF input only): instead of dequantizing the file's Q4_0 / Q4_1 / Q8_0
blocks and quantizing the fp32 graph again (a second rounding, to a grid that need not match
the file's), every MatMul whose constant weight came from such blocks becomes a
``MatMulNBits`` holding the file's own codes and scales, block size 32 along K:

============  =========================  ==========================================
GGUF type     value of code q            MatMulNBits (value = (q - zero_point) * scale)
============  =========================  ==========================================
Q4_0          ``(q - 8) * d``            4 bits, scale d, zero point 8 (the default)
Q4_1          ``q * d + m``              4 bits, scale d, float zero point ``-m / d``
Q8_0          ``q * d`` (q signed)       8 bits, code q + 128, scale d, zero point 128
============  =========================  ==========================================

So the quantized graph's weights are the file's values (Q4_1 up to the rounding of
``-m/d`` in fp32). A fused weight of our graph (q|k|v, gate|up, the tied head's W^T) is found
row by row: each output row of the fp32 initializer equals, bit for bit, one row of a GGUF
tensor dequantized by the ``gguf`` package (export built the fp32 graph from those very values),
which also undoes llama.cpp's Q/K row permutation without knowing it. Rows of different types
share one ``MatMulNBits`` when they can: Q4_0 with Q4_1 (float zero points), Q4_0 with Q8_0
(8 bits). A weight that cannot be carried (F16/F32, K-quants, Q4_1 mixed with Q8_0, which
ONNX Runtime's CPU kernel refuses: 8 bits with float zero points) stays fp32, and is counted.

The embedding ``Gather`` keeps the fp32 table: its values are already exactly the file's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StagedxError

BLOCK = 32
CARRIED_TYPES = ("Q4_0", "Q4_1", "Q8_0")
_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}  # bytes per block of 32


@dataclass(frozen=True)
class Blocks:
    """One weight as MatMulNBits needs it: rows = output features N, blocks along K."""

    codes: np.ndarray  # [N, K/32, 32] uint8 unsigned codes
    scales: np.ndarray  # [N, K/32] float32
    zeros: np.ndarray  # [N, K/32] float32 zero points (in code units)
    types: np.ndarray  # [N] index into CARRIED_TYPES


def decode_rows(raw: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [R, nb, 32] uint8, scales [R, nb] f32, zeros [R, nb] f32) of GGUF rows ``raw``
    ([R, nb * bytes per block] uint8) of one of :data:`CARRIED_TYPES`."""
    r = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(r, -1, _BYTES[type_name])  # [R, nb, bytes]
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # [R, nb]
    if type_name == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128  # [R, nb, 32]
        return q.astype(np.uint8), d, np.full(d.shape, 128.0, np.float32)
    qs = blocks[..., 4:] if type_name == "Q4_1" else blocks[..., 2:]  # [R, nb, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint8)  # [R, nb, 32]: j, then j+16
    if type_name == "Q4_0":
        return q, d, np.full(d.shape, 8.0, np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)  # [R, nb]
    zeros = np.zeros_like(d)
    nz = d != 0
    zeros[nz] = -m[nz] / d[nz]
    # d == 0: every value of the block is m (llama.cpp then stores q = 0): scale m, q - zp = 1
    flat = ~nz
    q[flat] = 0
    d = np.where(nz, d, m)
    zeros[flat] = -1.0
    return q, d, zeros


@dataclass
class RowIndex:
    """Dequantized GGUF rows by content: hash(row bytes) -> (tensor name, row)."""

    rows: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # tensor name -> (type name, [R, bytes] uint8)
    skipped: Counter = field(default_factory=Counter)  # types not carried -> tensors

    @staticmethod
    def build(reader) -> RowIndex:
        from gguf import dequantize

        index = RowIndex()
        for t in reader.tensors:
            name = t.tensor_type.name
            if len(t.shape) != 2:
                continue
            if name not in CARRIED_TYPES:
                index.skipped[name] += 1
                continue
            values = dequantize(t.data, t.tensor_type)  # [R, K] float32, as export used them
            index.raw[t.name] = (name, np.asarray(t.data))
            for i in range(values.shape[0]):
                index.rows.setdefault(hash(values[i].tobytes()), (t.name, i))
        return index

    def blocks_for(self, weight_t: np.ndarray) -> Blocks | None:
        """The GGUF blocks of fp32 weight ``weight_t`` [K, N] (a MatMul's right operand), or
        None when a row is not a carried GGUF row."""
        rows = np.ascontiguousarray(weight_t.T)  # [N, K]
        if rows.shape[1] % BLOCK:
            return None
        where = []
        for i in range(rows.shape[0]):
            hit = self.rows.get(hash(rows[i].tobytes()))
            if hit is None:
                return None
            where.append(hit)
        codes, scales, zeros, types = [], [], [], []
        start = 0
        while start < len(where):  # runs of consecutive rows of one tensor, decoded at once
            name = where[start][0]
            end = start
            while end < len(where) and where[end][0] == name:
                end += 1
            type_name, raw = self.raw[name]
            idx = np.asarray([r for _, r in where[start:end]])
            c, s, z = decode_rows(raw[idx], type_name)
            codes.append(c)
            scales.append(s)
            zeros.append(z)
            types.append(np.full(end - start, CARRIED_TYPES.index(type_name)))
            start = end
        return Blocks(np.concatenate(codes), np.concatenate(scales), np.concatenate(zeros), np.concatenate(types))


@dataclass(frozen=True)
class NBits:
    """MatMulNBits inputs and attributes for one weight."""

    bits: int
    b: np.ndarray  # [N, nb, 32 * bits / 8] uint8
    scales: np.ndarray  # [N * nb] float32
    zero_points: np.ndarray | None  # [N * nb] float32, or None for the default 2^(bits-1)


def to_nbits(blk: Blocks) -> NBits | None:
    """Pack ``blk`` for MatMulNBits (None: a mix ONNX Runtime's CPU kernel cannot hold)."""
    kinds = {CARRIED_TYPES[i] for i in np.unique(blk.types)}
    if "Q8_0" in kinds:
        if "Q4_1" in kinds:
            return None  # 8 bits with float zero points: refused by the CPU kernel
        # Q4_0 codes in 8 bits: (q - 8) == (q - 8 + 128) - 128
        codes = np.where((blk.types == CARRIED_TYPES.index("Q4_0"))[:, None, None], blk.codes + 120, blk.codes)
        return NBits(8, codes.astype(np.uint8), blk.scales.reshape(-1), None)
    packed = (blk.codes[..., 0::2] | (blk.codes[..., 1::2] << 4)).astype(np.uint8)  # [N, nb, 16]
    zp = None if kinds == {"Q4_0"} else blk.zeros.reshape(-1).astype(np.float32)
    return NBits(4, packed, blk.scales.reshape(-1), zp)


def dequantized(nb: NBits, k: int) -> np.ndarray:
    """The [N, K] weight a MatMulNBits with ``nb`` computes with (for checks)."""
    codes = nb.b  # [N, nb, 32] for 8 bits
    if nb.bits == 4:
        codes = np.stack([nb.b & 0x0F, nb.b >> 4], axis=-1).reshape(nb.b.shape[0], -1, BLOCK)  # [N, nb, 32]
    n, blocks = codes.shape[0], codes.shape[1]
    zp = np.full(n * blocks, 2.0 ** (nb.bits - 1), np.float32) if nb.zero_points is None else nb.zero_points
    w = (codes.astype(np.float32) - zp.reshape(n, blocks, 1)) * nb.scales.reshape(n, blocks, 1)
    return w.reshape(n, k)


@dataclass(frozen=True)
class CarryReport:
    carried: dict  # bits -> number of MatMuls
    kept_fp32: int  # MatMuls with a constant weight left in fp32
    tensor_types: dict  # GGUF tensor type -> count, of the carried weights' rows
    skipped_types: dict  # GGUF 2-D tensor types not carried -> count

    @property
    def bits(self) -> int:
        return 4 if self.carried.get(4) else 8

    def describe(self) -> str:
        parts = [f"{n} MatMuls carried as {b}-bit blocks" for b, n in sorted(self.carried.items())]
        if self.kept_fp32:
            parts.append(f"{self.kept_fp32} kept fp32")
        return ", ".join(parts)


def _matmul_nbits(node, name: str, nb: NBits, k: int, accuracy_level: int):
    from onnx import helper

    inputs = [node.input[0], f"{name}.B", f"{name}.scales"]
    if nb.zero_points is not None:
        inputs.append(f"{name}.zero_points")
    return helper.make_node(
        "MatMulNBits",
        inputs,
        list(node.output),
        name=node.name or name,
        domain="com.microsoft",
        K=k,
        N=int(nb.b.shape[0]),
        bits=nb.bits,
        block_size=BLOCK,
        accuracy_level=accuracy_level,
    )


def carry_model(model, reader, accuracy_level: int) -> CarryReport:
    """Rewrite ``model`` (onnx ModelProto, weights loaded) in place: every MatMul whose
    constant right operand is made of carried GGUF rows becomes a MatMulNBits."""
    from onnx import helper, numpy_helper

    from .quantize import untie_head

    untie_head(model)
    g = model.graph
    index = RowIndex.build(reader)
    inits = {t.name: t for t in g.initializer}
    users = Counter(i for n in g.node for i in n.input)
    carried, kept, types = Counter(), 0, Counter()
    for pos, node in enumerate(list(g.node)):
        if node.op_type != "MatMul" or node.input[1] not in inits or len(inits[node.input[1]].dims) != 2:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])  # [K, N]
        blk = index.blocks_for(w) if w.dtype == np.float32 else None
        nb = None if blk is None else to_nbits(blk)
        if nb is None:
            kept += 1
            continue
        name = f"gguf{pos}"
        g.initializer.extend(
            [numpy_helper.from_array(nb.b, f"{name}.B"), numpy_helper.from_array(nb.scales, f"{name}.scales")]
        )
        if nb.zero_points is not None:
            g.initializer.append(numpy_helper.from_array(nb.zero_points, f"{name}.zero_points"))
        new = _matmul_nbits(node, name, nb, w.shape[0], accuracy_level)
        idx = list(g.node).index(node)
        g.node.remove(node)
        g.node.insert(idx, new)
        users[node.input[1]] -= 1
        if users[node.input[1]] == 0:
            g.initializer.remove(inits.pop(node.input[1]))
        carried[nb.bits] += 1
        types.update(CARRIED_TYPES[i] for i in np.unique(blk.types))
    if not carried:
        raise StagedxError(
            "--quantize gguf: no weight of the graph is stored in a carried GGUF block type "
            f"({', '.join(CARRIED_TYPES)}); the file has {dict(index.skipped) or 'only unquantized tensors'}"
        )
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return CarryReport(dict(carried), kept, dict(types), dict(index.skipped))


def carry_graph(src: Path, dst: Path, gguf_file: Path, accuracy_level: int) -> tuple[int, Path | None, CarryReport]:
    """Carry ``gguf_file``'s blocks into the fp32 graph ``src``, written to ``dst`` (+ ``.data``
    when large); returns (weight bytes, external data file or None, report)."""
    import onnx

    from .gguf import read_source
    from .quantize import save_quantized

    _, reader = read_source(gguf_file)
    model = onnx.load(str(src))
    report = carry_model(model, reader, accuracy_level)
    del reader
    weight_bytes, data = save_quantized(model, dst)
    return weight_bytes, data, report
