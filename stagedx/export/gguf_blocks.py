"""GGUF block-quantized weights carried into ONNX Runtime's ``MatMulNBits`` as they are.

``--quantize gguf`` (a GGUF input only): instead of dequantizing the file's Q4_0 / Q4_1 / Q8_0
blocks and quantizing the fp32 graph again (a second rounding, to a grid that need not match
the file's), every MatMul whose constant weight came from such blocks becomes a
``MatMulNBits`` holding the file's own codes and scales, block size 32 along K, with the
default zero point (8 for 4 bits, 128 for 8 bits: integer zero points are the only ones ONNX
Runtime's fast CPU kernels take; float zero points run ~100x slower there, and 8 bits with
float zero points are refused):

============  =========================  ==================================================
GGUF type     value of code q            carried as (value = (c - zero point) * scale + o)
============  =========================  ==================================================
Q4_0          ``(q - 8) * d``            4 bits, c = q, scale d, o = 0
Q4_1          ``q * d + m``              4 bits, c = q, scale d, o = m + 8 d
Q8_0          ``q * d`` (q signed)       8 bits, c = q + 128, scale d, o = 0
============  =========================  ==================================================

A block offset ``o`` (Q4_1's minimum) is added outside the kernel: ``x @ W^T`` gains
``blocksum(x) @ O^T``, the sums of ``x`` over each block of 32 (``Reshape`` + ``ReduceSum``)
times the [K/32, N] offsets (a small ``Gemm`` that also adds the kernel's output). So the
quantized graph computes with the file's values, up to fp32 rounding at accuracy level 0; at
level 4 ONNX Runtime quantizes the activations to int8 per block (as llama.cpp does with its
Q8 activations for these types).

A fused weight of our graph (q|k|v, gate|up, the tied head's W^T) is found row by row: each
output row of the fp32 initializer equals, bit for bit, one row of a GGUF tensor dequantized
by the ``gguf`` package (export built the fp32 graph from those very values), which also
undoes llama.cpp's Q/K row permutation without knowing it. Rows of different types share one
``MatMulNBits`` (8 bits when a Q8_0 row is among them: a 4-bit code c becomes c + 120). A weight
that is not made of these types (F16/F32, K-quants, ...) stays fp32, and is counted.

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
_CENTER = {4: 8.0, 8: 128.0}  # MatMulNBits' default zero point per bit width


@dataclass(frozen=True)
class Blocks:
    """One weight's rows (output features N), blocks of 32 along K:
    value = (code - center) * scale + offset, center 8 for Q4_* rows, 128 for Q8_0 rows."""

    codes: np.ndarray  # [N, K/32, 32] uint8
    scales: np.ndarray  # [N, K/32] float32
    offsets: np.ndarray  # [N, K/32] float32
    types: np.ndarray  # [N] index into CARRIED_TYPES


def decode_rows(raw: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [R, nb, 32] uint8, scales [R, nb] f32, offsets [R, nb] f32) of GGUF rows ``raw``
    ([R, nb * bytes per block] uint8) of one of :data:`CARRIED_TYPES`."""
    r = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(r, -1, _BYTES[type_name])  # [R, nb, bytes]
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # [R, nb]
    zero = np.zeros_like(d)
    if type_name == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128  # [R, nb, 32]
        return q.astype(np.uint8), d, zero
    qs = blocks[..., 4:] if type_name == "Q4_1" else blocks[..., 2:]  # [R, nb, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint8)  # [R, nb, 32]: j, then j+16
    if type_name == "Q4_0":
        return q, d, zero
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)  # [R, nb]
    return q, d, m + 8 * d  # q d + m == (q - 8) d + (m + 8 d)


def block_values(codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray, center: float) -> np.ndarray:
    """[R, nb * 32] values of decoded rows."""
    w = (codes.astype(np.float32) - center) * scales[..., None] + offsets[..., None]  # [R, nb, 32]
    return w.reshape(codes.shape[0], -1)


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
        codes, scales, offsets, types = [], [], [], []
        start = 0
        while start < len(where):  # runs of consecutive rows of one tensor, decoded at once
            name = where[start][0]
            end = start
            while end < len(where) and where[end][0] == name:
                end += 1
            type_name, raw = self.raw[name]
            idx = np.asarray([r for _, r in where[start:end]])
            c, s, o = decode_rows(raw[idx], type_name)
            codes.append(c)
            scales.append(s)
            offsets.append(o)
            types.append(np.full(end - start, CARRIED_TYPES.index(type_name)))
            start = end
        return Blocks(np.concatenate(codes), np.concatenate(scales), np.concatenate(offsets), np.concatenate(types))


@dataclass(frozen=True)
class NBits:
    """MatMulNBits inputs and attributes for one weight (default zero points), plus the block
    offsets added outside the kernel."""

    bits: int
    b: np.ndarray  # [N, nb, 32 * bits / 8] uint8
    scales: np.ndarray  # [N * nb] float32
    offsets: np.ndarray | None  # [N, nb] float32, or None when all zero


def to_nbits(blk: Blocks) -> NBits:
    """Pack ``blk`` for MatMulNBits: 8 bits when any row is Q8_0, else 4."""
    q8 = blk.types == CARRIED_TYPES.index("Q8_0")  # [N]
    offsets = blk.offsets if np.any(blk.offsets) else None
    if q8.any():
        codes = np.where(q8[:, None, None], blk.codes, blk.codes + 120).astype(np.uint8)  # c - 8 == c + 120 - 128
        return NBits(8, codes, blk.scales.reshape(-1), offsets)
    packed = (blk.codes[..., 0::2] | (blk.codes[..., 1::2] << 4)).astype(np.uint8)  # [N, nb, 16]
    return NBits(4, packed, blk.scales.reshape(-1), offsets)


def dequantized(nb: NBits, k: int) -> np.ndarray:
    """The [N, K] weight the carried MatMulNBits (+ offsets) computes with (for checks)."""
    codes = nb.b  # [N, nb, 32] for 8 bits
    if nb.bits == 4:
        codes = np.stack([nb.b & 0x0F, nb.b >> 4], axis=-1).reshape(nb.b.shape[0], -1, BLOCK)  # [N, nb, 32]
    n, blocks = codes.shape[0], codes.shape[1]
    offsets = np.zeros((n, blocks), np.float32) if nb.offsets is None else nb.offsets
    return block_values(codes, nb.scales.reshape(n, blocks), offsets, _CENTER[nb.bits]).reshape(n, k)


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


def _carried_nodes(node, name: str, nb: NBits, k: int, accuracy_level: int) -> tuple[list, list]:
    """(nodes, initializers) computing ``node``'s output from the carried blocks: the
    MatMulNBits, and for block offsets ``Gemm(blocksum(x), O^T, kernel output)``."""
    from onnx import helper, numpy_helper

    n = int(nb.b.shape[0])
    inits = [numpy_helper.from_array(nb.b, f"{name}.B"), numpy_helper.from_array(nb.scales, f"{name}.scales")]
    out = node.output[0] if nb.offsets is None else f"{name}.nbits"
    attrs = dict(K=k, N=n, bits=nb.bits, block_size=BLOCK, accuracy_level=accuracy_level)
    nodes = [
        helper.make_node(
            "MatMulNBits", [node.input[0], *(i.name for i in inits)], [out], name=name, domain="com.microsoft", **attrs
        )
    ]
    if nb.offsets is not None:
        blocks = k // BLOCK
        inits += [
            numpy_helper.from_array(np.asarray([-1, blocks, BLOCK], np.int64), f"{name}.blocks_shape"),
            numpy_helper.from_array(np.asarray([-1], np.int64), f"{name}.last_axis"),
            numpy_helper.from_array(np.ascontiguousarray(nb.offsets.T), f"{name}.offsets"),  # [nb, N]
        ]
        nodes += [
            helper.make_node("Reshape", [node.input[0], f"{name}.blocks_shape"], [f"{name}.x_blocks"]),  # [T, nb, 32]
            helper.make_node(
                "ReduceSum", [f"{name}.x_blocks", f"{name}.last_axis"], [f"{name}.x_sums"], keepdims=0
            ),  # [T, nb]
            helper.make_node("Gemm", [f"{name}.x_sums", f"{name}.offsets", out], [node.output[0]]),  # [T, N]
        ]
    return nodes, inits


def carry_model(model, reader, accuracy_level: int) -> CarryReport:
    """Rewrite ``model`` (onnx ModelProto, weights loaded, 2-D activations as in every stagedx
    graph) in place: every MatMul whose constant right operand is made of carried GGUF rows
    becomes a MatMulNBits (+ its block offsets)."""
    from onnx import helper, numpy_helper

    from .quantize import untie_head

    untie_head(model)
    g = model.graph
    index = RowIndex.build(reader)
    inits = {t.name: t for t in g.initializer}
    users = Counter(i for n in g.node for i in n.input)
    carried, kept, types = Counter(), 0, Counter()
    nodes = []
    for pos, node in enumerate(g.node):
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight not in inits or len(inits[weight].dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[weight])  # [K, N]
        blk = index.blocks_for(w) if w.dtype == np.float32 else None
        if blk is None:
            kept += 1
            nodes.append(node)
            continue
        nb = to_nbits(blk)
        new_nodes, new_inits = _carried_nodes(node, f"gguf{pos}", nb, w.shape[0], accuracy_level)
        nodes += new_nodes
        g.initializer.extend(new_inits)
        users[weight] -= 1
        if users[weight] == 0:
            g.initializer.remove(inits.pop(weight))
        carried[nb.bits] += 1
        types.update(CARRIED_TYPES[i] for i in np.unique(blk.types))
    if not carried:
        raise StagedxError(
            "--quantize gguf: no weight of the graph is stored in a carried GGUF block type "
            f"({', '.join(CARRIED_TYPES)}); the file has {dict(index.skipped) or 'only unquantized tensors'}"
        )
    del g.node[:]
    g.node.extend(nodes)
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
