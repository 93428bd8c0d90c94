"""The Qwen2 family: q/k/v bias without an o_proj bias, tied and untied heads, parity with
transformers on token trees, greedy-exactness through the runtime, refused sliding window."""

from __future__ import annotations

import json
import shutil

import pytest

from stagedx.errors import StagedxError
from stagedx.manifest import load_manifest
from tests._models import make_decoder_checkpoint
from tests.export._family import FP32_TOLERANCE, assert_greedy_exact, export_pair, reference_model, tree_error


@pytest.fixture(scope="module")
def qwen2_pair(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qwen2_pair")
    # oracle: tied head (Qwen2.5-0.5B..3B); draft: untied head (7B and up), one KV head
    oracle = make_decoder_checkpoint(root / "oracle", "qwen2", seed=21, rope_theta=1000000.0)
    draft = make_decoder_checkpoint(
        root / "draft", "qwen2", seed=22, n_layer=1, n_kv_heads=1, tie_word_embeddings=False
    )
    return oracle, draft


@pytest.fixture(scope="module")
def qwen2_bundle(qwen2_pair, tmp_path_factory):
    return export_pair(*qwen2_pair, tmp_path_factory.mktemp("qwen2_bundle") / "bundle")


def test_checkpoint_has_qkv_bias_only():
    """The test checkpoints are what Qwen2 is: a bias on q/k/v, none on o_proj or the MLP."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    names = {
        n
        for n, _ in Qwen2ForCausalLM(
            Qwen2Config(
                num_hidden_layers=1,
                hidden_size=8,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=16,
                vocab_size=16,
            )
        ).named_parameters()
    }
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert "model.layers.0.self_attn.o_proj.bias" not in names
    assert not any("mlp" in n and n.endswith("bias") for n in names)


def test_manifest_and_graph_weights(qwen2_bundle):
    import onnx

    m = load_manifest(qwen2_bundle)
    assert {e.arch.family for e in m.models.values()} == {"qwen2"}
    for role, entry in m.models.items():
        assert entry.verify["max_rel_error"] < FP32_TOLERANCE
        inits = {t.name for t in onnx.load(str(qwen2_bundle / entry.file)).graph.initializer}
        assert any(n.endswith("b_qkv") for n in inits) and not any(n.endswith("b_o") for n in inits)
        assert any(n.endswith("lm_head") for n in inits) == (role == "draft")


@pytest.mark.parametrize("role", ["oracle", "draft"])
@pytest.mark.parametrize("n_past,n_nodes,seed", [(0, 7, 1), (7, 9, 3), (3, 20, 4)])
def test_tree_parity(qwen2_pair, qwen2_bundle, role, n_past, n_nodes, seed):
    model, dims = reference_model(qwen2_pair[role == "draft"])
    assert tree_error(model, dims, qwen2_bundle / f"{role}.onnx", n_past, n_nodes, seed) < FP32_TOLERANCE


def test_greedy_staged_identical_to_baseline(qwen2_bundle):
    assert_greedy_exact(qwen2_bundle)


def test_sliding_window_is_refused(qwen2_pair, tmp_path):
    from stagedx.export.arch import open_checkpoint

    folder = tmp_path / "sliding"
    shutil.copytree(qwen2_pair[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StagedxError, match="unsupported qwen2 config: use_sliding_window is true"):
        open_checkpoint(str(folder))


def test_oracle_and_draft_of_different_families(qwen2_pair, tmp_path):
    """Families mix when the vocabulary is shared: a Qwen2 oracle with a Mistral draft."""
    draft = make_decoder_checkpoint(tmp_path / "mistral", "mistral", seed=23, n_layer=1, sliding_window=6)
    bundle = export_pair(qwen2_pair[0], draft, tmp_path / "bundle")
    m = load_manifest(bundle)
    assert (m.models["oracle"].arch.family, m.models["draft"].arch.family) == ("qwen2", "mistral")
    assert_greedy_exact(bundle, n_tokens=12)
