"""The Phi-3 family: fused qkv / gate_up tensors into Mistral's graph (sliding window), parity
with transformers on trees whose past is longer than the window, greedy-exactness, and the
refused 128k variant (longrope)."""

from __future__ import annotations

import json
import shutil

import pytest

from stagedx.errors import StagedxError
from stagedx.manifest import load_manifest
from tests._models import make_decoder_checkpoint
from tests.export._family import FP32_TOLERANCE, assert_greedy_exact, export_pair, reference_model, tree_error


@pytest.fixture(scope="module")
def phi3_pair(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("phi3_pair")
    oracle = make_decoder_checkpoint(root / "oracle", "phi3", seed=41, sliding_window=5)
    draft = make_decoder_checkpoint(root / "draft", "phi3", seed=42, n_layer=1, n_kv_heads=1, tie_word_embeddings=False)
    return oracle, draft


@pytest.fixture(scope="module")
def phi3_bundle(phi3_pair, tmp_path_factory):
    return export_pair(*phi3_pair, tmp_path_factory.mktemp("phi3_bundle") / "bundle")


def test_checkpoint_is_fused(phi3_pair):
    from stagedx.export.weights import Weights

    w = Weights(phi3_pair[0])
    assert "layers.0.self_attn.qkv_proj.weight" in w and "layers.0.mlp.gate_up_proj.weight" in w
    assert "layers.0.self_attn.q_proj.weight" not in w


@pytest.mark.parametrize("role", ["oracle", "draft"])
@pytest.mark.parametrize("n_past,n_nodes,seed", [(0, 7, 1), (7, 9, 3), (11, 20, 4)])
def test_tree_parity(phi3_pair, phi3_bundle, role, n_past, n_nodes, seed):
    model, dims = reference_model(phi3_pair[role == "draft"])
    assert tree_error(model, dims, phi3_bundle / f"{role}.onnx", n_past, n_nodes, seed) < FP32_TOLERANCE


def test_manifest_and_greedy_staged_identical_to_baseline(phi3_bundle):
    assert {e.arch.family for e in load_manifest(phi3_bundle).models.values()} == {"phi3"}
    assert_greedy_exact(phi3_bundle)


def test_longrope_is_refused(phi3_pair, tmp_path):
    from stagedx.export.arch import open_checkpoint

    folder = tmp_path / "long"
    shutil.copytree(phi3_pair[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_scaling"] = {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StagedxError, match="unsupported phi3 rope_scaling type 'longrope'"):
        open_checkpoint(str(folder))
