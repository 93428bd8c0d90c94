"""The LM head's exported form (``stagedx/export/head.py``): a constant right operand, W stored once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from stagedx.export.head import to_right_operand, transposed_weights


def test_the_exported_head_multiplies_by_the_transposed_initializer_and_stores_it_once(tiny_bundle):
    for name in ("oracle", "draft"):
        g = onnx.load(str(tiny_bundle / f"{name}.onnx"), load_external_data=False).graph
        inits = {t.name for t in g.initializer}
        heads = transposed_weights(g, inits.__contains__)
        assert len(heads) == 1 and heads[0].input[0] == "wte"
        assert not any(t.name.startswith("wte") and t.name != "wte" for t in g.initializer)  # no second copy
        logits = next(n for n in g.node if "logits" in n.output)
        assert logits.op_type == "MatMul" and logits.input[1] == heads[0].output[0]


def _weight_side_head(w: np.ndarray) -> onnx.ModelProto:
    """``Transpose(MatMul(W, Transpose(x)))``, the traced form of ``(W @ x.t()).t()``."""
    v, e = w.shape
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("MatMul", ["W", "xt"], ["yt"]),
        helper.make_node("Transpose", ["yt"], ["logits"], perm=[1, 0]),
    ]
    g = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", e])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", v])],
        [numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_rewrite_keeps_the_logits_and_leaves_other_products_alone():
    import onnxruntime as ort

    w = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    model = _weight_side_head(w)
    assert to_right_operand(model.graph, lambda n: n == "W") == 1
    assert [n.op_type for n in model.graph.node] == ["Transpose", "MatMul"]
    onnx.checker.check_model(model)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)
    untouched = _weight_side_head(w)
    assert to_right_operand(untouched.graph, lambda n: False) == 0  # W is not a weight: no rewrite
    assert [n.op_type for n in untouched.graph.node] == ["Transpose", "MatMul", "Transpose"]
