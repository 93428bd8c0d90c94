"""The Mistral family: sliding-window attention inside the graph. Trees and chains whose past
is longer than the window give transformers' logits; a row reserved in front of the past
(TensorRT's dummy row) changes nothing; greedy decoding past the window stays exact."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.export.verify import run_onnx
from stagedx.manifest import load_manifest
from stagedx.numerics import rel_error
from tests._models import make_decoder_checkpoint
from tests.export._chain import chain_feeds
from tests.export._family import FP32_TOLERANCE, assert_greedy_exact, export_pair, reference_model, tree_error

WINDOW = 4


@pytest.fixture(scope="module")
def mistral_pair(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mistral_pair")
    oracle = make_decoder_checkpoint(root / "oracle", "mistral", seed=31, sliding_window=WINDOW)
    # draft: no window (Mistral v0.2+), untied head
    draft = make_decoder_checkpoint(
        root / "draft", "mistral", seed=32, n_layer=1, sliding_window=None, tie_word_embeddings=False
    )
    return oracle, draft


@pytest.fixture(scope="module")
def mistral_bundle(mistral_pair, tmp_path_factory):
    return export_pair(*mistral_pair, tmp_path_factory.mktemp("mistral_bundle") / "bundle")


@pytest.fixture(scope="module")
def oracle_ref(mistral_pair):
    return reference_model(mistral_pair[0])


def test_manifest(mistral_bundle):
    m = load_manifest(mistral_bundle)
    assert {e.arch.family for e in m.models.values()} == {"mistral"}
    assert all(e.verify["max_rel_error"] < FP32_TOLERANCE for e in m.models.values())


@pytest.mark.parametrize("n_past,n_nodes,seed", [(0, 9, 1), (2, 9, 2), (7, 9, 3), (11, 20, 4)])
def test_tree_parity_past_longer_than_window(mistral_bundle, oracle_ref, n_past, n_nodes, seed):
    model, dims = oracle_ref
    assert tree_error(model, dims, mistral_bundle / "oracle.onnx", n_past, n_nodes, seed) < FP32_TOLERANCE


def test_draft_without_window_parity(mistral_pair, mistral_bundle):
    model, dims = reference_model(mistral_pair[1])
    assert tree_error(model, dims, mistral_bundle / "draft.onnx", 9, 9, 5) < FP32_TOLERANCE


def test_window_changes_the_logits(mistral_bundle, oracle_ref):
    """Negative control: with the window dropped, a past longer than the window gives other
    logits (so the parity above does check the window)."""
    import torch

    model, dims = oracle_ref
    ids = np.random.default_rng(1).integers(0, dims.vocab_size, 12)
    with torch.no_grad():
        windowed = model(torch.from_numpy(ids)[None]).logits[0].numpy()  # [12, V]
        model.config.sliding_window = None
        try:
            full = model(torch.from_numpy(ids)[None]).logits[0].numpy()
        finally:
            model.config.sliding_window = WINDOW
    assert rel_error(full[WINDOW:], windowed[WINDOW:]) > 100 * FP32_TOLERANCE
    ours = run_onnx(
        mistral_bundle / "oracle.onnx", chain_feeds(ids, 0, {}, dims.n_layers, (dims.n_kv_heads, dims.head_dim))
    )
    assert rel_error(ours["logits"], windowed) < FP32_TOLERANCE


def test_chain_split_and_reserved_row(mistral_bundle, oracle_ref):
    """A chain scored in two calls (the second's past longer than the window) equals one call,
    also with a garbage row reserved in front of the past and masked out."""
    _, dims = oracle_ref
    onnx_file = mistral_bundle / "oracle.onnx"
    ids = np.random.default_rng(2).integers(0, dims.vocab_size, 13)
    kv = (dims.n_kv_heads, dims.head_dim)
    whole = run_onnx(onnx_file, chain_feeds(ids, 0, {}, dims.n_layers, kv))
    first = run_onnx(onnx_file, chain_feeds(ids[:9], 0, {}, dims.n_layers, kv))
    junk = np.full((1, *kv), 7.0, np.float32)  # [1, H_kv, D]
    past = {
        i: (np.concatenate([junk, first[f"new_key.{i}"]]), np.concatenate([junk, first[f"new_value.{i}"]]))
        for i in range(dims.n_layers)
    }
    feeds = chain_feeds(ids[9:], 9, past, dims.n_layers, kv)
    feeds["tree_mask"] = np.concatenate([np.zeros((4, 1), bool), feeds["tree_mask"]], 1)  # [T, 1+P+T]
    second = run_onnx(onnx_file, feeds)
    assert rel_error(second["logits"], whole["logits"][9:]) < 1e-5


def test_greedy_staged_identical_to_baseline(mistral_bundle):
    assert_greedy_exact(mistral_bundle)  # prompts of 10+ tokens: far past the window of 4
