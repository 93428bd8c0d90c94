"""GGUF blocks carried into MatMulNBits: the codes decode to exactly the values the gguf package
dequantizes, and ONNX Runtime's kernel computes with them (accuracy level 0: fp32 rounding)."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from stagedx.export.gguf_blocks import (  # noqa: E402
    CARRIED_TYPES,
    Blocks,
    _carried_nodes,
    block_values,
    decode_rows,
    dequantized,
    to_nbits,
)


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
    c, s, o = decode_rows(raw, kind)
    w = block_values(c, s, o, 128.0 if kind == "Q8_0" else 8.0)
    np.testing.assert_allclose(w, values, rtol=0, atol=1e-6 * np.abs(values).max())
    if kind != "Q4_1":  # no offsets: bit-exact
        np.testing.assert_array_equal(w, values)
        assert not o.any()


def test_q4_1_block_of_one_value():
    w = np.zeros((1, 32), np.float32) + 0.75  # llama.cpp: d = 0, every value is m
    raw = quantize(w, gguf.GGMLQuantizationType.Q4_1)
    np.testing.assert_allclose(block_values(*decode_rows(raw, "Q4_1"), 8.0), 0.75)


@pytest.mark.parametrize(
    ("kinds", "bits", "offsets"),
    [
        (("Q4_0",), 4, False),
        (("Q4_1",), 4, True),
        (("Q8_0",), 8, False),
        (("Q4_0", "Q4_1"), 4, True),
        (("Q4_0", "Q8_0"), 8, False),
        (("Q4_1", "Q8_0"), 8, True),
    ],
)
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_matmul_nbits_computes_the_gguf_weight(kinds, bits, offsets, accuracy_level):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    blk, ref = _blocks(*kinds)
    nb = to_nbits(blk)
    assert nb.bits == bits and (nb.offsets is not None) == offsets
    n, k = ref.shape
    np.testing.assert_allclose(dequantized(nb, k), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    matmul = helper.make_node("MatMul", ["A", "W"], ["Y"])
    nodes, inits = _carried_nodes(matmul, "w", nb, k, accuracy_level)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(5).standard_normal((3, k)).astype(np.float32)  # [T, K]
    y = sess.run(None, {"A": a})[0]  # [T, N]
    expect = a.astype(np.float64) @ ref.T.astype(np.float64)  # [T, N]
    # level 0: fp32 arithmetic on the file's values; level 4: int8 activations per block
    tol = 1e-5 if accuracy_level == 0 else 2e-2
    assert np.abs(y - expect).max() <= tol * np.abs(expect).max()
