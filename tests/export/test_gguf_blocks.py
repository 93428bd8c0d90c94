"""GGUF blocks carried into MatMulNBits: the codes decode to exactly the values the gguf package
dequantizes, and ONNX Runtime's kernel computes with them (accuracy level 0: fp32 rounding)."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from stagedx.export.gguf_blocks import CARRIED_TYPES, Blocks, decode_rows, dequantized, to_nbits  # noqa: E402


def _rows(kind: str, n: int = 6, k: int = 64, seed: int = 0):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    t = gguf.GGMLQuantizationType[kind]
    raw = quantize(w, t)  # [N, K/32 * bytes]
    return raw, dequantize(raw, t)  # the values export builds the fp32 graph from


def _blocks(*kinds: str) -> tuple[Blocks, np.ndarray]:
    parts, ref = [], []
    for i, kind in enumerate(kinds):
        raw, values = _rows(kind, seed=i)
        c, s, z = decode_rows(raw, kind)
        parts.append((c, s, z, np.full(len(raw), CARRIED_TYPES.index(kind))))
        ref.append(values)
    blk = Blocks(*(np.concatenate([p[j] for p in parts]) for j in range(4)))
    return blk, np.concatenate(ref)


@pytest.mark.parametrize("kind", CARRIED_TYPES)
def test_decoded_blocks_are_the_gguf_values(kind):
    raw, values = _rows(kind)
    c, s, z = decode_rows(raw, kind)
    w = (c.astype(np.float32) - z[..., None]) * s[..., None]  # [N, nb, 32]
    np.testing.assert_allclose(w.reshape(values.shape), values, rtol=0, atol=1e-6 * np.abs(values).max())
    if kind != "Q4_1":  # integer zero points: bit-exact
        np.testing.assert_array_equal(w.reshape(values.shape), values)


def test_q4_1_block_of_one_value():
    w = np.zeros((1, 32), np.float32) + 0.75  # llama.cpp: d = 0, every value is m
    raw = quantize(w, gguf.GGMLQuantizationType.Q4_1)
    c, s, z = decode_rows(raw, "Q4_1")
    np.testing.assert_allclose((c - z[..., None]) * s[..., None], 0.75)


@pytest.mark.parametrize(
    ("kinds", "bits", "float_zero_points"),
    [
        (("Q4_0",), 4, False),
        (("Q4_1",), 4, True),
        (("Q8_0",), 8, False),
        (("Q4_0", "Q4_1"), 4, True),
        (("Q4_0", "Q8_0"), 8, False),
    ],
)
def test_matmul_nbits_computes_the_gguf_weight(kinds, bits, float_zero_points):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    blk, ref = _blocks(*kinds)
    nb = to_nbits(blk)
    assert nb.bits == bits and (nb.zero_points is not None) == float_zero_points
    n, k = ref.shape
    np.testing.assert_allclose(dequantized(nb, k), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    inits = [numpy_helper.from_array(nb.b, "B"), numpy_helper.from_array(nb.scales, "S")]
    if nb.zero_points is not None:
        inits.append(numpy_helper.from_array(nb.zero_points, "Z"))
    node = helper.make_node(
        "MatMulNBits",
        [i.name for i in [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)] + inits],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=32,
        accuracy_level=0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(5).standard_normal((3, k)).astype(np.float32)  # [T, K]
    y = sess.run(None, {"A": a})[0]  # [T, N]
    expect = a.astype(np.float64) @ ref.T.astype(np.float64)
    assert np.abs(y - expect).max() <= 1e-5 * np.abs(expect).max()


def test_q4_1_with_q8_0_is_not_carried():
    blk, _ = _blocks("Q4_1", "Q8_0")
    assert to_nbits(blk) is None  # ONNX Runtime's CPU kernel refuses 8 bits with float zero points
