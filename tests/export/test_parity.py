"""Exported graphs vs transformers' fp32 model on token trees (with and without a past)."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.export.verify import TreeCase, random_tree, reference_inputs, reference_outputs, run_onnx
from stagedx.manifest import TOLERANCE, load_manifest
from stagedx.numerics import rel_error
from tests.export._chain import whole_and_split


@pytest.fixture(scope="module")
def oracle_ref(tiny_pair):
    import torch

    from stagedx.export.arch import load_reference, open_checkpoint

    torch.set_num_threads(1)
    ckpt = open_checkpoint(str(tiny_pair.oracle))
    return load_reference(ckpt), ckpt.dims


def _ours_and_ref(model, dims, onnx_file, case: TreeCase, mask=None):
    ref = reference_outputs(model, case, dims.n_layers)
    feeds = reference_inputs(case, ref, dims)
    if mask is not None:
        feeds["tree_mask"] = mask
    return run_onnx(onnx_file, feeds), ref


@pytest.mark.parametrize("n_past,n_nodes,seed", [(0, 1, 0), (0, 7, 1), (5, 1, 2), (7, 9, 3), (3, 20, 4)])
def test_tree_parity_with_and_without_past(tiny_bundle, oracle_ref, n_past, n_nodes, seed):
    model, dims = oracle_ref
    case = random_tree(dims.vocab_size, n_past, n_nodes, seed)
    out, ref = _ours_and_ref(model, dims, tiny_bundle / "oracle.onnx", case)
    assert np.abs(ref["logits"]).max() > 3.0  # weights are scaled: logits are not tiny
    assert rel_error(out["logits"], ref["logits"]) < TOLERANCE["fp32"]
    # new K/V rows for the new tokens only, [T, H, D]
    assert out["new_key.0"].shape == (n_nodes, dims.n_heads, dims.head_dim)
    k = np.take_along_axis(out["logits"], out["topk_indices"], axis=1)
    np.testing.assert_array_equal(k, out["topk_values"])
    assert np.all(np.diff(out["topk_values"], axis=1) <= 0)
    np.testing.assert_array_equal(out["topk_indices"][:, 0], out["logits"].argmax(1))


def test_negative_control_sibling_in_mask_fails_the_check(tiny_bundle, oracle_ref):
    model, dims = oracle_ref
    case = random_tree(dims.vocab_size, 5, 6, seed=7)
    assert case.parents[1] == case.parents[2] == 0  # nodes 1 and 2 are siblings
    mask = case.tree_mask()
    mask[2, case.n_past + 1] = True  # node 2 now also sees its sibling
    out, ref = _ours_and_ref(model, dims, tiny_bundle / "oracle.onnx", case, mask)
    assert rel_error(out["logits"], ref["logits"]) > 100 * TOLERANCE["fp32"]
    # only node 2 (and none of the others) is wrong
    rows = np.abs(out["logits"] - ref["logits"]).max(axis=1) / np.abs(ref["logits"]).max()
    assert rows[2] > 100 * TOLERANCE["fp32"]
    assert np.delete(rows, 2).max() < TOLERANCE["fp32"]


def test_new_kv_continues_the_past(tiny_bundle, oracle_ref):
    """K/V returned for a chain, fed back as past, gives the same logits as one long call."""
    model, dims = oracle_ref
    rng = np.random.default_rng(0)
    ids = rng.integers(0, dims.vocab_size, 9)
    kv_shape = (dims.n_heads, dims.head_dim)
    whole, second = whole_and_split(tiny_bundle / "oracle.onnx", ids, dims.n_layers, kv_shape, cut=5)
    assert rel_error(second["logits"], whole["logits"][5:]) < 1e-5


def test_graph_io_follows_the_contract(tiny_bundle):
    import onnx
    import onnxruntime as ort

    entry = load_manifest(tiny_bundle).oracle
    sess = ort.InferenceSession(str(tiny_bundle / entry.file), providers=["CPUExecutionProvider"])
    ins = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    outs = {o.name: (o.type, o.shape) for o in sess.get_outputs()}
    n = entry.arch.n_layers
    assert list(ins) == ["input_ids", "position_ids", "tree_mask"] + [
        f"past_{kv}.{i}" for i in range(n) for kv in ("key", "value")
    ]
    assert list(outs) == ["logits", "topk_values", "topk_indices"] + [
        f"new_{kv}.{i}" for i in range(n) for kv in ("key", "value")
    ]
    assert ins["input_ids"][0] == ins["position_ids"][0] == "tensor(int64)"
    assert ins["tree_mask"][0] == "tensor(bool)"
    assert ins["past_key.0"][0] == "tensor(float)"
    assert isinstance(ins["tree_mask"][1][0], str) and isinstance(ins["tree_mask"][1][1], str)
    assert isinstance(ins["past_key.0"][1][0], str)  # P is dynamic
    assert ins["past_key.0"][1][1:] == [entry.arch.n_kv_heads, entry.arch.head_dim]
    assert outs["topk_indices"][0] == "tensor(int64)"
    assert outs["topk_values"][1][1] == entry.topk
    model = onnx.load(str(tiny_bundle / entry.file))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}
    ops = {node.op_type for node in model.graph.node}
    assert {"MatMul", "Exp", "TopK"} <= ops  # attention: a softmax joint over past and new blocks
    # weights stored once: the tied embedding is not duplicated as a transposed copy
    assert entry.weight_bytes == 4 * entry.n_params


def test_reference_npz_holds_the_transformers_reference(tiny_bundle):
    m = load_manifest(tiny_bundle)
    ref = np.load(tiny_bundle / m.reference.file)
    assert m.reference.tolerance == {"fp32": 1e-4, "fp16": 2e-2}
    for role in ("oracle", "draft"):
        a = m.models[role].arch
        t = ref[f"{role}.input_ids"].shape[0]
        p = ref[f"{role}.past_key.0"].shape[0]
        assert p > 0 and t > 1
        assert ref[f"{role}.position_ids"].shape == (t,)
        assert ref[f"{role}.tree_mask"].shape == (t, p + t)
        assert ref[f"{role}.logits"].shape == (t, a.vocab_size)
        assert ref[f"{role}.past_value.{a.n_layers - 1}"].shape == (p, a.n_kv_heads, a.head_dim)
        feeds = {
            k.split(".", 1)[1]: ref[k] for k in ref.files if k.startswith(role + ".") and not k.endswith(".logits")
        }
        out = run_onnx(tiny_bundle / m.models[role].file, feeds)
        assert rel_error(out["logits"], ref[f"{role}.logits"]) < 1e-4
        assert m.models[role].verify["max_rel_error"] < 1e-4
