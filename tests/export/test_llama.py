"""The Llama family end to end: export (RoPE, RMSNorm, GQA, SwiGLU), parity with transformers on
token trees, the sibling negative control, refused rope_scaling and greedy staged decoding."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.export.verify import random_tree, reference_inputs, reference_outputs, run_onnx
from stagedx.manifest import TOLERANCE, load_manifest
from stagedx.numerics import rel_error
from tests._models import make_llama_checkpoint
from tests.export._chain import whole_and_split

# The draft exercises the other options: untied head, head_dim from config (16 != 32 / 4),
# one KV head, attention and MLP biases, a different rope_theta.
DRAFT_OPTIONS = {
    "n_layer": 1,
    "n_kv_heads": 1,
    "head_dim": 16,
    "tie_word_embeddings": False,
    "rope_theta": 500000.0,
    "attention_bias": True,
    "mlp_bias": True,
}


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llama_pair")
    oracle = make_llama_checkpoint(root / "oracle", seed=11)  # 2 layers, 4 heads, 2 KV heads, tied
    draft = make_llama_checkpoint(root / "draft", seed=12, **DRAFT_OPTIONS)
    return oracle, draft


@pytest.fixture(scope="module")
def llama_bundle(llama_pair, tmp_path_factory):
    from stagedx.export.bundle import ExportConfig, export_bundle

    oracle, draft = llama_pair
    out = tmp_path_factory.mktemp("llama_bundle") / "bundle"
    # verification inside the export raises above the fp32 tolerance (1e-4 relative)
    return export_bundle(ExportConfig(oracle=str(oracle), draft=str(draft), output=out, draft2="prompt-lookup"))


@pytest.fixture(scope="module")
def llama_refs(llama_pair):
    from stagedx.export.arch import load_reference, open_checkpoint

    refs = {}
    for role, path in zip(("oracle", "draft"), llama_pair):
        ckpt = open_checkpoint(str(path))
        refs[role] = (load_reference(ckpt), ckpt.dims)
    return refs


def _ours_and_ref(model, dims, onnx_file, case, mask=None):
    ref = reference_outputs(model, case, dims.n_layers)
    feeds = reference_inputs(case, ref, dims)
    if mask is not None:
        feeds["tree_mask"] = mask
    return run_onnx(onnx_file, feeds), ref


def test_manifest_records_llama_dims_and_verification(llama_bundle):
    m = load_manifest(llama_bundle)
    o, d = m.models["oracle"], m.models["draft"]
    assert (o.arch.family, o.arch.n_heads, o.arch.n_kv_heads, o.arch.head_dim) == ("llama", 4, 2, 8)
    assert (d.arch.n_heads, d.arch.n_kv_heads, d.arch.head_dim, d.arch.n_layers) == (4, 1, 16, 1)
    assert o.arch.max_positions == 256 and o.arch.vocab_size == d.arch.vocab_size == 8192
    for entry in (o, d):
        assert entry.verify["max_rel_error"] < TOLERANCE["fp32"]
        assert entry.verify["max_abs_logit"] > 3.0  # weights are scaled: logits are not tiny


def test_graph_io_keeps_kv_heads(llama_bundle):
    import onnxruntime as ort

    m = load_manifest(llama_bundle)
    for entry in m.models.values():
        sess = ort.InferenceSession(str(llama_bundle / entry.file), providers=["CPUExecutionProvider"])
        ins = {i.name: i for i in sess.get_inputs()}
        outs = {o.name: o for o in sess.get_outputs()}
        assert list(ins)[:3] == ["input_ids", "position_ids", "tree_mask"]
        assert list(outs)[:3] == ["logits", "topk_values", "topk_indices"]
        assert ins["position_ids"].type == "tensor(int64)" and ins["tree_mask"].type == "tensor(bool)"
        n = entry.arch.n_layers
        assert len(ins) == 3 + 2 * n and len(outs) == 3 + 2 * n
        assert isinstance(ins["past_key.0"].shape[0], str)  # P is dynamic
        assert ins[f"past_value.{n - 1}"].shape[1:] == [entry.arch.n_kv_heads, entry.arch.head_dim]
        assert outs[f"new_key.{n - 1}"].shape[1:] == [entry.arch.n_kv_heads, entry.arch.head_dim]


@pytest.mark.parametrize("role", ["oracle", "draft"])
@pytest.mark.parametrize("n_past,n_nodes,seed", [(0, 1, 0), (0, 7, 1), (5, 1, 2), (7, 9, 3), (3, 20, 4)])
def test_tree_parity_with_and_without_past(llama_bundle, llama_refs, role, n_past, n_nodes, seed):
    model, dims = llama_refs[role]
    case = random_tree(dims.vocab_size, n_past, n_nodes, seed)
    out, ref = _ours_and_ref(model, dims, llama_bundle / f"{role}.onnx", case)
    assert np.abs(ref["logits"]).max() > 3.0
    assert rel_error(out["logits"], ref["logits"]) < TOLERANCE["fp32"]
    assert out["new_key.0"].shape == (n_nodes, dims.n_kv_heads, dims.head_dim)  # [T, H_kv, D]
    np.testing.assert_array_equal(out["topk_indices"][:, 0], out["logits"].argmax(1))


def test_negative_control_sibling_in_mask_fails_the_check(llama_bundle, llama_refs):
    model, dims = llama_refs["oracle"]
    case = random_tree(dims.vocab_size, 5, 6, seed=7)
    assert case.parents[1] == case.parents[2] == 0  # nodes 1 and 2 are siblings
    mask = case.tree_mask()
    mask[2, case.n_past + 1] = True  # node 2 now also sees its sibling
    out, ref = _ours_and_ref(model, dims, llama_bundle / "oracle.onnx", case, mask)
    rows = np.abs(out["logits"] - ref["logits"]).max(axis=1) / np.abs(ref["logits"]).max()
    assert rows[2] > 100 * TOLERANCE["fp32"]
    # nodes off node 2's subtree are untouched (its descendants read node 2's changed K/V)
    untouched = [i for i in range(len(case.tokens)) if 2 not in case.ancestors(i)]
    assert untouched and rows[untouched].max() < TOLERANCE["fp32"]


def test_cached_keys_are_rotated_once(llama_bundle, llama_refs):
    """K/V of a chain fed back as past (at absolute positions) equals one long call, and the
    returned keys equal transformers' cache, which holds keys after RoPE."""
    model, dims = llama_refs["oracle"]
    ids = np.random.default_rng(0).integers(0, dims.vocab_size, 9)
    kv_shape = (dims.n_kv_heads, dims.head_dim)
    whole, second = whole_and_split(llama_bundle / "oracle.onnx", ids, dims.n_layers, kv_shape, cut=5)
    assert rel_error(second["logits"], whole["logits"][5:]) < 1e-5
    case = random_tree(dims.vocab_size, 9, 1, seed=0)
    ref = reference_outputs(model, type(case)(ids, case.tokens, case.parents), dims.n_layers)
    for i in range(dims.n_layers):
        assert rel_error(whole[f"new_key.{i}"], ref[f"past_key.{i}"]) < 1e-5


@pytest.mark.parametrize("kind", ["dynamic", "yarn"])
def test_other_rope_scaling_is_refused_naming_the_type(llama_pair, tmp_path, kind):
    from stagedx.export.arch import open_checkpoint

    folder = tmp_path / "scaled"
    shutil.copytree(llama_pair[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_scaling"] = {"type": kind, "factor": 4.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StagedxError, match=f"unsupported llama rope_scaling type '{kind}'"):
        open_checkpoint(str(folder))


def test_greedy_staged_identical_to_baseline(llama_bundle):
    from stagedx.runtime import Generator

    gen = Generator(llama_bundle, device="cpu", threads=1)
    for prompt in ("def add(a, b):\n    return", "import os\nimport sys\n\n\ndef main():\n"):
        base = gen.generate(prompt, max_new_tokens=24, strategy="baseline", ignore_eos=True)
        assert len(base.tokens) == 24
        for strategy in ("speculative", "staged"):
            res = gen.generate(prompt, max_new_tokens=24, strategy=strategy, ignore_eos=True)
            assert res.tokens == base.tokens, (strategy, prompt)


# rope_scaling as Llama 3.1 / 3.2 write it (old layout), with a short original context so that
# the llama3 ramp covers several of the 8 frequencies; linear as Llama-2 long-context fine-tunes.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LINEAR_ROPE = {"type": "linear", "factor": 4.0}


@pytest.fixture(scope="module")
def scaled_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled_pair")
    oracle = make_llama_checkpoint(
        root / "llama3", seed=13, hidden=64, n_heads=4, head_dim=16, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE
    )
    draft = make_llama_checkpoint(root / "linear", seed=14, n_layer=1, rope_scaling=LINEAR_ROPE)
    for folder, rope in ((oracle, LLAMA3_ROPE), (draft, LINEAR_ROPE)):  # the layout of the hub
        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("rope_parameters", None)
        cfg.update(rope_scaling=rope, rope_theta=500000.0 if rope is LLAMA3_ROPE else 10000.0)
        (folder / "config.json").write_text(json.dumps(cfg))
    return oracle, draft


@pytest.fixture(scope="module")
def scaled_bundle(scaled_pair, tmp_path_factory):
    from tests.export._family import export_pair

    return export_pair(*scaled_pair, tmp_path_factory.mktemp("scaled_bundle") / "bundle")


@pytest.mark.parametrize("which", [0, 1])
def test_scaled_rope_frequencies_match_transformers(scaled_pair, which):
    import torch

    from stagedx.export.arch import open_checkpoint
    from stagedx.export.configs import decoder_dims
    from stagedx.export.llama import inverse_frequencies
    from tests.export._family import reference_model

    model, _ = reference_model(scaled_pair[which])
    dims = decoder_dims(open_checkpoint(str(scaled_pair[which])).config, "llama")
    assert dims.rope.kind == ("llama3", "linear")[which]
    ours = inverse_frequencies(dims.rope, dims.head_dim)
    theirs = model.model.rotary_emb.inv_freq.float()
    plain = inverse_frequencies(type(dims.rope)(theta=dims.rope.theta), dims.head_dim)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    assert not torch.allclose(ours, plain)  # the scaling does change frequencies


@pytest.mark.parametrize("role", ["oracle", "draft"])
@pytest.mark.parametrize("n_past,n_nodes,seed", [(7, 9, 3), (40, 12, 4)])
def test_scaled_rope_tree_parity(scaled_pair, scaled_bundle, role, n_past, n_nodes, seed):
    from tests.export._family import FP32_TOLERANCE, reference_model, tree_error

    model, dims = reference_model(scaled_pair[role == "draft"])
    assert tree_error(model, dims, scaled_bundle / f"{role}.onnx", n_past, n_nodes, seed) < FP32_TOLERANCE


def test_scaled_rope_greedy_staged_identical_to_baseline(scaled_bundle):
    from tests.export._family import assert_greedy_exact

    assert_greedy_exact(scaled_bundle)


def test_wrong_frequencies_are_caught(scaled_pair, monkeypatch):
    """The build cross-checks our frequencies with transformers' (a RoPE variant read wrongly
    hardly shows in logits at the few positions of the parity check)."""
    from stagedx.export import llama
    from stagedx.export.arch import open_checkpoint
    from stagedx.export.weights import Weights

    ckpt = open_checkpoint(str(scaled_pair[0]))
    real = llama.inverse_frequencies
    monkeypatch.setattr(llama, "inverse_frequencies", lambda rope, d: real(rope, d) * 1.001)
    with pytest.raises(StagedxError, match="rotary frequencies differ from transformers"):
        ckpt.spec.build_graph(ckpt.config, Weights(ckpt.path), 4, __import__("torch").float32)
